"""HF `Qwen3_5ForConditionalGeneration` checkpoint directories: the text decoder through
`checkpoint`'s key table, the vision tower through `vision_checkpoint`'s."""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from zppo_jax.models.qwen3_5 import checkpoint
from zppo_jax.models.qwen3_5.multimodal import (VISION_PREFIX, MultimodalConfig,
                                                Qwen3_5ForConditionalGeneration)
from zppo_jax.models.qwen3_5.vision import VisionModel
from zppo_jax.models.qwen3_5.vision_checkpoint import (load_vision_params, vision_params_from_hf,
                                                       vision_params_to_hf, vision_state_dict)


def has_vision_weights(path: str | os.PathLike) -> bool:
  """Whether a HF checkpoint directory holds `model.visual.*` tensors."""
  return any(k.startswith(VISION_PREFIX) for k in checkpoint.Reader(os.fspath(path)).keys())


def load_pretrained_multimodal(path: str | os.PathLike, dtype: Any = jnp.float32, *,
                               param_dtype: Any = None, mesh: jax.sharding.Mesh | None = None,
                               rules=None, **runtime) -> Qwen3_5ForConditionalGeneration:
  """Loads a HF `Qwen3_5ForConditionalGeneration` checkpoint directory (vision weights included).

  The text decoder goes through `checkpoint.load_text_pretrained` (which skips `model.visual.*`),
  placed by `mesh` and `rules` like a text model; the vision tower is read with the
  `vision.HF_VISION_KEYS` table and placed on the default device (it is small and replicated).
  """
  path = os.fspath(path)
  param_dtype = dtype if param_dtype is None else param_dtype
  cfg = MultimodalConfig.from_hf(path, dtype=dtype, param_dtype=param_dtype, **runtime)
  reader = checkpoint.Reader(path)
  tensors = {k: reader.get(k) for k in reader.keys() if k.startswith(VISION_PREFIX)}
  if not tensors:
    raise ValueError(f"{path}: no {VISION_PREFIX}* tensors; load it with "
                     "checkpoint.load_text_pretrained as a text model")
  placement = {"mesh": mesh} if rules is None else {"mesh": mesh, "rules": rules}
  language_model = checkpoint.load_text_pretrained(path, dtype, param_dtype=param_dtype,
                                                   **placement, **runtime)
  params = vision_params_from_hf(tensors, cfg.vision, prefix=VISION_PREFIX)
  expected = {VISION_PREFIX + k for k in vision_params_to_hf(params, cfg.vision, prefix="")}
  unexpected = sorted(set(tensors) - expected)
  if unexpected:
    raise ValueError(f"{path}: unexpected vision tensors {unexpected[:10]}")
  visual = nnx.eval_shape(lambda: VisionModel(cfg.vision, rngs=nnx.Rngs(0)))
  load_vision_params(visual, params)
  return Qwen3_5ForConditionalGeneration(cfg, rngs=nnx.Rngs(0), language_model=language_model,
                                         visual=visual)


def save_pretrained_multimodal(model: Qwen3_5ForConditionalGeneration, out_dir: str | os.PathLike,
                               dtype: Any = None) -> list[str]:
  """Writes a single-file HF `Qwen3_5ForConditionalGeneration` checkpoint transformers loads."""
  out_dir = os.fspath(out_dir)
  cfg = model.cfg
  dtype = np.dtype(cfg.text.param_dtype if dtype is None else dtype)
  flat = checkpoint.flatten_state(nnx.state(model.language_model, nnx.Param))
  tensors = {}
  for e in checkpoint.key_entries(cfg.text, flat, checkpoint.MULTIMODAL_PREFIX):
    value = checkpoint.host_value(flat[e.path].get_value(), e.stack_index)
    tensors[e.hf_key] = checkpoint.ours_to_hf(value.astype(dtype), e)
  for key, value in vision_params_to_hf(vision_state_dict(model.visual), cfg.vision,
                                        prefix=VISION_PREFIX).items():
    tensors[key] = value.astype(dtype)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, checkpoint.SINGLE_FILE), metadata={"format": "pt"})
    hf = cfg.to_hf()
    hf["text_config"]["dtype"] = dtype.name
    with open(os.path.join(out_dir, "config.json"), "w") as f:
      json.dump(hf, f, indent=2)
  return [checkpoint.SINGLE_FILE, "config.json"]
