"""HF weights of the Qwen3.5 vision encoder (`model.visual.*`) in and out of `vision.VisionModel`.

Parameter tree (HF `model.visual.` names mirrored; blocks are stacked on a leading `depth` axis, so
HF `blocks.{i}.X` is row i of our `blocks.X`):

  patch_embed.proj.kernel  [C*Tp*P*P, D]   HF patch_embed.proj.weight [D, C, Tp, P, P] reshaped, .T
  patch_embed.proj.bias    [D]
  pos_embed.embedding      [num_position_embeddings, D]         HF pos_embed.weight
  blocks.norm1.scale/bias  [L, D]          HF blocks.{i}.norm1.weight/bias (same for norm2)
  blocks.attn.qkv.kernel   [L, D, 3D]      HF blocks.{i}.attn.qkv.weight [3D, D] .T; bias [L, 3D]
  blocks.attn.proj.kernel  [L, D, D]       HF blocks.{i}.attn.proj.weight .T; bias [L, D]
  blocks.mlp.linear_fc1.kernel [L, D, F]   HF blocks.{i}.mlp.linear_fc1.weight .T; bias [L, F]
  blocks.mlp.linear_fc2.kernel [L, F, D]   HF blocks.{i}.mlp.linear_fc2.weight .T; bias [L, D]
  merger.norm.scale/bias   [D]
  merger.linear_fc1.kernel [4D, 4D]        HF merger.linear_fc1.weight .T; bias [4D]
  merger.linear_fc2.kernel [4D, O]         HF merger.linear_fc2.weight .T; bias [O]

`HF_VISION_KEYS` is that table; `vision_params_from_hf` / `vision_params_to_hf` apply it.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from zppo_jax.models.qwen3_5.vision_config import VisionConfig


# HF key suffix (under `model.visual.`) -> (our parameter path, conversion). `{i}` is the block.
HF_VISION_KEYS: tuple[tuple[str, str, str], ...] = (
    ("patch_embed.proj.weight", "patch_embed.proj.kernel", "conv"),
    ("patch_embed.proj.bias", "patch_embed.proj.bias", "copy"),
    ("pos_embed.weight", "pos_embed.embedding", "copy"),
    *((f"blocks.{{i}}.{hf}.weight", f"blocks.{ours}.{kind_name}", kind)
      for hf, ours, kind_name, kind in (
          ("norm1", "norm1", "scale", "copy"), ("norm2", "norm2", "scale", "copy"),
          ("attn.qkv", "attn.qkv", "kernel", "linear"), ("attn.proj", "attn.proj", "kernel", "linear"),
          ("mlp.linear_fc1", "mlp.linear_fc1", "kernel", "linear"),
          ("mlp.linear_fc2", "mlp.linear_fc2", "kernel", "linear"))),
    *((f"blocks.{{i}}.{name}.bias", f"blocks.{name}.bias", "copy")
      for name in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2")),
    ("merger.norm.weight", "merger.norm.scale", "copy"),
    ("merger.norm.bias", "merger.norm.bias", "copy"),
    ("merger.linear_fc1.weight", "merger.linear_fc1.kernel", "linear"),
    ("merger.linear_fc1.bias", "merger.linear_fc1.bias", "copy"),
    ("merger.linear_fc2.weight", "merger.linear_fc2.kernel", "linear"),
    ("merger.linear_fc2.bias", "merger.linear_fc2.bias", "copy"),
)


def _from_hf(array: np.ndarray, kind: str) -> np.ndarray:
  if kind == "linear":
    return array.T
  if kind == "conv":
    return array.reshape(array.shape[0], -1).T
  return array


def vision_params_from_hf(tensors: Mapping[str, np.ndarray], cfg: VisionConfig,
                          prefix: str = "model.visual.") -> dict[str, np.ndarray]:
  """Converts HF vision tensors to our flat `{path: array}` parameters (blocks stacked).

  Raises:
    KeyError: naming the first HF key that is missing.
  """
  params = {}
  for hf_key, path, kind in HF_VISION_KEYS:
    if "{i}" in hf_key:
      rows = []
      for i in range(cfg.depth):
        key = prefix + hf_key.format(i=i)
        if key not in tensors:
          raise KeyError(f"missing vision weight {key!r}")
        rows.append(_from_hf(np.asarray(tensors[key]), kind))
      params[path] = np.stack(rows)
    else:
      if prefix + hf_key not in tensors:
        raise KeyError(f"missing vision weight {prefix + hf_key!r}")
      params[path] = _from_hf(np.asarray(tensors[prefix + hf_key]), kind)
  return params


def vision_params_to_hf(params: Mapping[str, np.ndarray], cfg: VisionConfig,
                        prefix: str = "model.visual.") -> dict[str, np.ndarray]:
  """Inverse of `vision_params_from_hf`."""
  conv_shape = (cfg.hidden_size, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size,
                cfg.patch_size)
  tensors = {}
  for hf_key, path, kind in HF_VISION_KEYS:
    value = np.asarray(params[path])
    to_hf = {"linear": lambda a: a.T, "conv": lambda a: a.T.reshape(conv_shape),
             "copy": lambda a: a}[kind]
    if "{i}" in hf_key:
      for i in range(cfg.depth):
        tensors[prefix + hf_key.format(i=i)] = np.ascontiguousarray(to_hf(value[i]))
    else:
      tensors[prefix + hf_key] = np.ascontiguousarray(to_hf(value))
  return tensors


def vision_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """The model's parameters as a flat `{dotted path: numpy array}` dict."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return {".".join(str(p) for p in path): np.asarray(var[...]) for path, var in flat}


def load_vision_params(model: nnx.Module, params: Mapping[str, np.ndarray]) -> None:
  """Writes `{dotted path: array}` parameters into `model` in place, checking every shape.

  `model` may be abstract (from `nnx.eval_shape`): no random initialisation is then needed.
  """
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  seen = set()
  for path, var in flat:
    key = ".".join(str(p) for p in path)
    if key not in params:
      raise KeyError(f"no value for vision parameter {key!r}")
    value, current = np.asarray(params[key]), var.get_value()
    if value.shape != current.shape:
      raise ValueError(f"vision parameter {key!r}: shape {value.shape}, expected {current.shape}")
    # set_value also fills an abstract (`nnx.eval_shape`) model.
    var.set_value(jnp.asarray(value, dtype=current.dtype))
    seen.add(key)
  extra = sorted(set(params) - seen)
  if extra:
    raise KeyError(f"unexpected vision parameters {extra}")
