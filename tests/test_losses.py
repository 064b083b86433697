"""Policy and JSD losses against an independent float64 NumPy implementation (values and gradients)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zppo_jax.rl import losses

B, T = 3, 7


def _np_policy_loss(lp, old, adv, mask, *, clip_low=0.2, clip_high=0.28, dual_clip=10.0,
                    agg="token_mean", max_len=None, segment_ids=None, ref=None, kl_coef=0.0,
                    kl_estimator="k3", sampler=None, tis_cap=None):
  """Token-by-token loops, written from the formulas in the paper, not from the library."""
  adv = np.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, lp.shape)
  seg = np.ones(lp.shape, int) if segment_ids is None else segment_ids
  per_token = {}
  for b, t in itertools.product(range(lp.shape[0]), range(lp.shape[1])):
    if mask[b, t] == 0:
      continue
    a, r = adv[b, t], np.exp(lp[b, t] - old[b, t])
    loss = max(-a * r, -a * min(max(r, 1 - clip_low), 1 + clip_high))
    if dual_clip is not None and a < 0:
      loss = min(loss, -dual_clip * a)
    if tis_cap is not None:
      loss *= min(np.exp(old[b, t] - sampler[b, t]), tis_cap)
    if kl_coef:
      d = lp[b, t] - ref[b, t]
      kl = {"k1": d, "k2": 0.5 * d * d, "k3": np.exp(-d) - 1 + d}[kl_estimator]
      loss += kl_coef * kl
    per_token[(b, t)] = loss
  if not per_token:
    return 0.0
  if agg == "token_mean":
    return sum(per_token.values()) / len(per_token)
  seqs = {}
  for (b, t), loss in per_token.items():
    seqs.setdefault((b, seg[b, t]), []).append(loss)
  if agg == "seq_mean_token_mean":
    return np.mean([np.mean(v) for v in seqs.values()])
  return np.mean([np.sum(v) / max_len for v in seqs.values()])


def _finite_diff(fn, x, eps=1e-6):
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += eps
    down[idx] -= eps
    grad[idx] = (fn(up) - fn(down)) / (2 * eps)
  return grad


def _inputs(seed, per_token_adv=False):
  rng = np.random.default_rng(seed)
  old = rng.normal(-2.0, 1.0, (B, T))
  # Log-ratios spread over [-0.6, 0.6] so every branch (inside, clipped low/high, dual) occurs.
  lp = old + rng.uniform(-0.6, 0.6, (B, T))
  adv = rng.normal(0.0, 1.0, (B, T) if per_token_adv else (B,))
  adv[1] = 0.0  # A zero-advantage row contributes no policy gradient.
  mask = (rng.uniform(size=(B, T)) > 0.3).astype(np.float64)
  mask[0, :2] = 0.0
  ref = lp + rng.normal(0.0, 0.3, (B, T))
  sampler = old + rng.normal(0.0, 0.3, (B, T))
  seg = np.array([[1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1], [1, 1, 2, 2, 3, 3, 3]])
  return lp, old, adv, mask, ref, sampler, seg


CASES = [
    dict(),
    dict(dual_clip=None),
    dict(dual_clip=1.5),
    dict(clip_low=0.1, clip_high=0.1),
    dict(agg="seq_mean_token_mean"),
    dict(agg="seq_mean_token_mean", segment_ids=True),
    dict(agg="seq_mean_token_sum_norm", max_len=16),
    dict(agg="seq_mean_token_sum_norm", max_len=16, segment_ids=True),
    dict(kl_coef=0.1, kl_estimator="k1"),
    dict(kl_coef=0.1, kl_estimator="k2"),
    dict(kl_coef=0.1, kl_estimator="k3"),
    dict(tis_cap=1.2),
    dict(per_token_adv=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_policy_loss_value_and_grad_match_numpy(case):
  case = dict(case)
  lp, old, adv, mask, ref, sampler, seg = _inputs(0, case.pop("per_token_adv", False))
  seg_arg = seg if case.pop("segment_ids", False) else None
  kw = dict(case, segment_ids=seg_arg, ref=ref, sampler=sampler)
  want = _np_policy_loss(lp, old, adv, mask, **kw)
  want_grad = _finite_diff(lambda x: _np_policy_loss(x, old, adv, mask, **kw), lp)

  jkw = dict(case, segment_ids=None if seg_arg is None else jnp.asarray(seg_arg),
             ref_logprobs=jnp.asarray(ref, jnp.float32),
             sampler_logprobs=jnp.asarray(sampler, jnp.float32))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  fn = lambda x: losses.policy_loss(x, f32(old), f32(adv), f32(mask), **jkw)
  (got, metrics), got_grad = jax.value_and_grad(fn, has_aux=True)(f32(lp))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got_grad, want_grad, atol=1e-5, rtol=1e-5)
  assert np.all(np.asarray(got_grad)[mask == 0] == 0)
  assert np.all(np.asarray(got_grad)[1] == 0) or case.get("kl_coef")  # zero-advantage row
  assert set(metrics) >= {"clip_low_frac", "clip_high_frac", "approx_kl", "ratio_mean"}


def test_clip_metrics_and_dual_clip_branch():
  old = jnp.zeros((1, 4))
  lp = jnp.log(jnp.array([[0.5, 1.5, 4.0, 1.0]]))
  adv = jnp.array([[1.0, 1.0, -1.0, 1.0]])
  mask = jnp.ones((1, 4))
  loss, m = losses.policy_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
  # Tokens: ratio 0.5 unclipped (A>0 takes min(r, clipped)=r), 1.5 clipped high, 4.0 dual-clipped.
  np.testing.assert_allclose(loss, (-0.5 - 1.28 + 3.0 - 1.0) / 4, atol=1e-6)
  np.testing.assert_allclose(m["clip_high_frac"], 0.25, atol=1e-6)
  np.testing.assert_allclose(m["dual_clip_frac"], 0.25, atol=1e-6)
  np.testing.assert_allclose(m["clip_low_frac"], 0.0, atol=1e-6)
  g = jax.grad(lambda x: losses.policy_loss(x, old, adv, mask, dual_clip=3.0)[0])(lp)
  np.testing.assert_allclose(g, [[-0.5 / 4, 0.0, 0.0, -1.0 / 4]], atol=1e-6)


def test_token_weights_sum_over_micro_batches_equals_full_loss():
  lp, old, adv, mask, _, _, seg = _inputs(1)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  full, _ = losses.policy_loss(f32(lp), f32(old), f32(adv), f32(mask), agg="seq_mean_token_mean")
  w = losses.token_weights(f32(mask), "seq_mean_token_mean")
  parts = [losses.policy_loss(f32(lp[i:i + 1]), f32(old[i:i + 1]), f32(adv[i:i + 1]),
                              f32(mask[i:i + 1]), weights=w[i:i + 1])[0] for i in range(B)]
  np.testing.assert_allclose(sum(parts), full, atol=1e-6)


def test_empty_mask_gives_zero_loss_and_bad_options_raise():
  z = jnp.zeros((2, 3))
  loss, _ = losses.policy_loss(z, z, jnp.ones(2), z)
  assert float(loss) == 0.0
  with pytest.raises(ValueError, match="max_len"):
    losses.policy_loss(z, z, jnp.ones(2), z, agg="seq_mean_token_sum_norm")
  with pytest.raises(ValueError, match="unknown aggregation"):
    losses.policy_loss(z, z, jnp.ones(2), z, agg="sum")
  with pytest.raises(ValueError, match="dual_clip"):
    losses.policy_loss(z, z, jnp.ones(2), z, dual_clip=0.5)
  with pytest.raises(ValueError, match="ref_logprobs"):
    losses.policy_loss(z, z, jnp.ones(2), z, kl_coef=0.1)
  with pytest.raises(KeyError, match="unknown policy loss"):
    losses.get_policy_loss("nope")
  assert losses.get_policy_loss("ppo") is losses.policy_loss


def _np_jsd(s_logits, t_logits, mask, beta):
  total, n = 0.0, 0
  for idx in np.ndindex(mask.shape):
    if mask[idx] == 0:
      continue
    ps = np.exp(s_logits[idx] - s_logits[idx].max())
    ps /= ps.sum()
    pt = np.exp(t_logits[idx] - t_logits[idx].max())
    pt /= pt.sum()
    m = (1 - beta) * ps + beta * pt
    total += beta * np.sum(pt * np.log(pt / m)) + (1 - beta) * np.sum(ps * np.log(ps / m))
    n += 1
  return total / max(n, 1)


@pytest.mark.parametrize("beta", [0.5, 0.1, 0.9])
def test_jsd_loss_matches_numpy(beta):
  rng = np.random.default_rng(2)
  s = rng.normal(0, 2, (2, 3, 11))
  t = rng.normal(0, 2, (2, 3, 11))
  mask = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
  want = _np_jsd(s, t, mask, beta)
  want_grad = _finite_diff(lambda x: _np_jsd(x, t, mask, beta), s)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  got, got_grad = jax.value_and_grad(
      lambda x: losses.jsd_loss(x, f32(t), f32(mask), beta=beta))(f32(s))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got_grad, want_grad, atol=1e-5, rtol=1e-5)


def test_jsd_is_zero_for_equal_distributions_and_beta_checked():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 2, 5)), jnp.float32)
  np.testing.assert_allclose(losses.jsd_per_token(x, x + 3.0), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="beta"):
    losses.jsd_per_token(x, x, beta=1.0)


def test_entropy_from_logits():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
  np.testing.assert_allclose(losses.entropy_from_logits(logits), [1.5 * np.log(2)], atol=1e-6)
