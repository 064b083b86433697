"""Sampling filters: distribution of drawn tokens, filter semantics, log-probs, no recompiles."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zppo_jax.sampling import filters

_LOGITS = np.array([2.0, 1.5, 0.3, 0.0, -0.5, -3.0], np.float32)
_ROWS = 20000
# Chi-square critical value at p = 1e-3 for up to 5 degrees of freedom is 20.5; use it for all.
_CHI2_CRIT = 20.5

_TRACES = {"n": 0}


@functools.partial(jax.jit)
def _sample(logits, seed, knobs, generated_mask):
  _TRACES["n"] += 1
  keys = filters.row_keys(jax.random.key(seed), jnp.arange(logits.shape[0]), 3)
  return filters.sample_step(logits, keys, knobs, generated_mask)


def _draw(rows=_ROWS, seed=0, generated=(), **knobs):
  logits = jnp.broadcast_to(jnp.asarray(_LOGITS), (rows, _LOGITS.size))
  mask = np.zeros((rows, _LOGITS.size), bool)
  mask[:, list(generated)] = True
  return _sample(logits, seed, filters.SamplingKnobs.create(rows, **knobs), jnp.asarray(mask))


def _expected(logits, keep=None, temperature=1.0):
  z = np.asarray(logits, np.float64) / temperature
  if keep is not None:
    z = np.where(keep, z, -np.inf)
  p = np.exp(z - z.max())
  return p / p.sum()


def _chi_square(tokens, probs):
  counts = np.bincount(np.asarray(tokens), minlength=probs.size)
  support = probs > 0
  assert counts[~support].sum() == 0, f"sampled filtered tokens: {counts}"
  expected = probs[support] * len(tokens)
  return float(((counts[support] - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("knobs, keep", [
    (dict(temperature=1.0), None),
    (dict(temperature=0.6), None),
    (dict(temperature=1.0, top_k=3), [1, 1, 1, 0, 0, 0]),
    # Probabilities at T=1: .497 .301 .091 .067 .041 .003; the mass before each token is 0, .497,
    # .798, .889, ...: top-p .85 keeps three tokens, .7 two, .45 one.
    (dict(temperature=1.0, top_p=0.85), [1, 1, 1, 0, 0, 0]),
    (dict(temperature=1.0, top_p=0.7), [1, 1, 0, 0, 0, 0]),
    (dict(temperature=1.0, top_p=0.45), [1, 0, 0, 0, 0, 0]),
    # min-p 0.1: keep p >= 0.1 * p_max, i.e. logit >= 2 + log(0.1) = -0.30.
    (dict(temperature=1.0, min_p=0.1), [1, 1, 1, 1, 0, 0]),
])
def test_sampled_tokens_follow_the_filtered_softmax(knobs, keep):
  token, sampling_logprob, policy_logprob = _draw(**knobs)
  probs = _expected(_LOGITS, None if keep is None else np.array(keep, bool), knobs["temperature"])
  assert _chi_square(token, probs) < _CHI2_CRIT
  token = np.asarray(token)
  np.testing.assert_allclose(np.asarray(sampling_logprob), np.log(probs[token]), rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(policy_logprob), np.log(_expected(_LOGITS)[token]),
                             rtol=0, atol=1e-5)


def test_the_chi_square_check_can_fail():
  token, _, _ = _draw(temperature=1.0)
  assert _chi_square(token, _expected(_LOGITS, temperature=0.6)) > _CHI2_CRIT


def test_top_k_then_top_p_renormalises_before_the_nucleus():
  # After top-k 2 the renormalised mass of token 0 is .622: top-p .65 keeps two tokens and top-p .6
  # keeps one (on the full distribution, where token 0 has .497, top-p .6 would keep two).
  token, _, _ = _draw(rows=4000, temperature=1.0, top_k=2, top_p=0.65)
  assert set(np.unique(np.asarray(token))) == {0, 1}
  token, _, _ = _draw(rows=4000, temperature=1.0, top_k=2, top_p=0.6)
  assert set(np.unique(np.asarray(token))) == {0}


def test_presence_penalty_lowers_generated_tokens_only():
  penalty = 1.5
  token, sampling_logprob, policy_logprob = _draw(temperature=1.0, presence_penalty=penalty,
                                                  generated=(0, 2))
  penalised = _LOGITS.copy()
  penalised[[0, 2]] -= penalty
  probs = _expected(penalised)
  assert _chi_square(token, probs) < _CHI2_CRIT
  token = np.asarray(token)
  np.testing.assert_allclose(np.asarray(sampling_logprob), np.log(probs[token]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(policy_logprob), np.log(_expected(_LOGITS)[token]),
                             atol=1e-5)


def test_greedy_is_the_argmax_of_the_penalised_logits():
  token, sampling_logprob, policy_logprob = _draw(rows=8, temperature=0.0)
  np.testing.assert_array_equal(np.asarray(token), 0)
  np.testing.assert_array_equal(np.asarray(sampling_logprob), 0.0)
  np.testing.assert_allclose(np.asarray(policy_logprob), np.log(_expected(_LOGITS)[0]), atol=1e-6)
  token, _, _ = _draw(rows=8, temperature=0.0, presence_penalty=1.0, generated=(0,))
  np.testing.assert_array_equal(np.asarray(token), 1)


def test_per_row_knobs_and_reproducibility():
  rows = 8
  temperature = np.array([0.0, 1.0] * 4, np.float32)
  a = _draw(rows=rows, seed=5, temperature=temperature, top_k=np.array([0, 1] * 4))
  np.testing.assert_array_equal(np.asarray(a[0]), 0)  # greedy rows and top-1 rows
  b = _draw(rows=rows, seed=5, temperature=1.0)
  c = _draw(rows=rows, seed=5, temperature=1.0)
  np.testing.assert_array_equal(np.asarray(b[0]), np.asarray(c[0]))


def test_changing_knobs_does_not_recompile():
  _draw(rows=64, temperature=1.0)
  before = _TRACES["n"]
  for knobs in (dict(temperature=0.3), dict(temperature=0.0), dict(top_p=0.9, top_k=20),
                dict(min_p=0.05, presence_penalty=1.5)):
    _draw(rows=64, seed=1, **knobs)
  assert _TRACES["n"] == before


def test_inverse_cdf_across_blocks_of_a_larger_vocabulary():
  # 300 tokens span three CDF blocks (the last one partial); bin tokens into tens for the test.
  vocab, rows = 300, 20000
  logits = np.array(jax.random.normal(jax.random.key(7), (vocab,)), np.float32)
  logits[250:] -= 2.0  # make the partial last block lighter, but not negligible
  batch = jnp.broadcast_to(jnp.asarray(logits), (rows, vocab))
  token, sampling_logprob, _ = _sample(batch, 11, filters.SamplingKnobs.create(rows, top_k=150),
                                       jnp.zeros((rows, vocab), bool))
  keep = logits >= np.sort(logits)[-150]
  probs = _expected(logits, keep)
  token = np.asarray(token)
  assert keep[token].all()
  bins = np.bincount(token // 30, minlength=10)
  expected = np.bincount(np.arange(vocab) // 30, weights=probs, minlength=10) * rows
  assert float(((bins - expected) ** 2 / expected).sum()) < 27.9  # chi-square df 9, p = 1e-3
  np.testing.assert_allclose(np.asarray(sampling_logprob), np.log(probs[token]), atol=1e-5)
