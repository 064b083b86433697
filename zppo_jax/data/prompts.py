"""The prompt pipeline of RL training: records from JSONL or Parquet to tokenised prompts.

Records are validated and tokenised once when the pipeline is built (a prompt set is small next to
its rollouts); rows that cannot be used are skipped, counted by reason and written to
`rejects.jsonl`, and the run goes on. The valid rows then go through a Grain pipeline: a per-process
shard, a seeded shuffle that changes every epoch, repetition, and an iterator whose state is a small
dict saved with each checkpoint.

A prompt is the tokenizer's chat template applied to one user turn, `build_user_text(question)`
(the trainer passes the ZPPO template: upstream format instructions stripped, RL closer appended),
with the generation prompt opened.
"""
from __future__ import annotations

import collections
import dataclasses
import base64
import functools
import io
import json
import math
import pathlib
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np

from zppo_jax.data import markup

_DATA_URI = "data:image;base64,"
REJECT_REASONS = ("bad_record", "no_id", "duplicate_id", "empty_question", "no_answer",
                  "too_long", "broken_image", "small_image", "non_utf8", "bad_field",
                  "needs_vision")


class RowError(Exception):
  """A row that cannot be used; `reason` is one of `REJECT_REASONS` (or a builder's)."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


@dataclasses.dataclass
class PromptSet:
  """The usable records of one file and what was rejected.

  Attributes:
    records: usable records, each the input row plus `prompt_ids` (list[int]).
    rejects: reason -> count.
  """
  records: list[dict]
  rejects: collections.Counter


def read_rows(path: str | pathlib.Path) -> Iterator[tuple[int, object]]:
  """(line or row number, row) of a JSONL, Parquet or Arrow file; a line that is not UTF-8 or not
  a JSON object yields a `RowError` naming the reason instead of a row."""
  from zppo_jax.data import generic_builder  # It imports this module.
  path = pathlib.Path(path)
  if path.suffix in (".parquet", ".arrow"):
    yield from generic_builder.iter_file_rows(path)
  else:
    yield from generic_builder.iter_jsonl_rows(path)


class ImagePrompt(list):
  """A prompt's token ids (image placeholders expanded) that carries its images' vision inputs.

  It is a list of ids, so every text path (lengths, padding, packing of the ids) treats it as one;
  the sampler and the learner read `pixel_values` / `image_grid_thw` to place the features.
  `extended` (or `join_prompt`) keeps the images when ids are appended (a forced prefix).

  Attributes:
    pixel_values: float32[N, C*Tp*P*P] patches of the prompt's images, in order of appearance.
    image_grid_thw: int64[I, 3] patch grid of each image.
  """

  def __init__(self, ids: Sequence[int], pixel_values, image_grid_thw):
    super().__init__(int(t) for t in ids)
    self.pixel_values = np.asarray(pixel_values, np.float32)
    self.image_grid_thw = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)

  def extended(self, ids: Sequence[int]) -> ImagePrompt:
    return ImagePrompt(list(self) + list(ids), self.pixel_values, self.image_grid_thw)

  def __reduce__(self):  # Pickles (e.g. to a grading process) with its images.
    return ImagePrompt, (list(self), self.pixel_values, self.image_grid_thw)


def join_prompt(prompt: Sequence[int], suffix: Sequence[int]) -> list[int]:
  """`prompt + suffix` as ids, keeping an `ImagePrompt`'s images."""
  if isinstance(prompt, ImagePrompt):
    return prompt.extended(suffix)
  return list(prompt) + list(suffix)


def encode_prompt(tokenizer, user_text: str, images: Sequence = (), vision=None,
                  sample: Any = "?", enable_thinking: bool | None = None) -> list[int]:
  """Token ids of one user turn under the tokenizer's chat template, assistant turn opened.

  Args:
    tokenizer: an HF tokenizer with a chat template (and the Qwen vision tokens if `images`).
    user_text: the user turn's text.
    images: the question's images (paths, `data:` base64 URIs, bytes or PIL images); each becomes one
      `<|vision_start|><|image_pad|><|vision_end|>` block before the text, its pad expanded to
      the image's token count (the layout of `data.pipeline.Preprocessor.encode`).
    vision: `data.vision.VisionProcessorConfig` of the model; needed when `images` is non-empty.
    sample: names the question in error messages.
    enable_thinking: passed to the chat template when given (Qwen3.5's templates open the
      assistant turn with an empty `<think></think>` when False); None = the template's default.

  Special-token strings in `user_text` (``<|im_end|>``, ``<|image_pad|>``...) are written as
  plain text first (`data.markup`), so the text cannot forge a turn or an image slot.

  Returns:
    list[int], or an `ImagePrompt` when there are images.

  Raises:
    data.vision.VisionInputError: naming the sample, for an image that cannot be used.
  """
  from zppo_jax.data import vision as vision_lib  # PIL: only needed for image prompts.
  images = list(images or ())
  if images and vision is None:
    raise ValueError(f"sample {sample}: the question has images but the model has no vision "
                     "tower (a text-only checkpoint)")
  placeholder = vision_lib.VISION_START + vision_lib.IMAGE_PAD + vision_lib.VISION_END
  # The user text is data: a chat marker or image pad inside it must not become the real token.
  user_text = markup.neutralize_special_tokens(user_text, tokenizer)
  thinking = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
  text = tokenizer.apply_chat_template(
      [{"role": "user", "content": placeholder * len(images) + user_text}], tokenize=False,
      add_generation_prompt=True, **thinking)
  if not images:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
  pixels = [_preprocess_image(image, vision, f"{sample} image {i}")
            for i, image in enumerate(images)]
  grids = np.concatenate([g for _, g in pixels])
  text = vision_lib.expand_vision_placeholders(text, grids, merge_size=vision.merge_size,
                                               sample=sample)
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  return ImagePrompt(ids, np.concatenate([p for p, _ in pixels]), grids)


def _preprocess_image(image, vision, name: str) -> tuple[np.ndarray, np.ndarray]:
  """(pixel_values, grid) of one image; an image given by path is processed once per process."""
  from zppo_jax.data import vision as vision_lib
  if isinstance(image, str) and image.startswith("data:") and ";base64," in image[:100]:
    image = base64.b64decode(image.partition(",")[2])
  if not isinstance(image, (str, pathlib.Path)):
    out = vision_lib.preprocess_images([image], vision, name)
    return out["pixel_values"], out["image_grid_thw"]
  try:
    return _preprocess_path(str(image), vision)
  except vision_lib.VisionInputError as e:
    raise type(e)(f"sample {name}: {e}") from e


# A step uses a question's images for its plain and its reformulated prompts: a small cache of
# recent images (up to ~30 MB each at the paper's pixel budget) saves decoding them again.
@functools.lru_cache(maxsize=64)
def _preprocess_path(path: str, vision) -> tuple[np.ndarray, np.ndarray]:
  from zppo_jax.data import vision as vision_lib
  out = vision_lib.preprocess_images([path], vision, path)
  return out["pixel_values"], out["image_grid_thw"]


def load_prompts(path: str | pathlib.Path, tokenizer, build_user_text: Callable[[str], str], *,
                 max_prompt_tokens: int, rejects_path: str | pathlib.Path | None = None,
                 vision=None) -> PromptSet:
  """Validates, formats and tokenises every row of `path`; a bad row is skipped, never fatal.

  Args:
    path: JSONL (one JSON object per line), Parquet or Arrow; fields `id` (string or integer),
      `question` (string), `answer` (string, integer or finite number), optional `choices` (a
      list of option strings, or letter -> string) and `images` (see
      `generic_builder.image_sources`: paths, bytes, `{"bytes": ...}` structs, base64).
    tokenizer: an HF tokenizer with a chat template.
    build_user_text: question -> the user turn's text.
    max_prompt_tokens: longer prompts are rejected as `too_long`.
    rejects_path: where to write one JSON line per rejected row ({line, reason, id, detail}).
    vision: the model's `data.vision.VisionProcessorConfig`; when given, rows with images are
      encoded with their image tokens (counted against `max_prompt_tokens`), and images the
      processor refuses are rejected (`small_image` below its minimum side, else
      `broken_image`). Without it (a text-only model) rows with images are `needs_vision`.

  Returns:
    The usable records and the reject counts.
  """
  path = pathlib.Path(path)
  token_chars = _max_token_chars(tokenizer)
  max_chars = None if token_chars is None else max_prompt_tokens * token_chars
  records, rejects, seen, lines = [], collections.Counter(), set(), []
  for line, row in read_rows(path):
    try:
      if isinstance(row, RowError):
        raise row
      record = _valid_record(row, seen, path.parent, vision)
      # A question that cannot fit is rejected without tokenising its megabytes.
      if max_chars is not None and len(record["question"]) > max_chars:
        raise RowError("too_long", f"question of {len(record['question'])} characters")
      ids = _encode_record(tokenizer, build_user_text, record, vision)
      if len(ids) > max_prompt_tokens:
        raise RowError("too_long", f"{len(ids)} tokens > {max_prompt_tokens}")
    except Exception as e:  # noqa: BLE001 - one bad row never stops the load; it is recorded.
      reason = e.reason if isinstance(e, RowError) else "bad_record"
      rejects[reason] += 1
      row_id = row.get("id") if isinstance(row, dict) else None
      lines.append({"line": line, "reason": reason,
                    "id": row_id if isinstance(row_id, (str, int)) else None,
                    "detail": str(e)[:300]})
      continue
    seen.add(record["id"])
    # Ids only: the pixels are recomputed when the prompt is used (a prompt set's images would
    # not fit in memory).
    records.append({**record, "prompt_ids": list(ids)})
  if rejects_path is not None:
    rejects_path = pathlib.Path(rejects_path)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    with rejects_path.open("w") as f:
      for item in lines:
        f.write(json.dumps(item, default=str) + "\n")
  return PromptSet(records, rejects)


def _max_token_chars(tokenizer) -> int | None:
  """The longest vocabulary entry: a text of more than `n` times this many characters has more
  than `n` tokens (a byte-level token covers at most as many characters as its entry has).
  None for a tokenizer without a vocabulary to read (a test double): no early check."""
  get_vocab = getattr(tokenizer, "get_vocab", None)
  if get_vocab is None:
    return None
  return max(max(map(len, get_vocab()), default=1), 1)


def _encode_record(tokenizer, build_user_text, record: dict, vision) -> list[int]:
  """The prompt ids of a valid record; image errors become `small_image`/`broken_image`."""
  from zppo_jax.data import vision as vision_lib
  try:
    return encode_prompt(tokenizer, build_user_text(record["question"]), record["images"],
                         vision, sample=record["id"])
  except vision_lib.SmallImageError as e:
    raise RowError("small_image", str(e)) from e
  except vision_lib.VisionInputError as e:
    raise RowError("broken_image", str(e)) from e


def _valid_record(row: dict, seen: set[str], base: pathlib.Path, vision) -> dict:
  """The row with strict types: `id` and `answer` as strings, `choices` a list (or mapping) of
  strings or absent, `images` a list of paths or bytes that open as images.

  Raises:
    RowError: naming the reason (`no_id`, `bad_field`, `duplicate_id`, `empty_question`,
      `no_answer`, `broken_image`, `needs_vision`) and the field.
  """
  from zppo_jax.data.generic_builder import image_sources  # It imports this module.
  row_id = row.get("id")
  if row_id is None or row_id == "":
    raise RowError("no_id", "id is missing")
  if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
    raise RowError("bad_field", f"id is {type(row_id).__name__}, not a string or integer")
  row_id = str(row_id)
  if not row_id.strip():
    raise RowError("no_id", "id is blank")
  if row_id in seen:
    raise RowError("duplicate_id", f"id {row_id!r} was seen before")
  question = row.get("question")
  if question is not None and not isinstance(question, str):
    raise RowError("bad_field", f"question is {type(question).__name__}, not a string")
  if not question or not question.strip():
    raise RowError("empty_question", "question is missing or blank")
  answer = _answer_text(row.get("answer"))
  choices = _choices(row.get("choices"))
  images = []
  for i, source in enumerate(image_sources(row.get("images"), base)):
    _check_image(source, f"image {i}")
    # Embedded bytes are kept as a data URI: records go into the replay buffer's JSON state.
    images.append(_DATA_URI + base64.b64encode(source).decode("ascii")
                  if isinstance(source, bytes) else str(source))
  if images and vision is None:
    raise RowError("needs_vision", f"{len(images)} image(s), but the model has no vision tower")
  return {**row, "id": row_id, "question": question, "answer": answer, "choices": choices,
          "images": images}


def _answer_text(answer: object) -> str:
  """A gold answer as text: strings as they are, integers and finite numbers written out."""
  if answer is None or (isinstance(answer, str) and not answer.strip()):
    raise RowError("no_answer", "answer is missing or blank")
  if isinstance(answer, str):
    return answer
  if isinstance(answer, bool) or not isinstance(answer, (int, float)):
    raise RowError("bad_field", f"answer is {type(answer).__name__}, not a string or number")
  if isinstance(answer, float) and not math.isfinite(answer):
    raise RowError("bad_field", f"answer is {answer}, not a finite number")
  return str(answer)


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


def _check_image(source: bytes | pathlib.Path, name: str) -> None:
  """Raises `broken_image` unless the image opens and its header verifies (a cheap check; the
  full decode happens when the prompt is encoded)."""
  from PIL import Image  # Only needed when records carry images.
  try:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
      im.verify()
  except Exception as e:  # noqa: BLE001 - any failure to open or decode makes the row unusable.
    raise RowError("broken_image", f"{name}: {type(e).__name__}: {e}") from e


class PromptIterator:
  """Batches of prompt records in a seeded order, sharded per process, checkpointable.

  Each process sees rows `shard_index::shard_count` of the usable records; the order is a seeded
  shuffle, different every epoch. `state()` / `restore(state)` save and restore the position.
  """

  def __init__(self, records: list[dict], batch_size: int, *, seed: int, shuffle: bool = True,
               num_epochs: int = 0, shard_index: int = 0, shard_count: int = 1):
    if not records:
      raise ValueError("the prompt set has no usable rows (see rejects.jsonl)")
    ds = grain.MapDataset.source(records)[shard_index::shard_count]
    if shuffle:
      ds = ds.seed(seed).shuffle()
    ds = ds.repeat(num_epochs or None).batch(batch_size, drop_remainder=True, batch_fn=list)
    # Records are in memory already: no read threads or prefetch (they only add start-up time).
    self._dataset = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    self._iterator = iter(self._dataset)

  def __iter__(self):
    return self

  def __next__(self) -> list[dict]:
    return list(next(self._iterator))

  def state(self) -> dict:
    return dict(self._iterator.get_state())

  def restore(self, state: dict) -> None:
    self._iterator = iter(self._dataset)
    self._iterator.set_state(dict(state))
