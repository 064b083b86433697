"""Gated DeltaNet: the three delta-rule forms agree, the conv and the layer match transformers."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
import torch
from flax import nnx
from transformers.models.qwen3_5 import modeling_qwen3_5 as hf

from zppo_jax.models.qwen3_5 import config as config_lib
from zppo_jax.models.qwen3_5 import gdn
from zppo_jax.models.qwen3_5.cache import GDNCache

import test_qwen3_5_reference as ref

B, T, HK, HV, DK, DV = 2, 37, 2, 4, 8, 6


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  q = gdn.l2norm(jnp.asarray(rng.normal(size=(B, T, HK, DK)), jnp.float32)) / np.sqrt(DK)
  k = gdn.l2norm(jnp.asarray(rng.normal(size=(B, T, HK, DK)), jnp.float32))
  v = jnp.asarray(rng.normal(size=(B, T, HV, DV)), jnp.float32)
  g = jnp.asarray(-np.abs(rng.normal(size=(B, T, HV))) * 0.5, jnp.float32)
  beta = jax.nn.sigmoid(jnp.asarray(rng.normal(size=(B, T, HV)), jnp.float32))
  state = jnp.asarray(rng.normal(size=(B, HV, DK, DV)), jnp.float32)
  reset = jnp.asarray(rng.random((B, T)) < 0.1).at[:, 20].set(True)
  return q, k, v, g, beta, state, reset


@jax.jit
def _one_step(q, k, v, g, beta, state, reset):
  return gdn.delta_rule_step(q, k, v, g, beta, jnp.where(reset[:, None, None, None], 0.0, state))


def _step_by_step(q, k, v, g, beta, state, reset):
  outs = []
  for t in range(q.shape[1]):
    o, state = _one_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], state, reset[:, t])
    outs.append(o)
  return jnp.stack(outs, axis=1), state


naive_jit = jax.jit(gdn.delta_rule_naive)
chunked_jit = jax.jit(gdn.delta_rule_chunked, static_argnames="chunk_size")
conv_jit = jax.jit(gdn.causal_conv)


@pytest.mark.parametrize("chunk", [8, 16])
def test_chunked_equals_naive_equals_steps(inputs, chunk):
  q, k, v, g, beta, state, reset = inputs
  naive = naive_jit(q, k, v, g, beta, state, reset)
  chunked = chunked_jit(q, k, v, g, beta, state, reset, chunk_size=chunk)
  steps = _step_by_step(q, k, v, g, beta, state, reset)
  for got in (chunked, steps):
    np.testing.assert_allclose(got[0], naive[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[1], naive[1], atol=1e-5, rtol=0)
  # The resets matter: without them the outputs differ.
  no_reset = chunked_jit(q, k, v, g, beta, state, jnp.zeros_like(reset), chunk_size=chunk)
  assert np.abs(no_reset[0] - naive[0]).max() > 1e-2


def test_chunked_matches_transformers(inputs):
  q, k, v, g, beta, state, _ = inputs
  t = lambda x: torch.tensor(np.asarray(x))
  # transformers normalises and scales inside its kernel; our inputs already are normalised.
  want_o, want_s = hf.torch_chunk_gated_delta_rule(
      t(q) * np.sqrt(DK), t(k), t(v), t(g), t(beta), initial_state=t(state),
      output_final_state=True, use_qk_l2norm_in_kernel=True)
  got_o, got_s = chunked_jit(q, k, v, g, beta, state, chunk_size=16)
  np.testing.assert_allclose(got_o, want_o.numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(got_s, want_s.numpy(), atol=1e-5, rtol=0)


def test_chunked_gradients_equal_naive(inputs):
  q, k, v, g, beta, state, reset = inputs

  def loss(fn, *args):
    o, s = fn(*args)
    return jnp.sum(o * o) + jnp.sum(jnp.sin(s))

  naive = jax.jit(jax.grad(lambda *a: loss(gdn.delta_rule_naive, *a, reset), argnums=(0, 1, 2, 3, 4, 5)))
  chunked = jax.jit(jax.grad(lambda *a: loss(lambda *b: gdn.delta_rule_chunked(*b, reset, 16), *a),
                     argnums=(0, 1, 2, 3, 4, 5)))
  for want, got in zip(naive(q, k, v, g, beta, state), chunked(q, k, v, g, beta, state)):
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_causal_conv_matches_transformers_and_skips_padding():
  rng = np.random.default_rng(1)
  b, t, c, taps = 2, 9, 5, 4
  x = jnp.asarray(rng.normal(size=(b, t, c)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(taps, c)), jnp.float32)
  out, state = conv_jit(x, kernel)
  want = hf.causal_conv1d_fn(torch.tensor(np.asarray(x)).transpose(1, 2),
                             torch.tensor(np.asarray(kernel)).T).transpose(1, 2).numpy()
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)
  np.testing.assert_allclose(state, np.swapaxes(x[:, -3:], 1, 2), atol=0)
  # Continuing from a state == running on the concatenation.
  out1, state1 = conv_jit(x[:, :4], kernel)
  out2, state2 = conv_jit(x[:, 4:], kernel, state1)
  np.testing.assert_allclose(jnp.concatenate([out1, out2], 1), out, atol=1e-6)
  np.testing.assert_allclose(state2, state, atol=0)
  # Padding in the middle of a continued chunk (left pad, right pad) is skipped entirely.
  garbage = jnp.full((b, 2, c), 7.0)
  padded = jnp.concatenate([garbage, x[:, 4:7], garbage, x[:, 7:]], axis=1)
  valid = jnp.asarray([[0, 0, 1, 1, 1, 0, 0, 1, 1]] * b, bool)
  out3, state3 = conv_jit(padded, kernel, state1, valid)
  np.testing.assert_allclose(out3[valid].reshape(b, -1, c), out2, atol=1e-6)
  np.testing.assert_allclose(state3, state, atol=0)
  # A reset cuts the window: the second sequence starts from zeros.
  reset = jnp.zeros((b, t), bool).at[:, 5].set(True)
  out4, state4 = conv_jit(x, kernel, reset=reset)
  np.testing.assert_allclose(out4[:, 5:], conv_jit(x[:, 5:], kernel)[0], atol=1e-6)
  np.testing.assert_allclose(state4, state, atol=0)


@pytest.fixture(scope="module")
def layer_pair():
  cfg = config_lib.tiny(linear_key_head_dim=8, linear_value_head_dim=4, gdn_chunk_size=4)
  torch_layer = ref.torch_model(cfg).model.layers[0].linear_attn
  ours = gdn.GatedDeltaNet(cfg, rngs=nnx.Rngs(0))
  ref.copy_torch_weights(torch_layer, ours)
  return cfg, torch_layer, ours


def test_layer_matches_transformers_with_padding(layer_pair):
  cfg, torch_layer, ours = layer_pair
  rng = np.random.default_rng(2)
  x = rng.normal(size=(3, 11, cfg.hidden_size)).astype(np.float32)
  mask = np.ones((3, 11), np.int64)
  mask[0, :3] = 0   # left padding
  mask[1, 8:] = 0   # right padding
  with torch.no_grad():
    want = torch_layer(torch.tensor(x), attention_mask=torch.tensor(mask)).numpy()
  call = nnx.jit(lambda layer, x, valid: layer(x, valid)[0])
  got = call(ours, jnp.asarray(x), jnp.asarray(mask, bool))
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=1e-5, rtol=0)
  # transformers is exact for left padding too: the padded row equals the unpadded one.
  alone = call(ours, jnp.asarray(x[:1, 3:]), jnp.ones((1, 8), bool))
  np.testing.assert_allclose(got[0, 3:], alone[0], atol=1e-5, rtol=0)


def test_layer_cached_decode_equals_full(layer_pair):
  cfg, _, ours = layer_pair
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 9, cfg.hidden_size)), jnp.float32)
  valid = jnp.ones((2, 9), bool)
  call = nnx.jit(lambda layer, x, valid, cache: layer(x, valid, cache=cache))
  full, _ = call(ours, x, valid, None)
  cache = GDNCache(conv=jnp.zeros((2, cfg.gdn_conv_dim, 3)),
                   recurrent=jnp.zeros((2, cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                                        cfg.linear_value_head_dim)))
  outs = []
  out, cache = call(ours, x[:, :5], valid[:, :5], cache)
  outs.append(out)
  for t in range(5, 9):
    out, cache = call(ours, x[:, t:t + 1], valid[:, t:t + 1], cache)
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [8, 64])
def test_unit_lower_inverse_is_the_inverse(size):
  """Both the row loop (small C) and the blockwise form (C = 64) invert I + L."""
  from zppo_jax.models.qwen3_5.gdn import _unit_lower_inverse
  lower = np.tril(np.random.RandomState(size).uniform(-0.3, 0.3, (3, size, size)), -1)
  got = np.asarray(_unit_lower_inverse(jnp.asarray(lower, jnp.float32)))
  want = np.linalg.inv(np.eye(size) + lower)
  np.testing.assert_allclose(got, want, atol=1e-5)
