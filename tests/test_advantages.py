"""Group advantages (spec §3): centering, normalisation without/with zero groups, none; keys."""
import functools

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import given, settings

from zppo_jax.rl.advantages import compute_advantages, group_ids_from_keys

N = 16  # One padded shape for every jitted call, so each norm compiles once.


@pytest.fixture(scope="module")
def jitted():
  return {norm: jax.jit(functools.partial(compute_advantages, norm=norm, num_groups=N))
          for norm in ("without_zero", "with_zero", "none")}


def reference(rewards, groups, norm, eps=1e-6):
  """A plain numpy restatement of spec §3."""
  rewards = np.asarray(rewards, np.float64)
  groups = np.asarray(groups)
  centered = np.zeros_like(rewards)
  nontrivial = np.zeros(len(rewards), bool)
  for g in np.unique(groups):
    idx = groups == g
    centered[idx] = rewards[idx] - rewards[idx].mean()
    nontrivial[idx] = rewards[idx].std() > 0
  if norm == "none":
    return centered
  s = nontrivial if norm == "without_zero" else np.ones(len(rewards), bool)
  if not s.any():
    return np.zeros_like(rewards)
  mu, sigma = centered[s].mean(), centered[s].std()
  return np.where(nontrivial, (centered - mu) / (sigma + eps), 0.0)


def _run(jitted, norm, rewards, groups):
  r, g, mask = _padded(rewards, groups)
  return np.asarray(jitted[norm](r, g, mask=mask))[:len(rewards)]


def test_worked_example(jitted):
  rewards = [1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
  groups = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
  none = _run(jitted, "none", rewards, groups)
  np.testing.assert_allclose(none, [0.75, -0.25, -0.25, -0.25] + [0] * 8, atol=1e-7)
  a = _run(jitted, "without_zero", rewards, groups)
  # S = group 0 only: mean of A' is 0, std is sqrt(3)/4.
  np.testing.assert_allclose(a[:4], np.array([0.75, -0.25, -0.25, -0.25]) / (np.sqrt(3) / 4 + 1e-6),
                             rtol=1e-5)
  assert (a[4:] == 0).all()
  w = _run(jitted, "with_zero", rewards, groups)
  # S = everything: the 8 zeros shrink sigma by sqrt(3).
  sigma = np.sqrt(np.mean(np.square(none)))
  np.testing.assert_allclose(w, none / (sigma + 1e-6), rtol=1e-5)


def test_jit_equals_eager(jitted):
  r, g, mask = _padded([1, 0, 0.5, 1, 1, 0, 2], [0, 0, 0, 1, 1, 2, 2])
  for norm, fn in jitted.items():
    np.testing.assert_allclose(np.asarray(fn(r, g, mask=mask)),
                               np.asarray(compute_advantages(r, g, norm, mask=mask)),
                               rtol=1e-6, atol=1e-7)


def test_unknown_norm():
  with pytest.raises(ValueError, match="norm"):
    compute_advantages([1.0], [0], "std")


def test_group_keys_separate_kinds(jitted):
  keys = [("q1", "plain")] * 2 + [("q1", "bcq")] * 2 + [("q1", "ncq")] * 2 + [("q2", "plain")] * 2
  ids = group_ids_from_keys(keys)
  assert ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and ids.dtype == np.int32
  # Plain all-wrong, BCQ mixed: if BCQ shared the plain baseline its advantages would differ.
  rewards = [0, 0, 1, 0, 1, 1, 0, 1]
  a = _run(jitted, "none", rewards, ids)
  np.testing.assert_allclose(a, [0, 0, 0.5, -0.5, 0, 0, -0.5, 0.5])


def test_mask_excludes_padding(jitted):
  rewards = np.zeros(N, np.float32)
  rewards[:4] = [1, 0, 1, 1]
  rewards[4:] = 1.0  # Padding with a reward that would matter if counted.
  groups = np.zeros(N, np.int32)
  mask = np.arange(N) < 4
  a = np.asarray(jitted["none"](rewards, groups, mask=mask))
  np.testing.assert_allclose(a[:4], [0.25, -0.75, 0.25, 0.25], atol=1e-6)
  assert (a[4:] == 0).all()


@st.composite
def batches(draw):
  sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=6).filter(lambda s: sum(s) <= N))
  rewards, groups = [], []
  for g, size in enumerate(sizes):
    binary = draw(st.booleans())
    # No subnormal rewards: XLA on CPU flushes them to zero (a group [0, 1e-45] is trivial there
    # and not in NumPy's reference), and no grader produces them.
    vals = st.sampled_from([0.0, 1.0]) if binary else st.floats(-2, 2, width=32,
                                                                 allow_subnormal=False)
    rewards += draw(st.lists(vals, min_size=size, max_size=size))
    groups += [g] * size
  return rewards, groups


def _padded(rewards, groups):
  n = len(rewards)
  r = np.zeros(N, np.float32)
  g = np.zeros(N, np.int32)
  r[:n], g[:n] = rewards, groups
  return r, g, np.arange(N) < n


@settings(max_examples=150, deadline=None)
@given(batches(), st.sampled_from(["without_zero", "with_zero", "none"]))
def test_matches_reference_and_properties(jitted, batch, norm):
  rewards, groups = batch
  n = len(rewards)
  r, g, mask = _padded(rewards, groups)
  a = np.asarray(jitted[norm](r, g, mask=mask))
  ref = reference(np.float32(rewards), groups, norm)
  np.testing.assert_allclose(a[:n], ref, rtol=1e-4, atol=1e-4)
  assert (a[n:] == 0).all()
  gs = np.asarray(groups)
  r32 = np.float32(rewards)
  nontrivial = np.array([np.ptp(r32[gs == x]) > 0 for x in gs])
  # Trivial groups are exactly zero.
  assert (a[:n][~nontrivial] == 0.0).all()
  if norm == "without_zero" and nontrivial.any():
    vals = a[:n][nontrivial].astype(np.float64)
    centered = reference(r32, groups, "none")[nontrivial]
    if centered.std() > 1e-3:  # Far from the ε regime.
      assert abs(vals.mean()) < 1e-4 and abs(vals.std() - 1.0) < 1e-3
