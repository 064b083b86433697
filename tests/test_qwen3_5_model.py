"""Whole-model parity with transformers' `Qwen3_5ForCausalLM`, padding, packing and the cache."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
import torch
from flax import nnx

from zppo_jax.models.qwen3_5 import config as config_lib
from zppo_jax.models.qwen3_5.cache import init_cache
from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM

import test_qwen3_5_reference as ref

CONFIGS = {
    "untied": config_lib.tiny(),
    "tied": config_lib.tiny(tie_word_embeddings=True, mrope_section=(2, 0, 0)),
    # No repeating cycle: one cycle of 5 layers, run unrolled.
    "irregular": config_lib.tiny(
        num_hidden_layers=5, scan_layers=False,
        layer_types=("full_attention", "linear_attention", "linear_attention", "full_attention",
                     "linear_attention")),
}
B, T = 2, 12


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
  cfg = CONFIGS[request.param]
  theirs = ref.torch_model(cfg, seed=1)
  ours = Qwen3_5ForCausalLM(cfg, rngs=nnx.Rngs(0))
  ref.copy_torch_weights(theirs, ours, len(cfg.cycle))
  return cfg, theirs, ours


@pytest.fixture(scope="module")
def untied():
  cfg = CONFIGS["untied"]
  theirs = ref.torch_model(cfg, seed=2)
  ours = Qwen3_5ForCausalLM(cfg, rngs=nnx.Rngs(0))
  ref.copy_torch_weights(theirs, ours, len(cfg.cycle))
  return cfg, theirs, ours


logits_fn = nnx.jit(lambda model, ids, mask: model(ids, mask))
forward_fn = nnx.jit(lambda model, ids, mask, cache: model.forward(
    input_ids=ids, attention_mask=mask, cache=cache))
packed_fn = nnx.jit(lambda model, ids, segments: model.logits(
    model.forward(input_ids=ids, segment_ids=segments)[0]))


def _ids(cfg, shape, seed=0):
  return np.random.default_rng(seed).integers(0, cfg.vocab_size, shape).astype(np.int32)


def _torch_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def test_logits_match_transformers(pair):
  cfg, theirs, ours = pair
  ids = _ids(cfg, (B, T))
  got = logits_fn(ours, jnp.asarray(ids), jnp.ones((B, T), jnp.int32))
  assert got.shape == (B, T, cfg.vocab_size) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _torch_logits(theirs, ids), atol=1e-4, rtol=0)


def test_scanned_equals_unrolled(untied):
  cfg, _, ours = untied
  unrolled = Qwen3_5ForCausalLM(cfg.replace(scan_layers=False), rngs=nnx.Rngs(0))
  nnx.update(unrolled, nnx.state(ours))
  ids = jnp.asarray(_ids(cfg, (B, T)))
  np.testing.assert_allclose(logits_fn(unrolled, ids, jnp.ones((B, T), jnp.int32)), logits_fn(ours, ids, jnp.ones((B, T), jnp.int32)),
                             atol=1e-5, rtol=0)


def _padded(ids, lengths, left):
  """Rows of ``ids`` cut to ``lengths`` and padded with junk on the left or the right."""
  out = np.full(ids.shape, 3, np.int32)
  mask = np.zeros(ids.shape, np.int32)
  width = ids.shape[1]
  for row, n in enumerate(lengths):
    sl = slice(width - n, width) if left else slice(0, n)
    out[row, sl] = ids[row, :n]
    mask[row, sl] = 1
  return out, mask


@pytest.mark.parametrize("left", [True, False])
def test_padding_does_not_change_real_tokens(untied, left):
  cfg, theirs, ours = untied
  ids = _ids(cfg, (B, T), seed=3)
  lengths = (T - 4, T - 1)
  padded, mask = _padded(ids, lengths, left)
  got = np.asarray(logits_fn(ours, jnp.asarray(padded), jnp.asarray(mask)))
  for row, n in enumerate(lengths):
    want = _torch_logits(theirs, ids[row:row + 1, :n])[0]
    np.testing.assert_allclose(got[row][mask[row] == 1], want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("left", [True, False])
def test_prefill_then_decode_equals_full_forward(untied, left):
  cfg, _, ours = untied
  ids = _ids(cfg, (B, T), seed=4)
  full = np.asarray(logits_fn(ours, jnp.asarray(ids), jnp.ones((B, T), jnp.int32)))
  prompt = 7
  lengths = (prompt - 2, prompt)           # row 0 has a shorter prompt, padded
  padded, mask = _padded(ids[:, :prompt], lengths, left)
  cache = init_cache(cfg, B, 16)
  hidden, cache = forward_fn(ours, jnp.asarray(padded), jnp.asarray(mask), cache)
  prefill = np.asarray(ours.logits(hidden))
  for row, n in enumerate(lengths):
    np.testing.assert_allclose(prefill[row][mask[row] == 1], full[row, :n], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(cache.next_position, lengths)
  # Decode the rest of row 1's sequence one token at a time; row 0 continues from its own prompt.
  steps = [np.asarray(ids[:, prompt + i:prompt + i + 1]) for i in range(T - prompt)]
  for i, step in enumerate(steps):
    step = step.copy()
    step[0] = ids[0, lengths[0] + i]
    hidden, cache = forward_fn(ours, jnp.asarray(step), jnp.ones((B, 1), jnp.int32), cache)
    got = np.asarray(ours.logits(hidden))[:, 0]
    np.testing.assert_allclose(got[1], full[1, prompt + i], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[0], full[0, lengths[0] + i], atol=1e-4, rtol=0)


def test_cache_rows_follow_take_and_repeat(untied):
  cfg, _, ours = untied
  ids = jnp.asarray(_ids(cfg, (B, 7), seed=5))
  cache = init_cache(cfg, B, 16)
  _, cache = forward_fn(ours, ids, jnp.ones((B, 7), jnp.int32), cache)
  swapped = cache.take_rows(jnp.asarray([1, 0])).repeat_rows(2)
  assert swapped.kv_mask.shape == (4, 16)
  nxt = jnp.asarray(_ids(cfg, (B, 1), seed=6))
  h_ref, _ = forward_fn(ours, nxt, jnp.ones((B, 1), jnp.int32), cache)
  h, _ = forward_fn(ours, jnp.repeat(nxt[::-1], 2, axis=0), jnp.ones((4, 1), jnp.int32), swapped)
  np.testing.assert_allclose(h, jnp.repeat(h_ref[::-1], 2, axis=0), atol=1e-5, rtol=0)


def test_packed_segments_equal_separate_sequences(untied):
  cfg, _, ours = untied
  ids = _ids(cfg, (B, T), seed=7)
  segments = np.asarray([[1] * 5 + [2] * 4 + [3] * 3, [1] * 9 + [0] * 3], np.int32)
  got = np.asarray(packed_fn(ours, jnp.asarray(ids), jnp.asarray(segments)))
  pieces = [(row, segments[row] == seg) for row in range(B) for seg in set(segments[row]) - {0}]
  # Each sequence alone, right-padded to T (padding invariance is tested above), two per call.
  for batch in (pieces[:2], pieces[2:]):
    alone, mask = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
    for i, (row, where) in enumerate(batch):
      alone[i, :where.sum()], mask[i, :where.sum()] = ids[row, where], 1
    want = np.asarray(logits_fn(ours, jnp.asarray(alone), jnp.asarray(mask)))
    for i, (row, where) in enumerate(batch):
      np.testing.assert_allclose(got[row, where], want[i, :where.sum()], atol=1e-4, rtol=0)


def test_inputs_embeds_and_explicit_positions(untied):
  cfg, _, ours = untied
  ids = jnp.asarray(_ids(cfg, (B, T), seed=8))
  want = logits_fn(ours, ids, None)
  positions = jnp.broadcast_to(jnp.arange(T), (3, B, T))
  got = nnx.jit(lambda model, embeds, pos: model.logits(model.forward(
      inputs_embeds=embeds, positions=pos)[0]))(ours, ours.embed(ids), positions)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  with pytest.raises(ValueError, match="exactly one"):
    ours.forward(input_ids=ids, inputs_embeds=ours.embed(ids))
  with pytest.raises(ValueError, match="segment_ids"):
    ours.forward(input_ids=ids, segment_ids=jnp.ones_like(ids), cache=init_cache(cfg, B, T))


def test_bfloat16_compute_runs_close_to_float32(untied):
  cfg, _, ours = untied
  bf16 = Qwen3_5ForCausalLM(cfg.replace(dtype=jnp.bfloat16), rngs=nnx.Rngs(0))
  nnx.update(bf16, nnx.state(ours))
  ids = jnp.asarray(_ids(cfg, (B, T), seed=9))
  want = logits_fn(ours, ids, jnp.ones((B, T), jnp.int32))
  got = logits_fn(bf16, ids, jnp.ones((B, T), jnp.int32))
  assert got.dtype == jnp.float32
  # bf16 has 8 mantissa bits; this is a smoke test of the dtype plumbing, not a parity test.
  assert np.abs(np.asarray(got) - np.asarray(want)).max() < 0.05 * np.abs(np.asarray(want)).max()
