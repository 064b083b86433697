"""Parity of the mRoPE index with transformers' `Qwen3_5Model.get_rope_index`."""
import functools
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5Model

from zppo_jax.models.qwen3_5.rope_index import derive_mm_token_type_ids, get_rope_index

IMG, VID, START, END, PAD = 248056, 248057, 248053, 248054, 248044


def _reference(input_ids, types_, image_grid, video_grid, mask):
  fake = types.SimpleNamespace(
      config=types.SimpleNamespace(vision_config=types.SimpleNamespace(spatial_merge_size=2)),
      get_vision_position_ids=functools.partial(Qwen3_5Model.get_vision_position_ids, None))
  as_t = lambda a: None if a is None else torch.tensor(np.asarray(a), dtype=torch.long)
  pos, deltas = Qwen3_5Model.get_rope_index(fake, as_t(input_ids), as_t(types_), as_t(image_grid),
                                            as_t(video_grid), as_t(mask))
  return pos.numpy(), deltas.numpy()[:, 0]


def _text(rng, n):
  return list(rng.integers(0, 1000, size=n))


def _batch(rng):
  """Three rows: images + a 2-patch video, a left-padded image prompt, right-padded text."""
  image_grids = [[1, 4, 6], [1, 8, 2], [1, 6, 4]]
  video_grids = [[2, 4, 4]]
  row0 = (_text(rng, 3) + [START] + [IMG] * 6 + [END] + _text(rng, 2) + [START] + [IMG] * 4
          + [END] + _text(rng, 2)
          + _text(rng, 3) + [START] + [VID] * 4 + [END] + _text(rng, 3) + [START] + [VID] * 4
          + [END] + _text(rng, 4))
  row1 = _text(rng, 2) + [START] + [IMG] * 6 + [END] + _text(rng, 5)
  row2 = _text(rng, 9)
  length = max(map(len, (row0, row1, row2)))
  ids = np.full((3, length), PAD)
  mask = np.zeros((3, length), np.int64)
  ids[0, :len(row0)], mask[0, :len(row0)] = row0, 1
  ids[1, length - len(row1):], mask[1, length - len(row1):] = row1, 1   # left padding
  ids[2, :len(row2)], mask[2, :len(row2)] = row2, 1                     # right padding
  return ids, mask, np.array(image_grids), np.array(video_grids)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_with_padding(seed):
  ids, mask, image_grids, video_grids = _batch(np.random.default_rng(seed))
  types_ = derive_mm_token_type_ids(ids, IMG, VID)
  ref_pos, ref_deltas = _reference(ids, types_, image_grids, video_grids, mask)
  pos, next_position = get_rope_index(ids, types_, image_grids, video_grids, mask)
  assert pos.dtype == np.int32 and pos.shape == (3,) + ids.shape
  np.testing.assert_array_equal(pos, ref_pos)
  np.testing.assert_array_equal(next_position - mask.sum(1), ref_deltas)
  # Token types derived from the ids give the same answer.
  derived, _ = get_rope_index(ids, None, image_grids, video_grids, mask, image_token_id=IMG,
                              video_token_id=VID)
  np.testing.assert_array_equal(derived, pos)


def test_text_only_and_no_mask():
  ids = np.arange(12).reshape(2, 6)
  pos, next_position = get_rope_index(ids, np.zeros_like(ids))
  np.testing.assert_array_equal(pos, np.broadcast_to(np.arange(6), (3, 2, 6)))
  np.testing.assert_array_equal(next_position, [6, 6])


def test_decoding_offset_follows_the_image():
  # A 4 x 8 patch image is 2 x 4 merged tokens and advances the position by max(2, 4) = 4.
  ids = np.array([[1, START] + [IMG] * 8 + [END]])
  pos, next_position = get_rope_index(ids, None, [[1, 4, 8]], image_token_id=IMG,
                                      video_token_id=VID)
  assert pos[:, 0, 2].tolist() == [2, 2, 2] and pos[:, 0, 9].tolist() == [2, 3, 5]
  assert pos[:, 0, 10].tolist() == [6, 6, 6]
  assert next_position.tolist() == [7]


def test_bad_inputs_name_the_row():
  ids = np.array([[1, START] + [IMG] * 8 + [END], [1] * 11])
  with pytest.raises(ValueError, match="row 0: a run of 8 image"):
    get_rope_index(ids, None, [[1, 4, 6]], image_token_id=IMG, video_token_id=VID)
  with pytest.raises(ValueError, match="row 0: more image placeholder runs"):
    get_rope_index(ids, None, None, image_token_id=IMG, video_token_id=VID)
  with pytest.raises(ValueError, match="more image grids"):
    get_rope_index(ids, None, [[1, 4, 8], [1, 2, 2]], image_token_id=IMG, video_token_id=VID)
  with pytest.raises(ValueError, match="row 0: positions reach 6"):
    get_rope_index(ids, None, [[1, 4, 8]], image_token_id=IMG, video_token_id=VID, max_position=6)
  # Two temporal patches of a video without the separating timestamp are one run: rejected.
  video = np.array([[1, START] + [VID] * 8 + [END]])
  with pytest.raises(ValueError, match="run of 8 video"):
    get_rope_index(video, None, None, [[2, 4, 4]], image_token_id=IMG, video_token_id=VID)


@st.composite
def _random_batch(draw):
  """Rows of text runs, images and videos (timestamps between temporal patches), padded."""
  rows, image_grids, video_grids = [], [], []
  for _ in range(draw(st.integers(1, 3))):
    row = list(draw(st.lists(st.integers(0, 99), min_size=1, max_size=4)))
    for _ in range(draw(st.integers(0, 3))):
      t = draw(st.integers(1, 3)) if draw(st.booleans()) else 0
      h, w = 2 * draw(st.integers(1, 4)), 2 * draw(st.integers(1, 4))
      if t == 0:
        image_grids.append([1, h, w])
        row += [START] + [IMG] * (h * w // 4) + [END]
      else:
        video_grids.append([t, h, w])
        for _ in range(t):
          row += [7, START] + [VID] * (h * w // 4) + [END]
      row += list(draw(st.lists(st.integers(0, 99), min_size=0, max_size=3)))
    rows.append(row)
  length = max(map(len, rows)) + draw(st.integers(0, 2))
  ids = np.full((len(rows), length), PAD)
  mask = np.zeros_like(ids)
  for r, row in enumerate(rows):
    left = draw(st.booleans())
    span = slice(length - len(row), length) if left else slice(0, len(row))
    ids[r, span], mask[r, span] = row, 1
  return (ids, mask, np.array(image_grids).reshape(-1, 3) if image_grids else None,
          np.array(video_grids).reshape(-1, 3) if video_grids else None)


@settings(max_examples=40, deadline=None)
@given(_random_batch())
def test_random_batches_match_reference(batch):
  ids, mask, image_grids, video_grids = batch
  types_ = derive_mm_token_type_ids(ids, IMG, VID)
  ref_pos, ref_deltas = _reference(ids, types_, image_grids, video_grids, mask)
  pos, next_position = get_rope_index(ids, types_, image_grids, video_grids, mask)
  np.testing.assert_array_equal(pos, ref_pos)
  np.testing.assert_array_equal(next_position - mask.sum(1), ref_deltas)
