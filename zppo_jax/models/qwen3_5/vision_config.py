"""Configuration of the Qwen3.5 vision encoder: `VisionConfig`, presets and HF interop.

The vision tower is the same for every released Qwen3.5 size up to its width, depth and output
width (the language model's hidden size). `VisionConfig.from_hf` reads the `vision_config` block of
a `Qwen3_5ForConditionalGeneration` `config.json` and refuses any field it does not handle, because
a silently ignored field is the classic port bug.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

# Activation names accepted for the block MLP (HF `hidden_act`). The merger always uses exact GELU.
ACTIVATIONS = ("gelu_pytorch_tanh", "gelu", "gelu_new", "silu", "quick_gelu")

# HF vision-config fields that this port reads (anything else is an error).
_HANDLED = frozenset({
    "depth", "hidden_size", "hidden_act", "intermediate_size", "num_heads", "in_channels",
    "patch_size", "spatial_merge_size", "temporal_patch_size", "out_hidden_size",
    "num_position_embeddings", "initializer_range", "rope_parameters", "model_type",
    "deepstack_visual_indexes",
})
# Generic `PreTrainedConfig` bookkeeping that has no effect on the vision computation.
_IGNORED = frozenset({
    "transformers_version", "architectures", "output_hidden_states", "output_attentions",
    "return_dict", "dtype", "torch_dtype", "chunk_size_feed_forward", "is_encoder_decoder",
    "id2label", "label2id", "problem_type", "_name_or_path", "use_cache", "tie_word_embeddings",
    "_attn_implementation_autoset", "embed_dim",
})
_MODEL_TYPES = ("qwen3_5", "qwen3_5_vision")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Shapes and numerics of the Qwen3.5 vision encoder.

  Attributes:
    depth: number of transformer blocks.
    hidden_size: D, the width of the blocks.
    intermediate_size: F, the block MLP width.
    num_heads: N, attention heads (head dim H = D / N).
    out_hidden_size: the language model's hidden size; the merger projects to it.
    in_channels: image channels (3, RGB).
    patch_size: P, spatial side of a patch in pixels.
    temporal_patch_size: frames folded into one patch (images are repeated to fill it).
    spatial_merge_size: M, the merger concatenates M x M neighbouring patches into one LM token.
    num_position_embeddings: size of the learned square position table (a side of 48 for 2304).
    hidden_act: activation of the block MLP.
    rope_theta: base of the 2-D axial rotary embedding in the attention.
    layer_norm_eps: epsilon of every LayerNorm (fixed at 1e-6 in the reference, not an HF field).
    initializer_range: std of the random initialisation.
    scan_layers: run the blocks with `jax.lax.scan` (True) or a Python loop (False, debugging);
      the parameter layout is the same either way.
    dtype: compute dtype.
    param_dtype: storage dtype of the parameters.
  """
  depth: int
  hidden_size: int
  intermediate_size: int
  num_heads: int
  out_hidden_size: int
  in_channels: int = 3
  patch_size: int = 16
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  num_position_embeddings: int = 2304
  hidden_act: str = "gelu_pytorch_tanh"
  rope_theta: float = 10000.0
  layer_norm_eps: float = 1e-6
  initializer_range: float = 0.02
  scan_layers: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    for name in ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size",
                 "in_channels", "patch_size", "temporal_patch_size", "spatial_merge_size",
                 "num_position_embeddings"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"VisionConfig.{name} must be a positive int, got {value!r}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    if self.head_dim % 4:
      raise ValueError(f"head_dim {self.head_dim} must be a multiple of 4 for the 2-D rotary embedding")
    if self.grid_side ** 2 != self.num_position_embeddings:
      raise ValueError(f"num_position_embeddings {self.num_position_embeddings} is not a square")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def grid_side(self) -> int:
    """Side of the square learned position-embedding grid."""
    return int(round(self.num_position_embeddings ** 0.5))

  @property
  def patch_dim(self) -> int:
    """Length of one flattened patch: C * temporal_patch_size * P * P."""
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @property
  def merge_unit(self) -> int:
    """Patches per LM token (M * M)."""
    return self.spatial_merge_size ** 2

  @classmethod
  def from_hf(cls, source: str | os.PathLike | Mapping[str, Any], **overrides) -> VisionConfig:
    """Builds the config from an HF vision config.

    Args:
      source: a `config.json` path, a checkpoint directory, a full `Qwen3_5Config` dict (its
        `vision_config` is used) or the vision-config dict itself.
      **overrides: non-HF fields to set (`dtype`, `param_dtype`, `scan_layers`).

    Raises:
      ValueError: on any HF field this port does not handle, or a value it does not support.
    """
    if not isinstance(source, Mapping):
      path = os.fspath(source)
      if os.path.isdir(path):
        path = os.path.join(path, "config.json")
      with open(path) as f:
        source = json.load(f)
    if "vision_config" in source:
      source = source["vision_config"]
    if not isinstance(source, Mapping):
      raise ValueError(f"vision_config must be a dict, got {type(source).__name__}")
    unknown = sorted(set(source) - _HANDLED - _IGNORED)
    if unknown:
      raise ValueError(f"VisionConfig.from_hf: unhandled HF vision fields {unknown}")
    model_type = source.get("model_type", "qwen3_5_vision")
    if model_type not in _MODEL_TYPES:
      raise ValueError(f"VisionConfig.from_hf: model_type {model_type!r} is not one of {_MODEL_TYPES}")
    if source.get("deepstack_visual_indexes"):
      raise ValueError("VisionConfig.from_hf: deepstack_visual_indexes must be empty for Qwen3.5, got "
                       f"{source['deepstack_visual_indexes']}")
    rope = dict(source.get("rope_parameters") or {})
    rope_type = rope.pop("rope_type", "axial")
    if rope_type != "axial":
      raise ValueError(f"VisionConfig.from_hf: vision rope_type must be 'axial', got {rope_type!r}")
    rope_theta = rope.pop("rope_theta", 10000.0)
    if rope:
      raise ValueError(f"VisionConfig.from_hf: unhandled rope_parameters {sorted(rope)}")
    kwargs = {}
    for name in ("patch_size", "temporal_patch_size"):
      value = source.get(name)
      if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
          raise ValueError(f"VisionConfig.from_hf: non-square {name} {value} is not supported")
        value = value[0]
      if value is not None:
        kwargs[name] = int(value)
    for name in ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size",
                 "in_channels", "spatial_merge_size", "num_position_embeddings", "hidden_act",
                 "initializer_range"):
      if name in source:
        kwargs[name] = source[name]
    missing = [n for n in ("depth", "hidden_size", "intermediate_size", "num_heads",
                           "out_hidden_size") if n not in kwargs]
    if missing:
      raise ValueError(f"VisionConfig.from_hf: missing required fields {missing}")
    return cls(rope_theta=float(rope_theta), **kwargs, **overrides)

  def to_hf(self) -> dict[str, Any]:
    """The HF `vision_config` dict (as transformers writes it with `save_pretrained`)."""
    return {
        "depth": self.depth,
        "hidden_act": self.hidden_act,
        "hidden_size": self.hidden_size,
        "in_channels": self.in_channels,
        "initializer_range": self.initializer_range,
        "intermediate_size": self.intermediate_size,
        "model_type": "qwen3_5_vision",
        "num_heads": self.num_heads,
        "num_position_embeddings": self.num_position_embeddings,
        "out_hidden_size": self.out_hidden_size,
        "patch_size": self.patch_size,
        "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "axial"},
        "spatial_merge_size": self.spatial_merge_size,
        "temporal_patch_size": self.temporal_patch_size,
    }


def vision_0_8b(**overrides) -> VisionConfig:
  """Vision tower of Qwen3.5-0.8B (100,592,896 parameters)."""
  return VisionConfig(depth=12, hidden_size=768, intermediate_size=3072, num_heads=12,
                      out_hidden_size=1024, **overrides)


def vision_2b(**overrides) -> VisionConfig:
  """Vision tower of Qwen3.5-2B (331,416,576 parameters)."""
  return VisionConfig(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                      out_hidden_size=2048, **overrides)


def vision_4b(**overrides) -> VisionConfig:
  """Vision tower of Qwen3.5-4B (333,514,240 parameters)."""
  return VisionConfig(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                      out_hidden_size=2560, **overrides)


def vision_9b(**overrides) -> VisionConfig:
  """Vision tower of Qwen3.5-9B (456,010,480 parameters)."""
  return VisionConfig(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                      out_hidden_size=4096, **overrides)


def vision_27b(**overrides) -> VisionConfig:
  """Vision tower of Qwen3.5-27B (460,730,096 parameters)."""
  return VisionConfig(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                      out_hidden_size=5120, **overrides)


def vision_tiny(**overrides) -> VisionConfig:
  """A tiny tower for tests: 2 blocks, width 32, 2 heads, an 8 x 8 position grid."""
  kwargs = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=48,
                num_position_embeddings=64)
  kwargs.update(overrides)
  return VisionConfig(**kwargs)


VISION_PRESETS = {
    "0.8b": vision_0_8b, "2b": vision_2b, "4b": vision_4b, "9b": vision_9b, "27b": vision_27b,
}
