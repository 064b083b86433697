"""Builds shards from a user's own data: JSONL, Parquet or an HF `datasets` directory.

    zppo data build --input DIR_OR_FILE --out OUT --name mydata \
        --field-map question=problem,answer=solution,images=image,id=uid [--tokenizer DIR]

A field map names, for each record field (`id`, `question`, `answer`, `images`, optional `subset`),
the input column; a dotted name reaches into a struct (`reward_model.ground_truth`). Images may be
encoded bytes, `{"bytes": ..., "path": ...}` structs (the HF `Image` feature), or paths relative to
the input file. Every row ends as written or rejected with one reason (`REJECT_REASONS`): the
counts go to `report.json`, each rejected row with its reason to `rejects.jsonl`. The row rules are
`data.rows`' (shared with the ZPPO-77K builder); `zppo train` builds a JSONL/Parquet prompt file
with this builder (`data.train_data.prepare`).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import pathlib
import re
from typing import Any, Callable, Iterator

from zppo_jax.data import prompts, records, rows, tfds_source, vision

# The prompt pipeline's reasons, plus the ones only a builder can see.
REJECT_REASONS = rows.REJECT_REASONS + ("answer_too_long",)
IMAGE_MARKER = re.compile(r"<image>\s*")
DEFAULT_FIELDS = {"id": "id", "question": "question", "answer": "answer", "images": "images"}
_INPUT_SUFFIXES = (".jsonl", ".parquet", ".arrow")


# The row rules every builder shares (`data.rows`).
RowError, text_field, image_sources = rows.RowError, rows.text_field, rows.image_sources
iter_file_rows, iter_jsonl_rows = rows.iter_file_rows, rows.iter_jsonl_rows


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


def get_field(row: dict, name: str) -> Any:
  """`row[name]`, following dots into nested dicts; None when absent."""
  value: Any = row
  for part in name.split("."):
    if not isinstance(value, dict):
      return None
    value = value.get(part)
  return value


def image_bytes(value: Any, base: pathlib.Path) -> list[bytes]:
  """The encoded images of a field (see `image_sources`), files read."""
  return read_images(image_sources(value, base))


def read_images(sources: list[bytes | pathlib.Path]) -> list[bytes]:
  """Encoded image bytes of `image_sources`' values, files read."""
  out = []
  for source in sources:
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
    self.token_chars = max_token_chars(tokenizer)

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

  def check(self, question: str, sizes: list[tuple[int, int]], limit: int,
            chars: int | None = None) -> None:
    """Raises `too_long` when the prompt has more than `limit` tokens, or the question (`chars`
    long as stored in the row, default `len(question)`) is longer than `limit` times the longest
    vocabulary entry: that is rejected without being tokenised (a megabyte question in linear
    time), also when stripping or the template would drop most of it."""
    chars = len(question) if chars is None else chars
    if self.token_chars is not None and chars > limit * self.token_chars:
      raise RowError("too_long", f"question of {chars} characters > {limit} tokens")
    tokens = self.count(question, sizes)
    if tokens > limit:
      raise RowError("too_long", f"{tokens} tokens > {limit}")


def max_token_chars(tokenizer) -> int | None:
  """The longest vocabulary entry: a text of more than `n` times this many characters has more
  than `n` tokens (a byte-level token covers at most as many characters as its entry has).
  None for a tokenizer without a vocabulary to read (a test double): no early check."""
  get_vocab = getattr(tokenizer, "get_vocab", None)
  if get_vocab is None:
    return None
  return max(max(map(len, get_vocab()), default=1), 1)


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
    allow_images: False for a text-only student: rows with images are rejected up front
      (`needs_vision`).
  """
  max_answer_chars: int = 512
  min_image_side: int = 100
  max_prompt_tokens: int = 4096
  num_shards: int = 8
  allow_images: bool = True


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
          vision_cfg: vision.VisionProcessorConfig = vision.VisionProcessorConfig(),
          config: BuildConfig = BuildConfig(),
          rejects_path: str | pathlib.Path | None = None) -> dict:
  """Converts a user dataset to shards in `<out>/<name>/<version>/` and writes `report.json`.

  Every row is checked by `rows.validate_row` (the rules of every prompt reader), then its images
  are decoded and sized, and its prompt counted against the budget.

  Args:
    input_path: a JSONL/Parquet/Arrow file or a directory of them.
    out: output root.
    name: dataset name (TFDS name and file prefix; also the records' `source`).
    fields: record field -> input column (`parse_field_map`).
    tokenizer: an HF tokenizer for the prompt budget; None skips that filter.
    build_user_text: question -> the user turn counted against the budget.
    vision_cfg: the image preprocessing whose token counts the budget uses.
    config: the filters.
    rejects_path: where each rejected row is listed, one JSON line `{file, line, reason, id,
      detail}` (default `<out>/rejects.jsonl`).

  Returns:
    The report: rows read, written, and rejects by reason.
  """
  fields = dict(DEFAULT_FIELDS, **(fields or {}))
  budget = PromptBudget(tokenizer, build_user_text, vision_cfg) if tokenizer is not None else None
  files = input_files(input_path)
  rejects: collections.Counter = collections.Counter()
  counts = {"rows": 0, "written": 0}
  seen: set[str] = set()
  rejects_path = pathlib.Path(rejects_path or pathlib.Path(out) / "rejects.jsonl")
  rejects_path.parent.mkdir(parents=True, exist_ok=True)

  def rows_of(listing) -> Iterator[dict]:
    for f, path in enumerate(files):
      for i, row in iter_file_rows(path):
        counts["rows"] += 1
        try:
          record = _user_record(row, fields, name, path, seen, budget, config)
        except RowError as e:
          rejects[e.reason] += 1
          row_id = get_field(row, fields["id"]) if isinstance(row, dict) else None
          listing.write(json.dumps({
              "file": str(path), "line": i, "reason": e.reason,
              "id": row_id if isinstance(row_id, (str, int)) else None,
              "detail": str(e)[:300]}) + "\n")
          continue
        seen.add(record["id"])
        counts["written"] += 1
        yield record

  directory = tfds_source.dataset_dir(out, name)
  with rejects_path.open("w") as listing:
    lengths = records.write_shards(rows_of(listing), directory, name,
                                   num_shards=config.num_shards)
  tfds_source.write_metadata(directory, name, {"train": lengths},
                             f"{name}, built by zppo_jax.data.generic_builder from {input_path}")
  report = {"input": str(input_path), "dataset_dir": str(directory), **counts,
            "rejects": dict(sorted(rejects.items())), "rejects_file": str(rejects_path),
            "prompt_budget": "applied" if budget else "skipped (no tokenizer)"}
  assert report["rows"] == report["written"] + sum(rejects.values())
  pathlib.Path(out, "report.json").write_text(json.dumps(report, indent=2) + "\n")
  return report


def _user_record(row, fields, name, path, seen, budget, config) -> dict:
  if isinstance(row, RowError):
    raise row
  mapped = {key: get_field(row, column) for key, column in fields.items()}
  mapped.setdefault("choices", row.get("choices"))     # multiple-choice options, for grading
  mapped.setdefault("subset", row.get("subset"))       # a `subset` column is read when present
  fields_ok = rows.validate_row(mapped, seen, path.parent)
  answer = fields_ok["answer"]
  if config.max_answer_chars and len(answer) > config.max_answer_chars:
    raise RowError("answer_too_long", f"answer of {len(answer)} characters")
  images = read_images(fields_ok["images"])
  sizes = check_images(images, config.min_image_side, fields_ok["id"])
  rows.refuse_images(images, config.allow_images)
  question = IMAGE_MARKER.sub("", fields_ok["question"]).strip()
  if not question:
    raise RowError("empty_question", "question is only image markers")
  if budget is not None:
    budget.check(question, sizes, config.max_prompt_tokens, chars=len(fields_ok["question"]))
  subset = mapped.get("subset")
  choices = fields_ok["choices"]
  return records.make_record(id=fields_ok["id"], source=name, subset=str(subset or name),
                             question=question, answer=answer, images=images,
                             meta={"choices": choices} if choices else None)


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
