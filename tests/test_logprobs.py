"""Chunked LM-head log-probs / entropy / JSD == the full-logits computation, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zppo_jax.rl import logprobs, losses

B, T, D, V = 2, 9, 16, 37  # T·B and V deliberately not multiples of the chunk sizes.


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(0, 1, (B, T, D)), jnp.float32)
  w = jnp.asarray(rng.normal(0, 0.5, (D, V)), jnp.float32)
  y = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
  g_lp = jnp.asarray(rng.normal(size=(B, T)), jnp.float32)
  g_ent = jnp.asarray(rng.normal(size=(B, T)), jnp.float32)
  return h, w, y, g_lp, g_ent


def _objective(fn, g_lp, g_ent):
  def obj(h, w, y):
    lp, ent = fn(h, w, y)
    return jnp.sum(lp * g_lp) + jnp.sum(ent * g_ent)
  return obj


@pytest.mark.parametrize("token_chunk,vocab_chunk,keep", [(4, 8, 0), (1024, None, 0),
                                                         (4, None, 2 ** 20), (1024, None, 2 ** 20)])
def test_chunked_logprobs_match_full_logits(inputs, token_chunk, vocab_chunk, keep):
  h, w, y, g_lp, g_ent = inputs
  chunked = lambda h, w, y: logprobs.chunked_logprobs(h, w, y, token_chunk=token_chunk,
                                                      vocab_chunk=vocab_chunk,
                                                      keep_logits_bytes=keep)
  lp, ent = jax.jit(chunked)(h, w, y)
  lp_ref, ent_ref = logprobs.full_logprobs(h, w, y)
  np.testing.assert_allclose(lp, lp_ref, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(ent, ent_ref, atol=1e-5, rtol=1e-5)
  grads = jax.jit(jax.grad(_objective(chunked, g_lp, g_ent), argnums=(0, 1)))(h, w, y)
  grads_ref = jax.grad(_objective(logprobs.full_logprobs, g_lp, g_ent), argnums=(0, 1))(h, w, y)
  for got, want in zip(grads, grads_ref):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_logprobs_against_numpy_softmax(inputs):
  h, w, y, _, _ = inputs
  logits = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = np.take_along_axis(logp, np.asarray(y)[..., None], -1)[..., 0]
  got, _ = logprobs.chunked_logprobs(h, w, y, token_chunk=4, vocab_chunk=8)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_chunked_jsd_matches_full_vocabulary(inputs):
  h, w, _, g, _ = inputs
  rng = np.random.default_rng(1)
  ht = jnp.asarray(rng.normal(0, 1, (B, T, 24)), jnp.float32)  # teacher has its own width.
  wt = jnp.asarray(rng.normal(0, 0.5, (24, V)), jnp.float32)

  def full(h, w):
    s_logits = jnp.einsum("BTD,DV->BTV", h, w)
    return jnp.sum(g * losses.jsd_per_token(s_logits, jnp.einsum("BTD,DV->BTV", ht, wt), 0.3))

  def chunked(h, w):
    return jnp.sum(g * logprobs.chunked_jsd(h, w, ht, wt, beta=0.3, token_chunk=4, vocab_chunk=8))

  np.testing.assert_allclose(jax.jit(chunked)(h, w), full(h, w), atol=1e-5, rtol=1e-5)
  got = jax.jit(jax.grad(chunked, argnums=(0, 1)))(h, w)
  want = jax.grad(full, argnums=(0, 1))(h, w)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_shape_errors_name_the_argument(inputs):
  h, w, y, _, _ = inputs
  with pytest.raises(ValueError, match="kernel"):
    logprobs.chunked_logprobs(h, w.T, y)
  with pytest.raises(ValueError, match="vocabularies"):
    logprobs.chunked_jsd(h, w, h, w[:, :5])


def test_chunking_lowers_peak_memory_of_forward_and_backward():
  """Compiled temp memory of value+grad: full logits vs chunked, at a vocab where logits dominate."""
  b, t, d, v = 2, 512, 32, 8192  # full logits: 32 MiB in fp32, chunk tile 256 x 1024: 1 MiB.
  h = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
  w = jax.ShapeDtypeStruct((d, v), jnp.float32)
  y = jax.ShapeDtypeStruct((b, t), jnp.int32)

  def temp_bytes(fn):
    loss = lambda h, w, y: jnp.sum(fn(h, w, y)[0])
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(h, w, y).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  full = temp_bytes(logprobs.full_logprobs)
  chunked = temp_bytes(lambda h, w, y: logprobs.chunked_logprobs(h, w, y, token_chunk=256,
                                                                 vocab_chunk=1024))
  logits_bytes = b * t * v * 4
  assert full >= logits_bytes, (full, logits_bytes)
  assert chunked < logits_bytes / 4, (chunked, full)
  # Below the keep budget the logits are a residual; one byte above it, the recomputing form;
  # a chunked vocabulary never keeps them.
  kept = temp_bytes(lambda h, w, y: logprobs.chunked_logprobs(
      h, w, y, token_chunk=256, keep_logits_bytes=logits_bytes))
  over = temp_bytes(lambda h, w, y: logprobs.chunked_logprobs(
      h, w, y, token_chunk=256, keep_logits_bytes=logits_bytes - 1))
  assert kept >= logits_bytes and over < kept, (kept, over)
  never = temp_bytes(lambda h, w, y: logprobs.chunked_logprobs(
      h, w, y, token_chunk=256, vocab_chunk=1024, keep_logits_bytes=2 * logits_bytes))
  assert never < logits_bytes / 4, never
