"""Model and tokenizer I/O of the entry points (train, sft, export, the demo): HF checkpoint
directories in and out."""
from __future__ import annotations

import json
import os
import pathlib
import re

from zppo_jax.errors import UserError

_HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")


def checkpoint_dir(path: str, what: str) -> str:
  """`path` when it is a local directory, else a one-line `UserError` naming the flag.

  Transformers would take a missing directory for a Hub repo id and fail with "Repo id must use
  alphanumeric chars"; runs read local directories only (a pod has no Hub access to rely on).

  Args:
    path: the configured path.
    what: the flag that set it, e.g. "--config.student.checkpoint" or "--model".
  """
  if os.path.isdir(path):
    return path
  if not path:
    problem = "is empty"
  elif _HUB_NAME.fullmatch(path) and not os.path.exists(path):
    problem = (f"is a Hub name, not a local directory: download it first (`huggingface-cli "
               f"download {path} --local-dir DIR`) and pass {what}=DIR")
  else:
    problem = "is not a directory"
  raise UserError(f"{what}={path!r} {problem}; it must be an HF checkpoint directory "
                  "(config.json and safetensors)")


def load_tokenizer(path: str, what: str = "--config.data.tokenizer"):
  """The HF tokenizer of a local checkpoint directory (`what`: the flag that set it, for errors)."""
  import transformers  # Heavy; only when a run is built.
  return transformers.AutoTokenizer.from_pretrained(checkpoint_dir(path, what))


def is_fp8_checkpoint(path: str) -> bool:
  """Whether the checkpoint's config.json has an FP8 `quantization_config`."""
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  quant = hf.get("quantization_config", hf.get("text_config", {}).get("quantization_config"))
  return bool(quant) and quant.get("quant_method") == "fp8"


def load_model(path: str, dtype: str, param_dtype: str | None = None, mesh=None, *,
               remat: str = "none", scan_layers: bool = True, fp8: bool = False,
               what: str = "--config.student.checkpoint"):
  """A Qwen3.5 HF checkpoint directory as our model.

  Args:
    path: the checkpoint directory.
    dtype, param_dtype: compute and storage dtypes.
    mesh: where the weights go (None: one device).
    remat: rematerialisation per layer cycle ("none", "dots", "full").
    scan_layers: scan the layer cycles in passes without a cache (`ModelConfig.scan_layers`).
    fp8: keep the matmul weights in FP8 with block scales (`models.qwen3_5.fp8`); needs an FP8
      checkpoint (e.g. `Qwen3.5-27B-FP8`).
    what: the flag that set `path`, for errors.
  """
  import jax.numpy as jnp
  path = checkpoint_dir(path, what)
  param = jnp.dtype(param_dtype or dtype)
  if fp8:
    if not is_fp8_checkpoint(path):
      raise UserError(f"fp8 is on but {what}={path!r} is not an FP8 checkpoint (no fp8 "
                      "quantization_config in its config.json): use the published -FP8 "
                      "checkpoint or turn fp8 off")
    from zppo_jax.models.qwen3_5.fp8 import load_fp8_pretrained
    return load_fp8_pretrained(path, dtype=jnp.dtype(dtype), mesh=mesh, param_dtype=param,
                               remat=remat, scan_layers=scan_layers)
  from zppo_jax.models.qwen3_5.pretrained import load_pretrained
  return load_pretrained(path, dtype=jnp.dtype(dtype), param_dtype=param, mesh=mesh, remat=remat,
                         scan_layers=scan_layers)


def save_model(model, out_dir: str | pathlib.Path, tokenizer=None) -> None:
  """Writes `model` (and the tokenizer) as an HF checkpoint directory."""
  from zppo_jax.models.qwen3_5.pretrained import save_pretrained
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  save_pretrained(model, str(out_dir))
  if tokenizer is not None:
    tokenizer.save_pretrained(str(out_dir))
