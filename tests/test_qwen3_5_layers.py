"""Per-module parity with transformers' Qwen3.5 (fp32, copied weights)."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
import torch
from flax import nnx
from transformers.models.qwen3_5 import modeling_qwen3_5 as hf

from zppo_jax.models.qwen3_5 import config as config_lib
from zppo_jax.models.qwen3_5 import layers
from zppo_jax.models.qwen3_5.attention import Attention
from zppo_jax.models.qwen3_5.model import DecoderLayer

import test_qwen3_5_reference as ref

# Non-trivial mRoPE: 4 frequency pairs over 3 axes.
CFG = config_lib.tiny(head_dim=32, partial_rotary_factor=0.25, mrope_section=(2, 1, 1))
B, T = 2, 7


@pytest.fixture(scope="module")
def torch_ref():
  return ref.torch_model(CFG)


@pytest.fixture(scope="module")
def hidden():
  return np.random.default_rng(0).normal(size=(B, T, CFG.hidden_size)).astype(np.float32)


def _np(x):
  return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def test_rmsnorm(torch_ref, hidden):
  theirs = torch_ref.model.layers[0].input_layernorm
  ours = layers.RMSNorm(CFG.hidden_size, CFG, rngs=nnx.Rngs(0))
  ref.copy_torch_weights(theirs, ours)
  assert np.abs(_np(theirs.weight)).max() > 0  # the (1 + weight) scaling is exercised
  np.testing.assert_allclose(ours(jnp.asarray(hidden)), _np(theirs(torch.tensor(hidden))),
                             atol=1e-5, rtol=0)


def test_gated_rmsnorm(torch_ref):
  theirs = torch_ref.model.layers[0].linear_attn.norm
  ours = layers.GatedRMSNorm(CFG.linear_value_head_dim, CFG, rngs=nnx.Rngs(0))
  ref.copy_torch_weights(theirs, ours)
  rng = np.random.default_rng(1)
  x, gate = (rng.normal(size=(B, T, 3, CFG.linear_value_head_dim)).astype(np.float32)
             for _ in range(2))
  np.testing.assert_allclose(ours(jnp.asarray(x), jnp.asarray(gate)),
                             _np(theirs(torch.tensor(x), torch.tensor(gate))), atol=1e-5, rtol=0)


def test_mlp(torch_ref, hidden):
  theirs = torch_ref.model.layers[0].mlp
  ours = layers.MLP(CFG, rngs=nnx.Rngs(0))
  ref.copy_torch_weights(theirs, ours)
  np.testing.assert_allclose(ours(jnp.asarray(hidden)), _np(theirs(torch.tensor(hidden))),
                             atol=1e-5, rtol=0)


def _positions():
  """Distinct t/h/w positions (as for an image), int[3, B, T]."""
  rng = np.random.default_rng(2)
  return np.sort(rng.integers(0, 50, size=(3, B, T)), axis=-1)


def test_rotary_matches_transformers(torch_ref, hidden):
  pos = _positions()
  want_cos, want_sin = torch_ref.model.rotary_emb(torch.tensor(hidden), torch.tensor(pos))
  cos, sin = layers.rotary_cos_sin(jnp.asarray(pos, jnp.int32), CFG)
  np.testing.assert_allclose(cos, _np(want_cos), atol=1e-5, rtol=0)
  np.testing.assert_allclose(sin, _np(want_sin), atol=1e-5, rtol=0)
  # Each axis drives some frequency: changing h or w positions changes the angles.
  for axis in (1, 2):
    moved = pos.copy()
    moved[axis] += 3
    assert np.abs(layers.rotary_cos_sin(jnp.asarray(moved), CFG)[0] - cos).max() > 1e-3
  x = np.random.default_rng(3).normal(size=(B, T, 3, CFG.head_dim)).astype(np.float32)
  want, _ = hf.apply_rotary_pos_emb(torch.tensor(x), torch.tensor(x), want_cos, want_sin,
                                    unsqueeze_dim=2)
  np.testing.assert_allclose(layers.apply_rotary(jnp.asarray(x), cos, sin), _np(want),
                             atol=1e-5, rtol=0)


def _additive_causal_mask(valid):
  causal = np.tril(np.ones((T, T), bool))[None] & valid[:, None, :]
  return torch.tensor(np.where(causal, 0.0, -1e30)[:, None].astype(np.float32)), causal


def test_attention(torch_ref, hidden):
  theirs = torch_ref.model.layers[1].self_attn
  ours = Attention(CFG, rngs=nnx.Rngs(0))
  ref.copy_torch_weights(theirs, ours)
  pos = _positions()
  cos, sin = torch_ref.model.rotary_emb(torch.tensor(hidden), torch.tensor(pos))
  valid = np.ones((B, T), bool)
  valid[1, :2] = False
  additive, mask = _additive_causal_mask(valid)
  want, _ = theirs(torch.tensor(hidden), (cos, sin), additive)
  got, _ = nnx.jit(lambda m, *a: m(*a))(ours, jnp.asarray(hidden), *layers.rotary_cos_sin(
      jnp.asarray(pos), CFG), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got)[valid], _np(want)[valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("index", [0, 1])
def test_decoder_layer(torch_ref, hidden, index):
  theirs = torch_ref.model.layers[index]
  ours = DecoderLayer(CFG, CFG.layer_types[index], rngs=nnx.Rngs(0))
  ref.copy_torch_weights(theirs, ours)
  pos = np.broadcast_to(np.arange(T), (3, B, T))
  cos, sin = torch_ref.model.rotary_emb(torch.tensor(hidden), torch.tensor(pos))
  additive, mask = _additive_causal_mask(np.ones((B, T), bool))
  want = theirs(torch.tensor(hidden), (cos, sin), additive if index == 1 else None)
  our_cos, our_sin = layers.rotary_cos_sin(jnp.asarray(pos), CFG)
  ctx = dict(valid=jnp.ones((B, T), bool), reset=None, cos=our_cos, sin=our_sin,
             mask=jnp.asarray(mask), index=None)
  got, _ = nnx.jit(lambda m, x, c: m(x, c))(ours, jnp.asarray(hidden), ctx)
  np.testing.assert_allclose(got, _np(want), atol=1e-4, rtol=0)


@pytest.mark.parametrize("layout", ["causal", "left_padded", "packed"])
def test_causal_block_attention_equals_full_attention(layout):
  """Skipping the upper triangle of blocks changes nothing for real tokens."""
  from zppo_jax.models.qwen3_5.attention import causal_block_attention, grouped_attention
  b, t, n, kv, h = 2, 64, 4, 2, 8
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (b, t, n, h))
  k, v = (jax.random.normal(key, (b, t, kv, h)) for key in keys[1:])
  slot = jnp.arange(t)
  valid = jnp.ones((b, t), bool)
  if layout == "left_padded":
    valid = slot[None, :] >= jnp.array([[0], [37]])
  mask = valid[:, None, :] & (slot[None, None, :] <= slot[None, :, None])
  if layout == "packed":
    segment = jnp.stack([slot // 20, slot // 7])
    mask = mask & (segment[:, :, None] == segment[:, None, :])
  full = grouped_attention(q, k, v, mask)
  blocked = causal_block_attention(q, k, v, mask, max_blocks=4, min_block=16)
  real = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(blocked)[real], np.asarray(full)[real], atol=1e-5)
  assert np.isfinite(np.asarray(blocked)).all()
