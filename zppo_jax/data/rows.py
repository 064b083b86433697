"""The row rules of prompt data: reading JSONL/Parquet/Arrow rows and checking their fields.

One implementation for every reader of user rows: the generic builder (`zppo data build`, and the
prompt files `zppo train` builds on the fly for `data.train_path` / `data.eval_path`) and the
ZPPO-77K builder read rows with `iter_file_rows` and check them with `validate_row` /
`text_field` / `image_sources`. A row that cannot be used raises `RowError` with one reason
(`REJECT_REASONS`); the callers skip it, count it and list it in a `rejects.jsonl`.

Types are strict: `id` a string or integer, `question` a string, `answer` a string, integer or
finite number (written out), `choices` a list of strings (or letter -> string), `images` the forms
of `image_sources`. Nothing is silently `str()`-ed, and every check is linear in the row's size.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import pathlib
from typing import Any, Container, Iterator

REJECT_REASONS = ("bad_record", "no_id", "duplicate_id", "empty_question", "no_answer",
                  "too_long", "broken_image", "small_image", "non_utf8", "bad_field",
                  "needs_vision")


class RowError(Exception):
  """A row that cannot be used; `reason` is one of `REJECT_REASONS` (or a builder's)."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


def iter_file_rows(path: pathlib.Path, skip_columns: tuple[str, ...] = ()
                   ) -> Iterator[tuple[int, Any]]:
  """(row number, row dict or RowError) for every row of one JSONL, Parquet or Arrow file.

  `skip_columns` are not read from Parquet files (a scan that does not need the image bytes).
  """
  path = pathlib.Path(path)
  if path.suffix not in (".parquet", ".arrow"):
    yield from iter_jsonl_rows(path)
    return
  import pyarrow as pa  # Only needed for columnar input.
  if path.suffix == ".parquet":
    import pyarrow.parquet as pq
    file = pq.ParquetFile(path)
    columns = [c for c in file.schema_arrow.names if c not in skip_columns]
    batches = file.iter_batches(batch_size=64, columns=columns)
  else:  # HF `datasets` save_to_disk writes Arrow IPC streams.
    batches = iter(pa.ipc.open_stream(pa.memory_map(str(path))))
  start = 0
  for batch in batches:
    try:
      rows = batch.to_pylist()
    except UnicodeDecodeError:  # Invalid UTF-8 in a string column: find the bad rows one by one.
      rows = []
      for j in range(batch.num_rows):
        try:
          rows.append(batch.slice(j, 1).to_pylist()[0])
        except UnicodeDecodeError as e:
          rows.append(RowError("non_utf8", str(e)))
    for j, row in enumerate(rows):
      yield start + j, row
    start += batch.num_rows


def iter_jsonl_rows(path: pathlib.Path) -> Iterator[tuple[int, Any]]:
  """(line number, row dict or RowError) for every non-blank line of a JSONL file: a line that is
  not UTF-8 (also one cut inside a character) is `non_utf8`, one that is not a JSON object is
  `bad_record`."""
  with pathlib.Path(path).open("rb") as f:
    for i, line in enumerate(f):
      if not line.strip():
        continue
      try:
        text = line.decode("utf-8")
      except UnicodeDecodeError as e:
        yield i, RowError("non_utf8", str(e))
        continue
      try:
        row = json.loads(text)
      except (json.JSONDecodeError, ValueError, RecursionError) as e:
        yield i, RowError("bad_record", str(e)[:200])
        continue
      yield i, row if isinstance(row, dict) else RowError("bad_record", "not a JSON object")


def text_field(value: Any, field: str, *, missing: str) -> str:
  """A required text field: bytes must be UTF-8; numbers are allowed for answers and ids only."""
  if isinstance(value, (bytes, bytearray)):
    try:
      value = bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
      raise RowError("non_utf8", f"{field}: {e}") from e
  if value is None:
    raise RowError(missing, f"{field} is missing")
  if field in ("answer", "id") and isinstance(value, (int, float)) and not isinstance(value, bool):
    if not math.isfinite(value):
      raise RowError("bad_field", f"{field} is {value}, not a finite number")
    value = str(value)
  if not isinstance(value, str):
    raise RowError("bad_field", f"{field} is {type(value).__name__}, not a string")
  if not value.strip():
    raise RowError(missing, f"{field} is empty")
  return value


def image_sources(value: Any, base: pathlib.Path) -> list[bytes | pathlib.Path]:
  """The images of a field, each as encoded bytes or a file path.

  A field is None, one image or a list of images; an image is bytes (a Parquet `binary` or
  `list<binary>` column), an HF `{"bytes": ..., "path": ...}` struct (its bytes may be base64 text
  in JSONL), a `data:image/...;base64,` URI, or a path (relative to `base`, else to the working
  directory).

  Raises:
    RowError: `broken_image` for a value that is none of these, or base64 that does not decode.
  """
  if value is None:
    return []
  items = value if isinstance(value, (list, tuple)) else [value]
  out = []
  for item in items:
    if isinstance(item, dict):
      data = item.get("bytes")
      item = _base64(data) if isinstance(data, str) and data else (data or item.get("path"))
    if isinstance(item, (bytes, bytearray)):
      out.append(bytes(item))
    elif isinstance(item, str) and item.startswith("data:") and ";base64," in item[:100]:
      out.append(_base64(item.partition(",")[2]))
    elif isinstance(item, str) and item:
      path = pathlib.Path(item)
      out.append(path if path.is_absolute() or not (base / path).exists() else base / path)
    else:
      raise RowError("broken_image", f"unsupported image value {type(item).__name__}")
  return out


def _base64(text: str) -> bytes:
  try:
    return base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError) as e:
    raise RowError("broken_image", f"image bytes are not valid base64: {e}") from e


def validate_row(row: dict, seen: Container[str], base: pathlib.Path) -> dict:
  """The fields of one prompt row, with strict types.

  Args:
    row: `{id, question, answer, choices?, images?}` (a builder maps its columns to these).
    seen: ids already kept (a repeated id is `duplicate_id`).
    base: the directory relative image paths are under.

  Returns:
    `{"id": str, "question": str, "answer": str, "choices": list[str] | dict[str, str] | None,
    "images": list[bytes | pathlib.Path]}` (images not opened yet: the caller decodes them,
    then calls `refuse_images` for a text-only model).

  Raises:
    RowError: naming the reason (`no_id`, `bad_field`, `non_utf8`, `duplicate_id`,
      `empty_question`, `no_answer`, `broken_image`) and the field.
  """
  row_id = row.get("id")
  if row_id is not None and (isinstance(row_id, bool) or not isinstance(row_id, (str, int, bytes))):
    raise RowError("bad_field", f"id is {type(row_id).__name__}, not a string or integer")
  row_id = text_field(row_id, "id", missing="no_id")
  if row_id in seen:
    raise RowError("duplicate_id", f"id {row_id!r} was seen before")
  question = text_field(row.get("question"), "question", missing="empty_question")
  answer = text_field(row.get("answer"), "answer", missing="no_answer")
  choices = _choices(row.get("choices"))
  return {"id": row_id, "question": question, "answer": answer, "choices": choices,
          "images": image_sources(row.get("images"), base)}


def refuse_images(images: list, has_vision: bool) -> None:
  """Raises `needs_vision` for a row with images when the model is text-only (the row is
  refused when the data is read, not when its step fails)."""
  if images and not has_vision:
    raise RowError("needs_vision", f"{len(images)} image(s), but the model has no vision tower")


def _choices(choices: object) -> list[str] | dict[str, str] | None:
  """Multiple-choice options: a list of strings, a letter -> string mapping, or None."""
  if choices is None:
    return None
  if isinstance(choices, (list, tuple)) and all(isinstance(c, str) for c in choices):
    return list(choices) or None
  if isinstance(choices, dict) and all(isinstance(k, str) and isinstance(v, str)
                                       for k, v in choices.items()):
    return dict(choices) or None
  raise RowError("bad_field", f"choices is {type(choices).__name__}, not a list of strings")
