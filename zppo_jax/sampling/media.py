"""Image prompts for the sampler and the learner: vision features and 3-axis positions.

A prompt with images (`data.prompts.ImagePrompt`: ids with expanded `<|image_pad|>` runs, plus
`pixel_values` and `image_grid_thw`) becomes, for the text decoder,

  embeddings  the token embeddings with the k-th image feature written over the k-th image pad;
  positions   int32[3, L] mRoPE (t, h, w) positions from `rope_index.get_rope_index`; decoding
              continues at their maximum plus one (the cache's `next_position`).

The features are computed once per prompt's images (`VisionEncoder.features`, which remembers
them by their pixel array, shared by every prompt `join_prompt` extends) and reused by the G samples
(the prompt is prefilled once) and by the learner's packed rows of its rollouts (`prompt_inputs`),
so the log-probabilities of training see the same inputs as sampling did. The vision tower is
frozen during RL: only the text decoder is trained.
"""
from __future__ import annotations

import collections
import functools

import jax
import numpy as np
from flax import nnx

from zppo_jax.data.prompts import ImagePrompt
from zppo_jax.models.qwen3_5.rope_index import IMAGE, get_rope_index
from zppo_jax.models.qwen3_5.vision import vision_inputs

_MIN_PATCH_BUCKET = 64
_CACHE_BYTES = 1 << 30   # features remembered between sampling and packing a step's prompts


def _bucket(n: int, minimum: int) -> int:
  return max(minimum, 1 << (max(n, 1) - 1).bit_length())


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, params, pixel_values, inputs):
  return nnx.merge(graphdef, params)(pixel_values, inputs=inputs)


class VisionEncoder:
  """The frozen vision tower of a multimodal model, as a jitted function of a prompt's images.

  Args:
    model: a `Qwen3_5ForConditionalGeneration`.
  """

  def __init__(self, model):
    self.cfg = model.cfg
    self.graphdef, self.params = nnx.split(model.visual)
    # id(pixel_values) -> (pixel_values, grid, features), least recently used first; holding the
    # array keeps its id from being reused.
    self._cache: collections.OrderedDict[int, tuple] = collections.OrderedDict()
    self._cache_bytes = 0

  def update_params(self, model) -> None:
    self.params = nnx.state(model.visual)
    self._cache.clear()
    self._cache_bytes = 0

  def features(self, prompt: ImagePrompt, sample: int | str = "?") -> np.ndarray:
    """float32[n_image_tokens, D] features of the prompt's images, in order of appearance.

    Patches are padded to a power of two (padding is its own attention segment), so prompts
    whose images differ in size share a few compiled programs.

    Raises:
      ValueError: naming the sample, when the image pads of the ids do not match the grids.
    """
    vision = self.cfg.vision
    grid = prompt.image_grid_thw
    n = int(grid.prod(axis=1).sum())
    if prompt.pixel_values.shape[0] != n:
      raise ValueError(f"prompt {sample}: {prompt.pixel_values.shape[0]} patches but the image "
                       f"grids {grid.tolist()} describe {n}")
    pads = sum(t == self.cfg.image_token_id for t in prompt)
    if pads != n // vision.merge_unit:
      raise ValueError(f"prompt {sample}: {pads} image placeholder tokens but its images give "
                       f"{n // vision.merge_unit} features (grids {grid.tolist()})")
    key = id(prompt.pixel_values)
    hit = self._cache.get(key)
    if hit is not None and hit[0] is prompt.pixel_values and np.array_equal(hit[1], grid):
      self._cache.move_to_end(key)
      return hit[2]
    size = _bucket(n, _MIN_PATCH_BUCKET)
    pixels = np.zeros((size, prompt.pixel_values.shape[1]), np.float32)
    pixels[:n] = prompt.pixel_values
    out = _encode(self.graphdef, self.params, pixels.astype(vision.dtype),
                  vision_inputs(grid, vision, pad_to=size))
    features = np.asarray(out, np.float32)[:n // vision.merge_unit]
    features.setflags(write=False)  # Shared by every caller that asks for these images.
    if hit is not None:
      self._cache_bytes -= self._cache.pop(key)[2].nbytes
    self._cache[key] = (prompt.pixel_values, grid, features)
    self._cache_bytes += features.nbytes
    while self._cache_bytes > _CACHE_BYTES and len(self._cache) > 1:
      self._cache_bytes -= self._cache.popitem(last=False)[1][2].nbytes
    return features


def prompt_inputs(prompt: ImagePrompt, encoder: VisionEncoder, sample: int | str = "?"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The vision side of one prompt of L ids.

  Args:
    prompt: an `ImagePrompt`.
    encoder: the model's `VisionEncoder`.
    sample: names the prompt in errors.

  Returns:
    positions int32[3, L], image_mask bool[L] (True at the image pads), features
    float32[n_pads, D] (the k-th belongs to the k-th pad).

  Raises:
    ValueError: naming the sample, when placeholders, patches and grids disagree.
  """
  ids = np.asarray(prompt, np.int64)[None]
  types = (ids == encoder.cfg.image_token_id).astype(np.int32) * IMAGE
  features = encoder.features(prompt, sample)
  try:
    positions, _ = get_rope_index(ids, types, prompt.image_grid_thw, None, None,
                                  spatial_merge_size=encoder.cfg.vision.spatial_merge_size)
  except ValueError as e:
    raise ValueError(f"prompt {sample}: {e}") from e
  return positions[:, 0], types[0] == IMAGE, features
