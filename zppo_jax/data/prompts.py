"""Prompts of RL training: a question (and its images) -> the token ids the student is sampled on.

A prompt is the tokenizer's chat template applied to one user turn, `build_user_text(question)`
(the trainer passes the ZPPO template: upstream format instructions stripped, RL closer appended),
with the generation prompt opened; a question's images come first, each as one vision block
expanded to its token count. `encode_prompt` is the one function that makes them: the data
pipeline (`data.pipeline.Preprocessor`, for training and held-out records) and the trainer
(replayed and reformulated prompts) both call it. Reading and checking rows is `data.rows`.
"""
from __future__ import annotations

import base64
import functools
import pathlib
from typing import Any, Sequence

import numpy as np

from zppo_jax.data import markup, rows

# The row rules live in `data.rows`; the names stay importable from here.
RowError = rows.RowError
REJECT_REASONS = rows.REJECT_REASONS


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
