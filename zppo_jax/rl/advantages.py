"""Group advantages for the GRPO family (shared/ZPPO_SPEC.md §3), in jax.numpy.

Two steps (REINFORCE++ style):
  1. Per group g: A′ = r − r̄_g (no std division).
  2. Over the batch: A = (A′ − μ_S) / (σ_S + ε), where S is
       * ``"without_zero"`` (default): the rollouts of non-trivial groups (reward std > 0);
       * ``"with_zero"``: every rollout;
     and ``"none"`` skips this step (A = A′). Rollouts of trivial groups keep A = 0 in every mode.
μ_S and σ_S are taken over the whole rollout step (call this once per step, before the I-way
mini-batch split). Plain, BCQ and NCQ rollouts of one question are separate groups: key groups by
``(question id, kind)`` with `group_ids_from_keys`.

Works inside and outside `jax.jit` (``norm`` and ``num_groups`` are static).
"""
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

NORMS = ("without_zero", "with_zero", "none")


def group_ids_from_keys(keys: Sequence[Hashable]) -> np.ndarray:
  """Dense group ids, in order of first appearance, from per-rollout keys.

  Args:
    keys: one key per rollout, e.g. ``(qid, "plain")``, ``(qid, "bcq")``, ``(qid, "ncq")``: two
      rollouts share a baseline exactly when their keys are equal.

  Returns:
    int32[N] ids in [0, number of distinct keys).
  """
  ids: dict[Hashable, int] = {}
  return np.asarray([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int32)


def compute_advantages(rewards: jax.Array, group_ids: jax.Array, norm: str = "without_zero",
                       *, mask: jax.Array | None = None, num_groups: int | None = None,
                       eps: float = 1e-6) -> jax.Array:
  """Computes per-rollout advantages.

  Args:
    rewards: float[N] rewards.
    group_ids: int[N] group of each rollout, in [0, num_groups).
    norm: "without_zero" (default), "with_zero" or "none".
    mask: bool[N], False for padding rows (they get A = 0 and are in no statistic); None = all.
    num_groups: static upper bound on the group ids (default N).
    eps: ε in the batch normalisation.

  Returns:
    float32[N] advantages; exactly 0 for trivial groups and masked rows.

  Raises:
    ValueError: unknown ``norm``.
  """
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  rewards = jnp.asarray(rewards, jnp.float32)
  group_ids = jnp.asarray(group_ids, jnp.int32)
  n = rewards.shape[0]
  num_groups = n if num_groups is None else num_groups
  valid = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
  w = valid.astype(jnp.float32)

  count = jax.ops.segment_sum(w, group_ids, num_groups)
  total = jax.ops.segment_sum(rewards * w, group_ids, num_groups)
  mean = total / jnp.maximum(count, 1.0)
  centered = (rewards - mean[group_ids]) * w  # A′

  # A group is non-trivial when its rewards differ (max > min): exact, no float-std noise.
  big = jnp.finfo(jnp.float32).max
  gmax = jax.ops.segment_max(jnp.where(valid, rewards, -big), group_ids, num_groups)
  gmin = jax.ops.segment_min(jnp.where(valid, rewards, big), group_ids, num_groups)
  nontrivial = (gmax > gmin)[group_ids] & valid
  centered = jnp.where(nontrivial, centered, 0.0)
  if norm == "none":
    return centered

  in_s = nontrivial if norm == "without_zero" else valid
  s = in_s.astype(jnp.float32)
  size = jnp.maximum(s.sum(), 1.0)
  mu = (centered * s).sum() / size
  sigma = jnp.sqrt((jnp.square(centered - mu) * s).sum() / size)
  return jnp.where(nontrivial, (centered - mu) / (sigma + eps), 0.0)
