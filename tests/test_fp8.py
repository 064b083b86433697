"""The FP8 teacher: published block-scaled format, kept in fp8, dequantised inside the matmul."""
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open
from safetensors.torch import save_file

from zppo_jax.models import qwen3_5
from zppo_jax.models.qwen3_5 import fp8
from zppo_jax.models.qwen3_5.config import tiny

BLOCK = (16, 16)   # small blocks so that the tiny model has several, and partial ones.
IDS = np.array([[5, 17, 99, 3, 64, 2, 120, 7, 8, 1, 33], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]],
               np.int32)


def _write_fp8(src, fp8_dir, deq_dir):
  """Rewrites a float checkpoint in the FP8 format, and its dequantised twin (the reference)."""
  with safe_open(os.path.join(src, "model.safetensors"), "pt") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  quant, deq = {}, {}
  for key, t in tensors.items():
    module = key.rsplit(".", 2)[-2] if key.endswith(".weight") else ""
    if module in fp8.QUANTIZED_NAMES:
      q, s = fp8.quantize_blockwise(t.float().numpy(), BLOCK)   # HF layout [out, in]
      quant[key] = torch.from_numpy(q.view(np.uint8)).view(torch.float8_e4m3fn)
      quant[key + "_scale_inv"] = torch.from_numpy(s)
      full = np.repeat(np.repeat(s, BLOCK[0], 0), BLOCK[1], 1)[:q.shape[0], :q.shape[1]]
      deq[key] = torch.from_numpy(q.astype(np.float32) * full)
    else:
      quant[key] = deq[key] = t
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  for out, tensors_out, extra in ((fp8_dir, quant, True), (deq_dir, deq, False)):
    os.makedirs(out, exist_ok=True)
    save_file(tensors_out, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    c = dict(config)
    if extra:
      c["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                  "activation_scheme": "dynamic",
                                  "weight_block_size": list(BLOCK),
                                  "modules_to_not_convert": ["lm_head", "embed_tokens"]}
    with open(os.path.join(out, "config.json"), "w") as f:
      json.dump(c, f)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("fp8")
  cfg = tiny(intermediate_size=72)   # 72: a partial block along F
  model = qwen3_5.Qwen3_5ForCausalLM(cfg, rngs=nnx.Rngs(0))
  qwen3_5.save_pretrained(model, root / "float")
  _write_fp8(str(root / "float"), str(root / "fp8"), str(root / "deq"))
  return root


def test_fp8_logits_match_dequantised_reference(checkpoints):
  model = fp8.load_fp8_pretrained(checkpoints / "fp8", dtype=jnp.float32)
  reference = qwen3_5.load_pretrained(checkpoints / "deq", dtype=jnp.float32)
  kernel = model.layers[0].mlp.gate_proj.kernel[...]
  assert kernel.dtype == jnp.float8_e4m3fn
  assert isinstance(model.layers[1].self_attn.q_proj, fp8.Fp8Dense)
  assert not isinstance(model.layers[0].linear_attn.in_proj_a, fp8.Fp8Dense)
  assert not isinstance(model.lm_head, fp8.Fp8Dense)
  got, want = np.asarray(model(jnp.asarray(IDS))), np.asarray(reference(jnp.asarray(IDS)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.abs(want).max() > 1e-3


def test_quantize_blockwise_round_trip():
  w = np.random.default_rng(0).normal(size=(40, 20)).astype(np.float32)
  q, s = fp8.quantize_blockwise(w, BLOCK)
  assert q.dtype == ml_dtypes.float8_e4m3fn and s.shape == (3, 2)
  back = np.asarray(fp8.dequantize(jnp.asarray(q), jnp.asarray(s), BLOCK))
  np.testing.assert_allclose(back, w, rtol=2 ** -3, atol=1e-6)   # e4m3: 3 mantissa bits
  # The block maximum is representable exactly: scale = amax / 448.
  assert np.isclose(np.abs(back[:16, :16]).max(), np.abs(w[:16, :16]).max(), rtol=1e-6)


def test_abstract_quantized_model_halves_weight_bytes():
  cfg = qwen3_5.config.qwen3_5_27b(param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
  nbytes = lambda m: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(m)))
  plain = nnx.eval_shape(lambda: qwen3_5.Qwen3_5ForCausalLM(cfg, rngs=nnx.Rngs(0)))
  quant = nnx.eval_shape(lambda: fp8.quantize_modules(
      qwen3_5.Qwen3_5ForCausalLM(cfg, rngs=nnx.Rngs(0))))
  ratio = nbytes(quant) / nbytes(plain)
  assert 0.5 < ratio < 0.62, ratio   # embedding + LM head (2 x 2.5 GB) stay bf16


def test_mixed_quantisation_across_repetitions_is_refused(checkpoints, tmp_path):
  src = checkpoints / "fp8"
  with safe_open(os.path.join(src, "model.safetensors"), "pt") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  key = "model.layers.2.mlp.up_proj.weight"    # layer 2 repeats layer 0 of the cycle
  tensors[key] = tensors[key].float()
  del tensors[key + "_scale_inv"]
  os.makedirs(tmp_path / "bad")
  save_file(tensors, os.path.join(tmp_path / "bad", "model.safetensors"))
  with open(src / "config.json") as f, open(tmp_path / "bad" / "config.json", "w") as g:
    g.write(f.read())
  with pytest.raises(ValueError, match="up_proj"):
    fp8.load_fp8_pretrained(tmp_path / "bad", dtype=jnp.float32)


def test_not_fp8_checkpoint_is_refused(checkpoints):
  with pytest.raises(ValueError, match="quantization_config"):
    fp8.load_fp8_pretrained(checkpoints / "deq", dtype=jnp.float32)
