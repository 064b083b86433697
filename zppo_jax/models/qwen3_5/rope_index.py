"""Multimodal rotary (mRoPE) position ids for mixed text / image / video sequences.

Host-side numpy port of transformers' `Qwen3_5Model.get_rope_index`. Every token gets a (t, h, w)
position triple:

- a text token advances all three axes together: (p, p, p), then p + 1;
- an image (or one temporal patch of a video) of merged grid (1, h', w') starting at p takes
  (p, p + i, p + j) for its token at row i, column j, and the next token continues at
  p + max(h', w').

Videos are split into one entry per temporal patch, because the Qwen3.5 processor puts a timestamp
and `<|vision_start|>`/`<|vision_end|>` around every temporal patch. Padding tokens (attention mask
0, left or right) are skipped and get position 0. Decoding continues at `next_position` per row:
the largest position of the prompt plus one (the reference's `rope_deltas` is `next_position`
minus the number of real tokens).
"""
from __future__ import annotations

import numpy as np

TEXT, IMAGE, VIDEO = 0, 1, 2


def derive_mm_token_type_ids(input_ids, image_token_id: int, video_token_id: int) -> np.ndarray:
  """int[B, T] ids -> int32[B, T] modality (0 text, 1 image, 2 video) from the placeholder ids."""
  input_ids = np.asarray(input_ids)
  types = np.zeros(input_ids.shape, np.int32)
  types[input_ids == image_token_id] = IMAGE
  types[input_ids == video_token_id] = VIDEO
  return types


def _runs(types: np.ndarray) -> list[tuple[int, int, int]]:
  """(modality, start, end) of the maximal runs of equal values in a 1-D array."""
  if types.size == 0:
    return []
  edges = np.flatnonzero(np.diff(types)) + 1
  starts = np.concatenate([[0], edges])
  ends = np.concatenate([edges, [types.size]])
  return [(int(types[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def get_rope_index(
    input_ids,
    mm_token_type_ids=None,
    image_grid_thw=None,
    video_grid_thw=None,
    attention_mask=None,
    *,
    spatial_merge_size: int = 2,
    image_token_id: int | None = None,
    video_token_id: int | None = None,
    max_position: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """3-axis rotary positions of a batch of prompts.

  Args:
    input_ids: int[B, T] token ids.
    mm_token_type_ids: int[B, T] 0 text, 1 image, 2 video; derived from `image_token_id` /
      `video_token_id` when None.
    image_grid_thw: int[I, 3] patch grids of the images, in order of appearance over the batch.
    video_grid_thw: int[V, 3] patch grids of the videos, in order of appearance.
    attention_mask: int/bool[B, T], 1 = real token; None = all real.
    spatial_merge_size: the vision merger's M.
    image_token_id: `<|image_pad|>` id (only needed to derive `mm_token_type_ids`).
    video_token_id: `<|video_pad|>` id (idem).
    max_position: if given, a row whose positions reach it is an error (position budget).

  Returns:
    positions: int32[3, B, T] (t, h, w) positions; 0 at padding.
    next_position: int32[B] the position the next generated token of each row takes.

  Raises:
    ValueError: naming the row, when a run of placeholder tokens does not match its grid's
      token count, grids run out or are left over, or the position budget is exceeded.
  """
  input_ids = np.asarray(input_ids)
  batch, length = input_ids.shape
  if mm_token_type_ids is None:
    if image_token_id is None or video_token_id is None:
      raise ValueError("get_rope_index needs mm_token_type_ids or the image/video token ids")
    mm_token_type_ids = derive_mm_token_type_ids(input_ids, image_token_id, video_token_id)
  types_all = np.asarray(mm_token_type_ids)
  mask = np.ones((batch, length), bool) if attention_mask is None else np.asarray(attention_mask) != 0
  grids = {
      IMAGE: iter(np.asarray(image_grid_thw, np.int64).reshape(-1, 3).tolist()
                  if image_grid_thw is not None else []),
      # One entry per temporal patch: each is its own run between timestamps.
      VIDEO: iter([[1, h, w] for t, h, w in np.asarray(video_grid_thw, np.int64).reshape(-1, 3)
                   .tolist() for _ in range(t)] if video_grid_thw is not None else []),
  }
  m = spatial_merge_size
  positions = np.zeros((3, batch, length), np.int64)
  next_position = np.zeros((batch,), np.int64)
  for row in range(batch):
    types = types_all[row][mask[row]]
    pieces, current = [], 0
    for modality, start, end in _runs(types):
      if modality == TEXT:
        pieces.append(np.broadcast_to(np.arange(end - start) + current, (3, end - start)))
        current += end - start
        continue
      name = {IMAGE: "image", VIDEO: "video"}.get(modality)
      if name is None:
        raise ValueError(f"row {row}: unknown mm_token_type {modality}")
      grid = next(grids[modality], None)
      if grid is None:
        raise ValueError(f"row {row}: more {name} placeholder runs than {name} grids")
      t, h, w = grid[0], grid[1] // m, grid[2] // m
      if t * h * w != end - start:
        raise ValueError(f"row {row}: a run of {end - start} {name} placeholder tokens does not "
                         f"match its grid {tuple(grid)} ({t * h * w} tokens)")
      tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
      pieces.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + current)
      current += max(h, w)
    real = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)
    positions[:, row, mask[row]] = real
    next_position[row] = real.max() + 1 if real.size else 0
    if max_position is not None and next_position[row] > max_position:
      raise ValueError(f"row {row}: positions reach {next_position[row] - 1}, beyond the position "
                       f"budget {max_position}")
  for modality, name in ((IMAGE, "image"), (VIDEO, "video")):
    if next(grids[modality], None) is not None:
      raise ValueError(f"more {name} grids than {name} placeholder runs in the batch")
  return positions.astype(np.int32), next_position.astype(np.int32)

