"""Builds shards from a user's own data: JSONL, Parquet or an HF `datasets` directory.

    zppo data build --input DIR_OR_FILE --out OUT --name mydata \
        --field-map question=problem,answer=solution,images=image,id=uid [--tokenizer DIR]

A field map names, for each record field (`id`, `question`, `answer`, `images`, optional `subset`),
the input column; a dotted name reaches into a struct (`reward_model.ground_truth`). Images may be
encoded bytes, `{"bytes": ..., "path": ...}` structs (the HF `Image` feature), or paths relative to
the input file. Every row ends as written or rejected with one reason (`REJECT_REASONS`), and the
counts go to `report.json`. The row checks here are shared with the ZPPO-77K builder.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import collections
import dataclasses
import json
import math
import pathlib
import re
from typing import Any, Callable, Iterator

from zppo_jax.data import prompts, records, tfds_source, vision

# The prompt pipeline's reasons, plus the ones only a builder can see.
REJECT_REASONS = prompts.REJECT_REASONS + ("answer_too_long",)
IMAGE_MARKER = re.compile(r"<image>\s*")
DEFAULT_FIELDS = {"id": "id", "question": "question", "answer": "answer", "images": "images"}
_INPUT_SUFFIXES = (".jsonl", ".parquet", ".arrow")


RowError = prompts.RowError  # A row that cannot be used; `reason` is one of `REJECT_REASONS`.


@dataclasses.dataclass(frozen=True)
class Locator:
  """Where a row is: file index in the input listing and row number in the file."""
  file: int
  row: int


def input_files(path: str | pathlib.Path) -> list[pathlib.Path]:
  """The data files of an input: the file itself, or every JSONL/Parquet/Arrow file below a
  directory (sorted, so the order is reproducible)."""
  path = pathlib.Path(path)
  if path.is_file():
    return [path]
  files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _INPUT_SUFFIXES
                 and not p.name.startswith("cache-"))
  if not files:
    raise FileNotFoundError(f"no .jsonl, .parquet or .arrow files under {path}")
  return files


def iter_file_rows(path: pathlib.Path, skip_columns: tuple[str, ...] = ()
                   ) -> Iterator[tuple[int, Any]]:
  """(row number, row dict or RowError) for every row of one file.

  `skip_columns` are not read from Parquet files (a scan that does not need the image bytes).
  """
  if path.suffix == ".jsonl":
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
  with path.open("rb") as f:
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


def get_field(row: dict, name: str) -> Any:
  """`row[name]`, following dots into nested dicts; None when absent."""
  value: Any = row
  for part in name.split("."):
    if not isinstance(value, dict):
      return None
    value = value.get(part)
  return value


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


def image_bytes(value: Any, base: pathlib.Path) -> list[bytes]:
  """The encoded images of a field (see `image_sources`), files read."""
  out = []
  for source in image_sources(value, base):
    try:
      out.append(source if isinstance(source, bytes) else source.read_bytes())
    except OSError as e:
      raise RowError("broken_image", f"cannot read {source}: {e}") from e
  return out


def check_images(images: list[bytes], min_side: int, name: str) -> list[tuple[int, int]]:
  """Decodes every image fully; returns the (height, width) of each.

  Raises:
    RowError: `broken_image` (corrupt, truncated, unsupported mode) or `small_image`.
  """
  sizes = []
  for i, data in enumerate(images):
    try:
      image = vision.load_image(data, f"{name} image {i}")
    except vision.VisionInputError as e:
      raise RowError("broken_image", str(e)) from e
    if min(image.size) < min_side:
      raise RowError("small_image", f"image {i} is {image.width}x{image.height}")
    sizes.append((image.height, image.width))
  return sizes


class PromptBudget:
  """Counts a base prompt's tokens: the chat-formatted user turn plus the image tokens.

  Each image costs `<|vision_start|>`, one pad per merged token of its resized grid, and
  `<|vision_end|>`, as the Qwen3.5 processor expands it; the text is counted with the tokenizer.
  """

  def __init__(self, tokenizer, build_user_text: Callable[[str], str],
               vision_cfg: vision.VisionProcessorConfig = vision.VisionProcessorConfig()):
    self.tokenizer, self.build_user_text, self.vision_cfg = tokenizer, build_user_text, vision_cfg

  def image_tokens(self, height: int, width: int) -> int:
    cfg = self.vision_cfg
    try:
      h, w = vision.smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    except ValueError as e:  # An extreme aspect ratio the processor refuses.
      raise RowError("broken_image", str(e)) from e
    return h * w // cfg.factor ** 2 + 2

  def count(self, question: str, sizes: list[tuple[int, int]]) -> int:
    text = prompts.encode_prompt(self.tokenizer, self.build_user_text(question))
    return len(text) + sum(self.image_tokens(h, w) for h, w in sizes)


def default_user_text(question: str) -> str:
  """The trainer's user turn: upstream format instructions stripped, then the RL closer."""
  from zppo_jax.zppo import templates
  return templates.rl_prompt(templates.strip_format_instructions(question))


def load_tokenizer(path: str | pathlib.Path | None):
  if path is None:
    return None
  import transformers
  return transformers.AutoTokenizer.from_pretrained(str(path))


@dataclasses.dataclass
class BuildConfig:
  """Row filters shared by the builders.

  Attributes:
    max_answer_chars: longer gold answers are rejected (`answer_too_long`); 0 disables.
    min_image_side: images with a side below this are rejected (`small_image`).
    max_prompt_tokens: longer base prompts are rejected (`too_long`); needs a tokenizer.
    num_shards: ArrayRecord files to write.
  """
  max_answer_chars: int = 512
  min_image_side: int = 100
  max_prompt_tokens: int = 4096
  num_shards: int = 8


def parse_field_map(text: str) -> dict[str, str]:
  """`question=problem,answer=solution` -> {"question": "problem", "answer": "solution"}."""
  fields = dict(DEFAULT_FIELDS)
  for item in filter(None, (s.strip() for s in text.split(","))):
    key, sep, column = item.partition("=")
    if not sep or key not in ("id", "question", "answer", "images", "subset"):
      raise ValueError(f"bad --field-map entry {item!r}; use id|question|answer|images|subset=COLUMN")
    fields[key] = column
  return fields


def build(input_path: str | pathlib.Path, out: str | pathlib.Path, *, name: str,
          fields: dict[str, str] | None = None, tokenizer=None,
          build_user_text: Callable[[str], str] = default_user_text,
          config: BuildConfig = BuildConfig()) -> dict:
  """Converts a user dataset to shards in `<out>/<name>/<version>/` and writes `report.json`.

  Args:
    input_path: a JSONL/Parquet/Arrow file or a directory of them.
    out: output root.
    name: dataset name (TFDS name and file prefix; also the records' `source`).
    fields: record field -> input column (`parse_field_map`).
    tokenizer: an HF tokenizer for the prompt budget; None skips that filter.
    build_user_text: question -> the user turn counted against the budget.
    config: the filters.

  Returns:
    The report: rows read, written, and rejects by reason.
  """
  fields = dict(DEFAULT_FIELDS, **(fields or {}))
  budget = PromptBudget(tokenizer, build_user_text) if tokenizer is not None else None
  files = input_files(input_path)
  rejects: collections.Counter = collections.Counter()
  counts = {"rows": 0, "written": 0}
  seen: set[str] = set()

  def rows() -> Iterator[dict]:
    for f, path in enumerate(files):
      for i, row in iter_file_rows(path):
        counts["rows"] += 1
        try:
          record = _user_record(row, fields, name, path, f"{path.name}:{i}", seen, budget, config)
        except RowError as e:
          rejects[e.reason] += 1
          continue
        counts["written"] += 1
        yield record

  directory = tfds_source.dataset_dir(out, name)
  lengths = records.write_shards(rows(), directory, name, num_shards=config.num_shards)
  tfds_source.write_metadata(directory, name, {"train": lengths},
                             f"{name}, built by zppo_jax.data.generic_builder from {input_path}")
  report = {"input": str(input_path), "dataset_dir": str(directory), **counts,
            "rejects": dict(sorted(rejects.items())),
            "prompt_budget": "applied" if budget else "skipped (no tokenizer)"}
  assert report["rows"] == report["written"] + sum(rejects.values())
  pathlib.Path(out, "report.json").write_text(json.dumps(report, indent=2) + "\n")
  return report


def _user_record(row, fields, name, path, where, seen, budget, config) -> dict:
  if isinstance(row, RowError):
    raise row
  row_id = text_field(get_field(row, fields["id"]), "id", missing="no_id")
  question = text_field(get_field(row, fields["question"]), "question", missing="empty_question")
  answer = text_field(get_field(row, fields["answer"]), "answer", missing="no_answer")
  if row_id in seen:
    raise RowError("duplicate_id", row_id)
  seen.add(row_id)
  if config.max_answer_chars and len(answer) > config.max_answer_chars:
    raise RowError("answer_too_long", where)
  images = image_bytes(get_field(row, fields["images"]), path.parent)
  sizes = check_images(images, config.min_image_side, row_id)
  question = IMAGE_MARKER.sub("", question).strip()
  if budget is not None and budget.count(question, sizes) > config.max_prompt_tokens:
    raise RowError("too_long", where)
  subset = get_field(row, fields["subset"]) if "subset" in fields else None
  choices = row.get("choices")     # multiple-choice options, for grading
  return records.make_record(id=row_id, source=name, subset=str(subset or name),
                             question=question, answer=answer, images=images,
                             meta={"choices": choices} if isinstance(choices, list) else None)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="zppo data build", description=__doc__.split("\n")[0])
  parser.add_argument("--input", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--name", default="custom")
  parser.add_argument("--field-map", default="")
  parser.add_argument("--tokenizer", default=None)
  parser.add_argument("--num-shards", type=int, default=8)
  parser.add_argument("--max-answer-chars", type=int, default=512)
  parser.add_argument("--min-image-side", type=int, default=100)
  parser.add_argument("--max-prompt-tokens", type=int, default=4096)
  args = parser.parse_args(argv)
  config = BuildConfig(args.max_answer_chars, args.min_image_side, args.max_prompt_tokens,
                       args.num_shards)
  report = build(args.input, args.out, name=args.name, fields=parse_field_map(args.field_map),
                 tokenizer=load_tokenizer(args.tokenizer), config=config)
  print(json.dumps(report, indent=2))
  return 0
