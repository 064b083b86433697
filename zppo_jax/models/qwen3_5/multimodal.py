"""The vision-language Qwen3.5 (transformers' `Qwen3_5ForConditionalGeneration`) in Flax NNX.

  model = Qwen3_5ForConditionalGeneration(MultimodalConfig.from_hf(path), rngs=nnx.Rngs(0))
  logits = model(input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                 pixel_values_videos=None, video_grid_thw=None, mm_token_type_ids=None)

The forward pass (`prepare_inputs`, then the text decoder):
1. embed the token ids;
2. encode all images (and, separately, all videos) with the vision tower and write the features,
   in order, over the `<|image_pad|>` (`<|video_pad|>`) embeddings, row-major over the batch;
3. compute the 3-axis mRoPE positions on the host (`rope_index.get_rope_index`);
4. run `Qwen3_5ForCausalLM.forward(inputs_embeds=..., positions=...)` and its LM head.

Inputs have the shapes and meanings of the transformers processor's outputs, numpy or jax; the grids
must be host values (they set shapes). `prepare_inputs` is separate so that a sampler computes
the features once per prompt and continues decoding from `next_position`.

Parameter tree: `visual.*` (see `vision.py`) and `language_model.*` (see `model.py`); on disk HF
`model.visual.*`, `model.language_model.*` and `lm_head.weight`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zppo_jax.models.qwen3_5.config import IGNORED_COMMON_FIELDS, ModelConfig
from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM
from zppo_jax.models.qwen3_5.rope_index import derive_mm_token_type_ids, get_rope_index
from zppo_jax.models.qwen3_5.vision import VisionModel, vision_inputs
from zppo_jax.models.qwen3_5.vision_config import VisionConfig

_TOKEN_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
VISION_PREFIX = "model.visual."


@dataclasses.dataclass(frozen=True)
class MultimodalConfig:
  """The text decoder's and the vision tower's configs plus the special token ids."""
  text: ModelConfig
  vision: VisionConfig
  image_token_id: int = 248056
  video_token_id: int = 248057
  vision_start_token_id: int = 248053
  vision_end_token_id: int = 248054

  def __post_init__(self):
    if self.vision.out_hidden_size != self.text.hidden_size:
      raise ValueError(f"vision out_hidden_size {self.vision.out_hidden_size} != text "
                       f"hidden_size {self.text.hidden_size}")

  @classmethod
  def from_hf(cls, source: str | os.PathLike | Mapping[str, Any], **runtime) -> MultimodalConfig:
    """Reads a `qwen3_5` config.json (path, directory or dict); refuses unknown top-level fields.

    `runtime` fields (`dtype`, `param_dtype`, `scan_layers`, ...) go to the text config; `dtype`,
    `param_dtype` and `scan_layers` also to the vision config.
    """
    if not isinstance(source, Mapping):
      path = os.fspath(source)
      if os.path.isdir(path):
        path = os.path.join(path, "config.json")
      with open(path) as f:
        source = json.load(f)
    source = dict(source)
    if source.get("model_type") != "qwen3_5" or "vision_config" not in source:
      raise ValueError("MultimodalConfig.from_hf needs a qwen3_5 config with a vision_config")
    unknown = sorted(set(source) - IGNORED_COMMON_FIELDS - set(_TOKEN_FIELDS)
                     - {"text_config", "vision_config", "model_type", "tie_word_embeddings"})
    if unknown:
      raise ValueError(f"MultimodalConfig.from_hf: unknown fields {unknown}")
    vision_runtime = {k: v for k, v in runtime.items() if k in ("dtype", "param_dtype", "scan_layers")}
    if "dtype" in vision_runtime and "param_dtype" not in vision_runtime:
      vision_runtime["param_dtype"] = vision_runtime["dtype"]
    return cls(text=ModelConfig.from_hf(source, **runtime),
               vision=VisionConfig.from_hf(source["vision_config"], **vision_runtime),
               **{k: int(source[k]) for k in _TOKEN_FIELDS if k in source})

  def to_hf(self) -> dict[str, Any]:
    text = self.text.to_hf()
    text.pop("architectures")
    return {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5",
        "text_config": text,
        "vision_config": self.vision.to_hf(),
        "tie_word_embeddings": self.text.tie_word_embeddings,
        **{k: getattr(self, k) for k in _TOKEN_FIELDS},
    }


def place_features(embeds: jax.Array, mask: jax.Array, features: jax.Array) -> jax.Array:
  """Writes features[k] over the k-th masked token (row-major): float[B, T, D] -> same."""
  b, t, d = embeds.shape
  flat_mask = mask.reshape(-1)
  index = jnp.clip(jnp.cumsum(flat_mask) - 1, 0, max(features.shape[0] - 1, 0))
  placed = jnp.where(flat_mask[:, None], features[index].astype(embeds.dtype),
                     embeds.reshape(-1, d))
  return placed.reshape(b, t, d)


class Qwen3_5ForConditionalGeneration(nnx.Module):
  """Vision tower + text decoder with image/video features placed at their placeholder tokens."""

  def __init__(self, cfg: MultimodalConfig, *, rngs: nnx.Rngs,
               language_model: Qwen3_5ForCausalLM | None = None,
               visual: VisionModel | None = None):
    self.cfg = cfg
    self.visual = VisionModel(cfg.vision, rngs=rngs) if visual is None else visual
    self.language_model = (Qwen3_5ForCausalLM(cfg.text, rngs=rngs) if language_model is None
                           else language_model)

  def _media(self, embeds, ids, pixel_values, grid_thw, token_id, name):
    count = int((ids == token_id).sum())
    if pixel_values is None:
      if count:
        raise ValueError(f"input_ids hold {count} {name} placeholder tokens but no {name} "
                         "pixel values were given")
      return embeds
    if grid_thw is None:
      raise ValueError(f"{name} pixel values need their {name}_grid_thw")
    grid_thw = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    n_features = int(grid_thw.prod(axis=1).sum()) // self.cfg.vision.merge_unit
    if count != n_features:
      raise ValueError(f"{name} features and {name} tokens do not match: {count} placeholder "
                       f"tokens, {n_features} features from {name}_grid_thw {grid_thw.tolist()}")
    features = _encode(self.visual, jnp.asarray(pixel_values),
                       vision_inputs(grid_thw, self.cfg.vision))
    return place_features(embeds, jnp.asarray(ids == token_id), features)

  def prepare_inputs(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                     pixel_values_videos=None, video_grid_thw=None, mm_token_type_ids=None):
    """Embeddings with the vision features placed, and the mRoPE positions.

    Args:
      input_ids: int[B, T] with expanded placeholders (one per merged vision token).
      attention_mask: int/bool[B, T], 1 = real token; None = all real.
      pixel_values: float[N_img, C*Tp*P*P] patches of all images, in order of appearance.
      image_grid_thw: int[I, 3] per image.
      pixel_values_videos: float[N_vid, C*Tp*P*P] patches of all videos.
      video_grid_thw: int[V, 3] per video.
      mm_token_type_ids: int[B, T] 0 text, 1 image, 2 video; derived from the ids when None.

    Returns:
      inputs_embeds float[B, T, D], positions int32[3, B, T], next_position int32[B].

    Raises:
      ValueError: when placeholder counts and features disagree, naming the counts (and, from
        the position index, the row).
    """
    cfg = self.cfg
    ids = np.asarray(input_ids)
    mask = None if attention_mask is None else np.asarray(attention_mask)
    if mm_token_type_ids is None:
      mm_token_type_ids = derive_mm_token_type_ids(ids, cfg.image_token_id, cfg.video_token_id)
    embeds = self.language_model.embed(jnp.asarray(ids, jnp.int32))
    embeds = self._media(embeds, ids, pixel_values, image_grid_thw, cfg.image_token_id, "image")
    embeds = self._media(embeds, ids, pixel_values_videos, video_grid_thw, cfg.video_token_id,
                         "video")
    positions, next_position = get_rope_index(
        ids, mm_token_type_ids, image_grid_thw, video_grid_thw, mask,
        spatial_merge_size=cfg.vision.spatial_merge_size)
    return embeds, jnp.asarray(positions), jnp.asarray(next_position)

  def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
               pixel_values_videos=None, video_grid_thw=None, mm_token_type_ids=None):
    """The logits float32[B, T, V] (arguments as in `prepare_inputs`)."""
    embeds, positions, _ = self.prepare_inputs(
        input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
        video_grid_thw, mm_token_type_ids)
    mask = None if attention_mask is None else jnp.asarray(attention_mask)
    return _decode(self.language_model, embeds, positions, mask)


@nnx.jit
def _encode(visual: VisionModel, pixel_values: jax.Array, inputs) -> jax.Array:
  return visual(pixel_values, inputs=inputs)


@nnx.jit
def _decode(language_model: Qwen3_5ForCausalLM, embeds, positions, mask) -> jax.Array:
  hidden, _ = language_model.forward(inputs_embeds=embeds, positions=positions,
                                     attention_mask=mask)
  return language_model.logits(hidden)


def text_decoder(model) -> Qwen3_5ForCausalLM:
  """The text decoder of `model`: its language model when it is a vision-language model."""
  return model.language_model if isinstance(model, Qwen3_5ForConditionalGeneration) else model
