"""Model and tokenizer I/O of the entry points (train, sft, export, the demo): HF checkpoint
directories in and out."""
from __future__ import annotations

import pathlib


def load_tokenizer(path: str):
  import transformers  # Heavy; only when a run is built.
  return transformers.AutoTokenizer.from_pretrained(path)


def load_model(path: str, dtype: str, param_dtype: str | None = None, mesh=None):
  """A Qwen3.5 HF checkpoint directory as our text model."""
  import jax.numpy as jnp
  from zppo_jax.models.qwen3_5.pretrained import load_pretrained
  return load_pretrained(path, dtype=jnp.dtype(dtype),
                         param_dtype=jnp.dtype(param_dtype or dtype), mesh=mesh)


def save_model(model, out_dir: str | pathlib.Path, tokenizer=None) -> None:
  """Writes `model` (and the tokenizer) as an HF checkpoint directory."""
  from zppo_jax.models.qwen3_5.pretrained import save_pretrained
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  save_pretrained(model, str(out_dir))
  if tokenizer is not None:
    tokenizer.save_pretrained(str(out_dir))
