"""Packing prompt+response sequences into rows: layout invariants and exact round trips."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from zppo_jax.data import packing


def test_small_example_layout():
  b = packing.pack([[5, 6], [7]], [[8, 9, 10], [11, 12]], row_len=10, advantages=[2.0, -1.0],
                   old_logprobs=[[-0.1, -0.2, -0.3], [-0.4, -0.5]],
                   response_masks=[[0, 1, 1], [1, 1]], num_rows=2)
  np.testing.assert_array_equal(b.tokens[0], [5, 6, 8, 9, 10, 7, 11, 12, 0, 0])
  np.testing.assert_array_equal(b.targets[0], [6, 8, 9, 10, 0, 11, 12, 0, 0, 0])
  np.testing.assert_array_equal(b.segment_ids[0], [1, 1, 1, 1, 1, 2, 2, 2, 0, 0])
  np.testing.assert_array_equal(b.positions[:, 0], [[0, 1, 2, 3, 4, 0, 1, 2, 0, 0]] * 3)
  # Target 8 is the forced prefix (masked); 9, 10 of seq 0 and 11, 12 of seq 1 are trained.
  np.testing.assert_array_equal(b.loss_mask[0], [0, 0, 1, 1, 0, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(b.advantages[0], [0, 0, 2, 2, 0, -1, -1, 0, 0, 0])
  np.testing.assert_allclose(b.old_logprobs[0, 1:4], [-0.1, -0.2, -0.3])
  assert not b.tokens[1].any() and not b.loss_mask[1].any()
  assert b.placements == (packing.Placement(0, 0, 2, 3), packing.Placement(0, 5, 1, 2))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=12),
       st.integers(12, 20))
def test_round_trip_and_invariants(lengths, row_len):
  rng = np.random.default_rng(len(lengths) * 100 + row_len)
  prompts = [rng.integers(1, 50, p).tolist() for p, _ in lengths]
  responses = [rng.integers(1, 50, r).tolist() for _, r in lengths]
  adv = [rng.normal(size=r).astype(np.float32) for _, r in lengths]
  old = [rng.normal(size=r).astype(np.float32) for _, r in lengths]
  masks = [rng.integers(0, 2, r).astype(np.float32) for _, r in lengths]
  b = packing.pack(prompts, responses, row_len, advantages=adv, old_logprobs=old,
                   sampler_logprobs=old, response_masks=masks)
  assert b.tokens.shape[1] == row_len
  for i, (got_t, got_adv, got_old, got_mask) in enumerate(zip(
      packing.unpack(b.targets, b.placements), packing.unpack(b.advantages, b.placements),
      packing.unpack(b.old_logprobs, b.placements), packing.unpack(b.loss_mask, b.placements))):
    np.testing.assert_array_equal(got_t, responses[i])
    np.testing.assert_array_equal(got_mask, masks[i])
    np.testing.assert_allclose(got_adv, adv[i] * masks[i])
    np.testing.assert_allclose(got_old, old[i])
    pl = b.placements[i]
    seq = b.tokens[pl.row, pl.start:pl.start + pl.prompt_len + pl.response_len]
    np.testing.assert_array_equal(seq, prompts[i] + responses[i])
  # Every sequence's tokens and only those carry its segment id; masks never leave the response.
  assert (b.segment_ids > 0).sum() == sum(p + r for p, r in lengths)
  assert b.loss_mask.sum() == sum(m.sum() for m in masks)
  assert np.all(b.loss_mask[b.segment_ids == 0] == 0)
  for row in range(b.tokens.shape[0]):
    for s in set(b.segment_ids[row]) - {0}:
      cols = np.flatnonzero(b.segment_ids[row] == s)
      assert np.all(np.diff(cols) == 1)
      np.testing.assert_array_equal(b.positions[0, row, cols], np.arange(len(cols)))
      assert b.targets[row, cols[-1]] == 0 and b.loss_mask[row, cols[-1]] == 0


def test_bad_inputs_name_the_sequence():
  with pytest.raises(ValueError, match="sequence 1 has 9 tokens"):
    packing.pack([[1], [1, 2, 3]], [[2], [4, 5, 6, 7, 8, 9]], row_len=8)
  with pytest.raises(ValueError, match="sequence 0 has an empty"):
    packing.pack([[]], [[1]], row_len=8)
  with pytest.raises(ValueError, match="num_rows=1"):
    packing.pack([[1, 2, 3]] * 3, [[4, 5, 6]] * 3, row_len=8, num_rows=1)
  with pytest.raises(ValueError, match=r"advantages\[0\]"):
    packing.pack([[1]], [[2, 3]], row_len=8, advantages=[[1.0, 2.0, 3.0]])


def test_bucket_is_the_next_power_of_two_at_least_the_minimum():
  assert [packing.bucket(n) for n in (0, 1, 2, 3, 5, 8, 9)] == [1, 1, 2, 4, 8, 8, 16]
  assert packing.bucket(3, minimum=16) == 16 and packing.bucket(17, minimum=16) == 32


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(2, 12), min_size=1, max_size=20))
def test_rows_needed_is_the_row_count_pack_fills(lengths):
  prompts = [[1] * (n // 2) for n in lengths]
  responses = [[2] * (n - n // 2) for n in lengths]
  assert packing.rows_needed(lengths, 16) == packing.pack(prompts, responses, 16).tokens.shape[0]
