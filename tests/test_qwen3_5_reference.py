"""Helpers shared by the Qwen3.5 parity tests: tiny random transformers models and a weight copy.

`copy_torch_weights` walks our module tree to place every tensor of a transformers
`Qwen3_5ForCausalLM` (or of one of its sub-modules) where our model keeps it, so parity tests do
not depend on the checkpoint loader. It fails on any tensor it cannot place or any shape mismatch.
"""
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from zppo_jax.models.qwen3_5 import config as config_lib


def hf_text_config(cfg: config_lib.ModelConfig) -> transformers.Qwen3_5TextConfig:
  """The transformers config equal to ours, eager attention, fp32."""
  hf = cfg.to_hf()
  hf.pop("architectures")
  hf.pop("model_type")
  hf.pop("dtype")
  config = transformers.Qwen3_5TextConfig(**hf)
  config._attn_implementation = "eager"
  return config


def torch_model(cfg: config_lib.ModelConfig, seed: int = 0) -> transformers.Qwen3_5ForCausalLM:
  """A random transformers model with non-trivial norm weights (so a missed `1 +` shows)."""
  torch.manual_seed(seed)
  model = transformers.Qwen3_5ForCausalLM(hf_text_config(cfg)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight") or name.endswith("dt_bias"):
        p.add_(0.1 * torch.randn_like(p))
  return model


def _to_ours(key: str, value: np.ndarray):
  """(attribute path, value in our layout) of one HF tensor name (without the 'model.' prefix)."""
  parts = key.split(".")
  leaf = parts[-1]
  owner = parts[-2] if len(parts) > 1 else ""
  if owner == "conv1d":
    return parts[:-1] + ["kernel"], value[:, 0, :].T
  if owner == "embed_tokens":
    return parts[:-1] + ["embedding"], value
  if leaf == "weight" and value.ndim == 2:
    return parts[:-1] + ["kernel"], value.T
  return parts, value


def _assign(module, path, value, index=None):
  obj = module
  for name in path[:-1]:
    obj = obj[int(name)] if name.isdigit() else getattr(obj, name)
  var = getattr(obj, path[-1])
  current = np.asarray(var[...])
  target = current[index] if index is not None else current
  if target.shape != value.shape:
    raise ValueError(f"{'.'.join(path)}: ours {target.shape} vs torch {value.shape}")
  if index is None:
    var[...] = value.astype(current.dtype)
  else:
    current = current.copy()
    current[index] = value
    var[...] = current


def copy_torch_weights(torch_module: torch.nn.Module, module, layer_cycle: int | None = None):
  """Copies every tensor of ``torch_module`` into our ``module``.

  Args:
    torch_module: a transformers Qwen3.5 module (the whole causal LM, or a sub-module such as a
      decoder layer or a `Qwen3_5GatedDeltaNet`).
    module: the matching module of ours. A whole model has stacked layers; a single layer of ours
      built outside the model has none.
    layer_cycle: P, the cycle length, when copying a whole model.
  """
  for key, tensor in torch_module.state_dict().items():
    value = tensor.detach().float().numpy()
    if key.startswith("model."):
      key = key[len("model."):]
    if key == "lm_head.weight" and not hasattr(module, "lm_head"):
      continue  # tied
    path, value = _to_ours(key, value)
    if path[0] == "layers":
      i = int(path[1])
      _assign(module.layers[i % layer_cycle], path[2:], value, index=i // layer_cycle)
    else:
      _assign(module, path, value)


def test_copy_rejects_wrong_shapes():
  cfg = config_lib.tiny()
  ref = torch_model(cfg)
  other = config_lib.tiny(hidden_size=48)
  from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM
  ours = Qwen3_5ForCausalLM(other, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="embed_tokens"):
    copy_torch_weights(ref, ours, len(cfg.cycle))
