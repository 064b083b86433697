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
import functools
import json
import pathlib
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np

REJECT_REASONS = ("bad_record", "no_id", "duplicate_id", "empty_question", "no_answer",
                  "too_long", "broken_image", "small_image")


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
  """(line or row number, row) of a JSONL or Parquet file; an unparseable line yields its text."""
  path = pathlib.Path(path)
  if path.suffix == ".parquet":
    import pyarrow.parquet as pq  # Only needed for Parquet input.
    for i, row in enumerate(pq.read_table(path).to_pylist()):
      yield i, row
    return
  with path.open() as f:
    for i, line in enumerate(f):
      if not line.strip():
        continue
      try:
        yield i, json.loads(line)
      except json.JSONDecodeError:
        yield i, line.rstrip("\n")


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
                  sample: Any = "?") -> list[int]:
  """Token ids of one user turn under the tokenizer's chat template, assistant turn opened.

  Args:
    tokenizer: an HF tokenizer with a chat template (and the Qwen vision tokens if `images`).
    user_text: the user turn's text.
    images: the question's images (paths, bytes or PIL images); each becomes one
      `<|vision_start|><|image_pad|><|vision_end|>` block before the text, its pad expanded to
      the image's token count (the layout of `data.pipeline.Preprocessor.encode`).
    vision: `data.vision.VisionProcessorConfig` of the model; needed when `images` is non-empty.
    sample: names the question in error messages.

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
  text = tokenizer.apply_chat_template(
      [{"role": "user", "content": placeholder * len(images) + user_text}], tokenize=False,
      add_generation_prompt=True)
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
  """Validates, formats and tokenises every row of `path`.

  Args:
    path: JSONL (one JSON object per line) or Parquet; fields `id`, `question`, `answer`, optional
      `images` (paths).
    tokenizer: an HF tokenizer with a chat template.
    build_user_text: question -> the user turn's text.
    max_prompt_tokens: longer prompts are rejected as `too_long`.
    rejects_path: where to write one JSON line per rejected row ({line, reason, id}).
    vision: the model's `data.vision.VisionProcessorConfig`; when given, rows with images are
      encoded with their image tokens (counted against `max_prompt_tokens`), and images the
      processor refuses are rejected (`small_image` below its minimum side, else `broken_image`).

  Returns:
    The usable records and the reject counts.
  """
  records, rejects, seen, lines = [], collections.Counter(), set(), []
  for line, row in read_rows(path):
    reason = _reject_reason(row, seen)
    if reason is None:
      ids, reason = _encode_row(tokenizer, build_user_text, row, vision)
    if reason is None:
      if len(ids) > max_prompt_tokens:
        reason = "too_long"
      else:
        seen.add(str(row["id"]))
        # Ids only: the pixels are recomputed when the prompt is used (a prompt set's images
        # would not fit in memory).
        records.append({**row, "id": str(row["id"]), "answer": str(row["answer"]),
                        "prompt_ids": list(ids)})
        continue
    rejects[reason] += 1
    lines.append({"line": line, "reason": reason,
                  "id": row.get("id") if isinstance(row, dict) else None})
  if rejects_path is not None:
    rejects_path = pathlib.Path(rejects_path)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    with rejects_path.open("w") as f:
      for item in lines:
        f.write(json.dumps(item, default=str) + "\n")
  return PromptSet(records, rejects)


def _encode_row(tokenizer, build_user_text, row: dict, vision) -> tuple[list[int], str | None]:
  """(prompt ids, None), or ([], reason) when an image is refused by the vision processor."""
  from zppo_jax.data import vision as vision_lib
  images = (row.get("images") or ()) if vision is not None else ()
  try:
    return encode_prompt(tokenizer, build_user_text(row["question"]), images, vision,
                         sample=row["id"]), None
  except vision_lib.SmallImageError:
    return [], "small_image"
  except vision_lib.VisionInputError:
    return [], "broken_image"


def _reject_reason(row: object, seen: set[str]) -> str | None:
  if not isinstance(row, dict):
    return "bad_record"
  if row.get("id") is None or str(row["id"]) == "":
    return "no_id"
  if str(row["id"]) in seen:
    return "duplicate_id"
  question = row.get("question")
  if not isinstance(question, str) or not question.strip():
    return "empty_question"
  answer = row.get("answer")
  if answer is None or (isinstance(answer, str) and not answer.strip()):
    return "no_answer"
  for image in row.get("images") or ():
    if not _image_ok(image):
      return "broken_image"
  return None


def _image_ok(image: object) -> bool:
  try:
    from PIL import Image  # Only needed when records carry images.
    with Image.open(str(image)) as im:
      im.verify()
    return True
  except Exception:  # Any failure to open or decode makes the row unusable.
    return False


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
