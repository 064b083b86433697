"""Reads a locally stored benchmark: HF `datasets` directories, Parquet, JSON(L), CSV/TSV.

A benchmark directory may hold any of:
  * a `datasets` ``save_to_disk`` directory (``dataset_info.json``/``state.json`` beside
    ``data-*.arrow``; a ``DatasetDict`` adds ``dataset_dict.json`` and one sub-directory per split),
  * a Hub snapshot (``data/test-00000-of-00001.parquet``, ``<config>/testmini-*.parquet``, ...),
  * ``.jsonl``, ``.json`` (a list, ``{"data": [...]}`` or ``{uid: row}``), ``.csv``, ``.tsv``.
Files are read with pyarrow, so no `datasets` install is needed. When file names carry split names
(``test-0000...``, ``validation/``), only the benchmark's split is read; files that name no split
are always read.
"""
import csv
import json
import os
import pathlib
import re
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

_DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv", ".tsv")
_SPLIT_NAMES = ("train", "test", "testmini", "validation", "val", "dev", "valid")
# JSON files in a `datasets` directory that describe it rather than hold rows.
_METADATA_FILES = {"dataset_info.json", "state.json", "dataset_dict.json"}


class DataError(ValueError):
  """A benchmark's files are missing or cannot be read; the message names the file."""


def _split_of(path: pathlib.Path, root: pathlib.Path) -> str | None:
  """The split a data file belongs to, from its name or a parent directory name, if any."""
  parts = list(path.relative_to(root).parts)
  stem = parts[-1].split(".")[0]
  candidates = [re.split(r"[-_]\d", stem)[0].lower()] + [p.lower() for p in parts[:-1]]
  for c in candidates:
    if c in _SPLIT_NAMES:
      return c
  return None


def data_files(root: pathlib.Path, split: str | None) -> list[pathlib.Path]:
  """Data files under ``root`` (a file or a directory) belonging to ``split``, in sorted order."""
  root = pathlib.Path(root)
  if root.is_file():
    return [root]
  if not root.is_dir():
    raise DataError(f"benchmark data not found: {root}")
  files = sorted(
      p for p in root.rglob("*")
      if p.is_file() and p.suffix in _DATA_SUFFIXES and p.name not in _METADATA_FILES
      and not any(part.startswith(".") for part in p.relative_to(root).parts))
  if not files:
    raise DataError(f"no data files ({', '.join(_DATA_SUFFIXES)}) under {root}")
  splits = {_split_of(p, root) for p in files} - {None}
  if split is not None and splits:
    if split not in splits:
      raise DataError(f"{root} has splits {sorted(splits)}, not {split!r}")
    files = [p for p in files if _split_of(p, root) in (split, None)]
  return files


def _arrow_table(path: pathlib.Path) -> pa.Table:
  # `datasets` writes the Arrow IPC streaming format; plain Arrow files use the file format.
  with pa.memory_map(str(path)) as source:
    try:
      return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
      pass
  with pa.memory_map(str(path)) as source:
    return pa.ipc.open_file(source).read_all()


def _json_rows(path: pathlib.Path) -> list[dict]:
  data = json.loads(path.read_text(encoding="utf-8"))
  if isinstance(data, dict):
    if isinstance(data.get("data"), list):
      data = data["data"]
    elif all(isinstance(v, dict) for v in data.values()):
      data = [{"_key": k, **v} for k, v in data.items()]
    else:
      raise DataError(f"{path}: JSON object is neither {{'data': [...]}} nor {{id: row}}")
  if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
    raise DataError(f"{path}: expected a JSON list of objects")
  return data


def _jsonl_rows(path: pathlib.Path) -> Iterator[dict]:
  with path.open(encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{n}: invalid JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise DataError(f"{path}:{n}: expected a JSON object")
      yield row


def read_rows(path: pathlib.Path) -> Iterator[dict]:
  """Yields the rows of one data file as plain dicts (images stay ``{"bytes", "path"}`` structs)."""
  path = pathlib.Path(path)
  try:
    if path.suffix == ".parquet":
      yield from pq.read_table(path).to_pylist()
    elif path.suffix == ".arrow":
      yield from _arrow_table(path).to_pylist()
    elif path.suffix == ".jsonl":
      yield from _jsonl_rows(path)
    elif path.suffix == ".json":
      yield from _json_rows(path)
    elif path.suffix in (".csv", ".tsv"):
      csv.field_size_limit(2**31 - 1)  # TSV releases inline base64 images.
      with path.open(encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
    else:
      raise DataError(f"unsupported data file {path}")
  except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
    raise DataError(f"cannot read {path}: {e}") from None


def load_rows(root: os.PathLike, split: str | None = None) -> Iterator[dict]:
  """Yields every row of the benchmark stored at ``root`` (see the module docstring).

  Each row gains ``_file``, the data file's path relative to ``root`` (per-subject releases such as
  C-Eval restart their ids in every file, so adapters use it to keep uids unique).
  """
  root = pathlib.Path(root)
  for path in data_files(root, split):
    rel = str(path.relative_to(root)) if root.is_dir() else path.name
    for row in read_rows(path):
      row["_file"] = rel
      yield row
