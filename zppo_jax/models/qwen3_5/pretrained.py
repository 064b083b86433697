"""`load_pretrained` / `save_pretrained`: a HF Qwen3.5 checkpoint directory in or out, text model
or vision-language model, whichever the checkpoint (or the model) is."""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from zppo_jax import parallel
from zppo_jax.models.qwen3_5 import checkpoint, multimodal_checkpoint
from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM
from zppo_jax.models.qwen3_5.multimodal import Qwen3_5ForConditionalGeneration


def load_pretrained(path: str | os.PathLike, dtype: Any = jnp.float32,
                    mesh: jax.sharding.Mesh | None = None,
                    rules: parallel.Rules = parallel.TRAIN_RULES, *, param_dtype: Any = None,
                    text_only: bool = False, **runtime
                    ) -> Qwen3_5ForCausalLM | Qwen3_5ForConditionalGeneration:
  """Loads a HF Qwen3.5 checkpoint directory as our text or vision-language model.

  A checkpoint with vision weights (`model.visual.*`) gives the multimodal
  `Qwen3_5ForConditionalGeneration` (its text decoder placed by `mesh`, the vision tower
  replicated), unless `text_only`; every other checkpoint gives `Qwen3_5ForCausalLM`.

  Args:
    path, dtype, mesh, rules, param_dtype, **runtime: as for `checkpoint.load_text_pretrained`
      (the text decoder of a multimodal checkpoint is placed the same way).
    text_only: load only the text decoder of a multimodal checkpoint (its vision tower skipped).

  Raises:
    ValueError: unsupported config, a missing or unexpected tensor, or a shape mismatch, naming
      the key (and both shapes).
  """
  if not text_only and multimodal_checkpoint.has_vision_weights(path):
    return multimodal_checkpoint.load_pretrained_multimodal(
        path, dtype, param_dtype=param_dtype, mesh=mesh, rules=rules, **runtime)
  return checkpoint.load_text_pretrained(path, dtype, mesh, rules, param_dtype=param_dtype,
                                         **runtime)


def save_pretrained(model: Qwen3_5ForCausalLM | Qwen3_5ForConditionalGeneration,
                    out_dir: str | os.PathLike, max_shard_bytes: int = 5 * 2**30,
                    dtype: Any = None) -> list[str]:
  """Writes ``model`` as the HF checkpoint of its class (config.json + safetensors).

  A ``Qwen3_5ForConditionalGeneration`` is written in one file, vision tower included; a text
  model in shards of at most ``max_shard_bytes`` (more than one adds the index JSON).

  Args:
    model: our model (sharded or not).
    out_dir: output directory (created).
    max_shard_bytes: largest safetensors file of a text model.
    dtype: storage dtype of the written tensors; default the model's ``param_dtype``.

  Returns:
    The written file names. In a multi-process run every process must call this (the
    parameters are gathered collectively); only process 0 writes.
  """
  if isinstance(model, Qwen3_5ForConditionalGeneration):
    return multimodal_checkpoint.save_pretrained_multimodal(model, out_dir, dtype)
  return checkpoint.save_text_pretrained(model, out_dir, max_shard_bytes, dtype)
