"""Policy and distillation losses: pure, jittable; the policy losses and KL estimators by name.

The policy loss is the PPO clipped surrogate the paper trains with (§3 of ZPPO_SPEC.md):

  r_t = exp(log π_θ(y_t) − log π_old(y_t))
  ℓ_t = max(−A_t r_t, −A_t clip(r_t, 1 − ε_low, 1 + ε_high))          (clip-higher)
  ℓ_t = min(ℓ_t, −c A_t)   where A_t < 0                               (dual-clip, c = 10)

optionally weighted by a truncated importance weight min(π_old / π_sampler, C) when the old
log-probs are recomputed by the learner but the rollouts came from a sampler whose numerics differ,
and optionally plus β_KL · KL_t(π_θ ‖ π_ref) with the k1 / k2 / k3 estimators. The per-token losses
are reduced by an aggregation (`token_mean`, the paper's; `seq_mean_token_mean`;
`seq_mean_token_sum_norm`, Dr. GRPO).

Every aggregation is a weighted sum Σ_t w_t ℓ_t with weights that depend only on the mask (and
segment layout), so `token_weights` can be computed once over a whole mini-batch and the loss summed
over micro-batches: that is how the learner keeps gradient accumulation exact.

The distillation baselines use the generalised Jensen-Shannon divergence per token,

  M = (1 − β) P_S + β P_T,   JSD_β = β KL(P_T ‖ M) + (1 − β) KL(P_S ‖ M),

which is the symmetric JSD at β = 0.5. The learner computes it vocabulary-chunked from hidden
states (`zppo_jax.rl.logprobs.chunked_jsd`); `jsd_loss` is the same loss on full logits, its
reference.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

POLICY_LOSSES: dict[str, Callable] = {}
KL_ESTIMATORS: dict[str, Callable[[Array, Array], Array]] = {}
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def register(registry: dict[str, Callable], name: str):
  """Decorator adding a function to `registry` under `name` (names are unique)."""

  def wrap(fn):
    if name in registry:
      raise ValueError(f"{name!r} is already registered")
    registry[name] = fn
    return fn

  return wrap


def get_policy_loss(name: str) -> Callable:
  """Returns the policy loss registered as `name`."""
  if name not in POLICY_LOSSES:
    raise KeyError(f"unknown policy loss {name!r}; known: {sorted(POLICY_LOSSES)}")
  return POLICY_LOSSES[name]


# --- KL estimators of KL(π_θ ‖ π_ref) from samples of π_θ (Schulman's k1, k2, k3). ---


@register(KL_ESTIMATORS, "k1")
def kl_k1(logprobs: Array, ref_logprobs: Array) -> Array:
  """log π_θ − log π_ref: unbiased, high variance, can be negative."""
  return logprobs - ref_logprobs


@register(KL_ESTIMATORS, "k2")
def kl_k2(logprobs: Array, ref_logprobs: Array) -> Array:
  """½ (log π_θ − log π_ref)²: biased, low variance, non-negative."""
  return 0.5 * jnp.square(logprobs - ref_logprobs)


@register(KL_ESTIMATORS, "k3")
def kl_k3(logprobs: Array, ref_logprobs: Array) -> Array:
  """π_ref/π_θ − 1 − log(π_ref/π_θ): unbiased, non-negative."""
  log_ratio = ref_logprobs - logprobs
  return jnp.exp(log_ratio) - 1.0 - log_ratio


# --- Aggregation as per-token weights. ---


def _segment_token_counts(mask: Array, segment_ids: Array) -> tuple[Array, Array]:
  """Valid-token count of each token's sequence, and the number of sequences with a valid token.

  Args:
    mask: float[B, T], 1 for tokens in the loss.
    segment_ids: int32[B, T]; tokens of one row with the same id form one sequence.

  Returns:
    (counts float[B, T], num_sequences float[]).
  """
  b, t = mask.shape
  # A global id per (row, segment); ids are < T + 1 in any packed row, so this never collides.
  global_ids = (jnp.arange(b, dtype=jnp.int32)[:, None] * (t + 1) + segment_ids).reshape(-1)
  num = b * (t + 1)
  per_segment = jax.ops.segment_sum(mask.reshape(-1), global_ids, num_segments=num)
  counts = per_segment[global_ids].reshape(b, t)
  return counts, jnp.sum(per_segment > 0).astype(mask.dtype)


def token_weights(mask: Array, agg: str = "token_mean", *, segment_ids: Array | None = None,
                  max_len: int | None = None) -> Array:
  """Per-token weights w such that the aggregated loss is Σ w_t ℓ_t.

  Args:
    mask: float[B, T], 1 for tokens in the loss, 0 otherwise.
    agg: `token_mean` (Σ ℓ / number of valid tokens), `seq_mean_token_mean` (mean over sequences of
      each sequence's token mean) or `seq_mean_token_sum_norm` (Dr. GRPO: mean over sequences of each
      sequence's token sum divided by the constant `max_len`).
    segment_ids: int32[B, T] for packed rows (sequences are the segments); None means one sequence
      per row. Only used by the sequence-level aggregations.
    max_len: the constant normaliser of `seq_mean_token_sum_norm` (the maximum response length).

  Returns:
    float32[B, T] weights; all zero when the mask is empty.
  """
  mask = mask.astype(jnp.float32)
  if agg == "token_mean":
    return mask / jnp.maximum(jnp.sum(mask), 1.0)
  if agg not in AGGREGATIONS:
    raise ValueError(f"unknown aggregation {agg!r}; known: {AGGREGATIONS}")
  if segment_ids is None:
    segment_ids = jnp.ones(mask.shape, jnp.int32)
  counts, num_seqs = _segment_token_counts(mask, segment_ids)
  num_seqs = jnp.maximum(num_seqs, 1.0)
  if agg == "seq_mean_token_mean":
    return mask / jnp.maximum(counts, 1.0) / num_seqs
  if max_len is None or max_len <= 0:
    raise ValueError(f"agg='seq_mean_token_sum_norm' needs a positive max_len, got {max_len!r}")
  return mask / float(max_len) / num_seqs


def _broadcast_advantages(advantages: Array, shape: tuple[int, ...]) -> Array:
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  return jnp.broadcast_to(advantages, shape).astype(jnp.float32)


def _masked_mean(x: Array, mask: Array) -> Array:
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@register(POLICY_LOSSES, "ppo")
def policy_loss(
    logprobs: Array,
    old_logprobs: Array,
    advantages: Array,
    mask: Array,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 10.0,
    agg: str = "token_mean",
    max_len: int | None = None,
    segment_ids: Array | None = None,
    ref_logprobs: Array | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    sampler_logprobs: Array | None = None,
    tis_cap: float | None = None,
    weights: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
  """PPO clipped surrogate with clip-higher, dual-clip, optional KL and truncated IS.

  Args:
    logprobs: float[B, T] log π_θ of the chosen tokens (differentiated).
    old_logprobs: float[B, T] log π_old (not differentiated).
    advantages: float[B] (one per sequence/row) or float[B, T].
    mask: float[B, T], 1 for response tokens in the loss.
    clip_low: ε_low, the ratio is clipped below at 1 − ε_low.
    clip_high: ε_high, the ratio is clipped above at 1 + ε_high (clip-higher).
    dual_clip: c > 1; for A < 0 the per-token loss is capped at −c·A. None disables it.
    agg: aggregation name (see `token_weights`).
    max_len: normaliser of `seq_mean_token_sum_norm`.
    segment_ids: int32[B, T] of packed rows, for the sequence-level aggregations.
    ref_logprobs: float[B, T] log π_ref, needed when kl_coef != 0.
    kl_coef: β_KL, weight of the per-token KL(π_θ ‖ π_ref) added to the loss (0 in the paper).
    kl_estimator: `k1`, `k2` or `k3`.
    sampler_logprobs: float[B, T] log-probs the sampler reported; with `tis_cap` they give the
      truncated importance weight min(exp(old − sampler), tis_cap) on every token's loss.
    tis_cap: C of the truncated importance weight; None disables it.
    weights: float[B, T] precomputed `token_weights` (overrides `agg`), used when a mini-batch is
      split into micro-batches.

  Returns:
    (loss float32[], metrics) where metrics hold token means of the clip fractions (`clip_low_frac`,
    `clip_high_frac`, `dual_clip_frac`), `approx_kl` (k3 of π_old vs π_θ), `ratio_mean`,
    `ratio_min`, `ratio_max`, `pg_loss`, and `kl` / `tis_weight_mean` when those are on.
  """
  if clip_low < 0 or clip_high < 0:
    raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low}, {clip_high}")
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
  mask = mask.astype(jnp.float32)
  logprobs = logprobs.astype(jnp.float32)
  old_logprobs = jax.lax.stop_gradient(old_logprobs.astype(jnp.float32))
  adv = jax.lax.stop_gradient(_broadcast_advantages(advantages, logprobs.shape))
  if weights is None:
    weights = token_weights(mask, agg, segment_ids=segment_ids, max_len=max_len)
  weights = jax.lax.stop_gradient(weights.astype(jnp.float32))

  # Masked tokens may hold garbage log-probs (padding): keep their ratio at 1 so nothing overflows.
  log_ratio = jnp.where(mask > 0, logprobs - old_logprobs, 0.0)
  ratio = jnp.exp(log_ratio)
  loss_unclipped = -adv * ratio
  loss_clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  pg = jnp.maximum(loss_unclipped, loss_clipped)
  clipped = loss_clipped > loss_unclipped
  metrics = {
      "clip_low_frac": _masked_mean((clipped & (ratio < 1.0)).astype(jnp.float32), mask),
      "clip_high_frac": _masked_mean((clipped & (ratio > 1.0)).astype(jnp.float32), mask),
  }
  if dual_clip is not None:
    dual_bound = -adv * dual_clip
    dual_active = (adv < 0) & (pg > dual_bound)
    pg = jnp.where(adv < 0, jnp.minimum(pg, dual_bound), pg)
    metrics["dual_clip_frac"] = _masked_mean(dual_active.astype(jnp.float32), mask)

  if tis_cap is not None:
    if sampler_logprobs is None:
      raise ValueError("tis_cap is set but sampler_logprobs is None")
    tis = jnp.exp(jnp.where(mask > 0, old_logprobs - sampler_logprobs.astype(jnp.float32), 0.0))
    tis = jax.lax.stop_gradient(jnp.minimum(tis, tis_cap))
    pg = pg * tis
    metrics["tis_weight_mean"] = _masked_mean(tis, mask)

  per_token = pg
  metrics["pg_loss"] = jnp.sum(weights * pg)
  if kl_coef != 0.0:
    if ref_logprobs is None:
      raise ValueError("kl_coef != 0 needs ref_logprobs")
    if kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"unknown kl_estimator {kl_estimator!r}; known: {sorted(KL_ESTIMATORS)}")
    ref = jax.lax.stop_gradient(ref_logprobs.astype(jnp.float32))
    kl = KL_ESTIMATORS[kl_estimator](logprobs, jnp.where(mask > 0, ref, logprobs))
    per_token = per_token + kl_coef * kl
    metrics["kl"] = _masked_mean(kl, mask)

  loss = jnp.sum(weights * jnp.where(mask > 0, per_token, 0.0))
  metrics["approx_kl"] = _masked_mean(kl_k3(logprobs, old_logprobs), mask)
  metrics["ratio_mean"] = _masked_mean(ratio, mask)
  metrics["ratio_min"] = jnp.min(jnp.where(mask > 0, ratio, jnp.inf))
  metrics["ratio_max"] = jnp.max(jnp.where(mask > 0, ratio, -jnp.inf))
  metrics = {k: jax.lax.stop_gradient(v) for k, v in metrics.items()}
  return loss, metrics


# --- Distillation. ---


def jsd_per_token(student_logits: Array, teacher_logits: Array, beta: float = 0.5) -> Array:
  """Generalised JSD between the student and teacher next-token distributions.

  Args:
    student_logits: float[B, T, V] (differentiated).
    teacher_logits: float[B, T, V] (treated as constant).
    beta: β in (0, 1); M = (1 − β) P_S + β P_T.

  Returns:
    float32[B, T] JSD_β per token, in nats.
  """
  if not 0.0 < beta < 1.0:
    raise ValueError(f"beta must be in (0, 1), got {beta}")
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  log_t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32), axis=-1)
  log_m = jnp.logaddexp(log_s + jnp.log1p(-beta), log_t + jnp.log(beta))
  kl_t = jnp.sum(jnp.exp(log_t) * (log_t - log_m), axis=-1)
  kl_s = jnp.sum(jnp.exp(log_s) * (log_s - log_m), axis=-1)
  return beta * kl_t + (1.0 - beta) * kl_s


def jsd_loss(student_logits: Array, teacher_logits: Array, mask: Array, beta: float = 0.5, *,
             weights: Array | None = None) -> Array:
  """Token-mean generalised JSD (the Off/On-Distill baselines' loss) on full logits.

  Args:
    student_logits: float[B, T, V].
    teacher_logits: float[B, T, V].
    mask: float[B, T], 1 for tokens in the loss.
    beta: β of `jsd_per_token`.
    weights: float[B, T] precomputed token weights (overrides the token mean).

  Returns:
    float32[] loss.
  """
  mask = mask.astype(jnp.float32)
  if weights is None:
    weights = token_weights(mask, "token_mean")
  jsd = jsd_per_token(student_logits, teacher_logits, beta)
  return jnp.sum(jax.lax.stop_gradient(weights) * jnp.where(mask > 0, jsd, 0.0))


def entropy_from_logits(logits: Array) -> Array:
  """Entropy of softmax(logits) along the last axis: float[..., V] -> float32[...]."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
