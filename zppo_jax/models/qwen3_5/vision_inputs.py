"""Host-side metadata of the vision encoder: rotary positions, position-table interpolation taps,
segment ids and attention windows of a batch of images, computed with numpy from their patch grids
so the encoder (`vision.VisionModel`) is a static-shape function of the patch count.
"""
from __future__ import annotations

import flax.struct
import jax
import numpy as np

from zppo_jax.models.qwen3_5.vision_config import VisionConfig


@flax.struct.dataclass
class VisionInputs:
  """Per-patch metadata of a packed vision batch, computed on the host by `vision_inputs`.

  Attributes:
    positions: int32[N, 2] (row, col) of each patch in its frame, for the rotary embedding.
    interp_index: int32[N, 4] rows of the position table to blend.
    interp_weight: float32[N, 4] bilinear weights of those rows.
    segment_ids: int32[N] one id per frame (1, 2, ...); 0 marks padding patches.
    key_start: int32[C] first key of each query chunk's window, or None for dense attention.
    attention_chunk: Q, queries per chunk (static; 0 = dense).
    attention_span: keys per window (static), enough for every chunk's segments.
  """
  positions: jax.Array
  interp_index: jax.Array
  interp_weight: jax.Array
  segment_ids: jax.Array
  key_start: jax.Array | None = None
  attention_chunk: int = flax.struct.field(pytree_node=False, default=0)
  attention_span: int = flax.struct.field(pytree_node=False, default=0)


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
  """Bilinear taps (align_corners=True) of `index` on an axis of `size` into a `side` table."""
  src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
  floor = np.floor(src)
  offsets = np.arange(2)
  taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
  distance = np.abs(src[:, None] - floor[:, None] - offsets.astype(np.float32))
  return taps, np.maximum(np.float32(1) - distance, np.float32(0)).astype(np.float32)


def _attention_windows(segment_ids: np.ndarray, chunk: int) -> tuple[np.ndarray, int]:
  """Per query chunk, the start of a fixed-size key window covering all its queries' segments.

  Segments are contiguous, so chunk c (queries [cQ, cQ + Q)) needs the keys from the start of its
  first query's segment to the end of its last query's. The window size (the largest need,
  rounded up to a multiple of Q to limit recompiles) is the same for every chunk.
  """
  n = segment_ids.size
  change = np.flatnonzero(np.diff(segment_ids)) + 1
  starts, ends = np.concatenate([[0], change]), np.concatenate([change, [n]])
  which = np.repeat(np.arange(starts.size), ends - starts)
  first = np.arange(0, n, chunk)
  last = np.minimum(first + chunk, n) - 1
  low, high = starts[which[first]], ends[which[last]]
  span = min(n, -(-int((high - low).max()) // chunk) * chunk)
  return np.minimum(low, n - span).astype(np.int32), span


def vision_inputs(grid_thw, cfg: VisionConfig, pad_to: int | None = None,
                  attention_chunk: int = 1024) -> VisionInputs:
  """Computes the rotary positions, position-table taps and segments of a packed vision batch.

  Args:
    grid_thw: int[E, 3] (t, h, w) in patches of each image or video, in packing order.
    cfg: the vision config.
    pad_to: optional total patch count to pad to (a multiple of M * M, at least the real count),
      so that a jitted encoder sees few distinct shapes; padding patches are their own segment.
    attention_chunk: above this many patches, the attention runs over chunks of this many
      queries, each against a window of keys that covers its segments, so memory grows with
      N * (chunk + longest frame) instead of N^2. 0 always uses the dense form.

  Returns:
    `VisionInputs` of numpy arrays with N = sum(t * h * w) (or `pad_to`) rows.

  Raises:
    ValueError: if a grid is not a positive multiple of the merge size or `pad_to` is too small.
  """
  grid_thw = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
  m, side = cfg.spatial_merge_size, cfg.grid_side
  positions, index, weight, segments = [], [], [], []
  next_segment = 1
  for entry, (t, h, w) in enumerate(grid_thw.tolist()):
    if t < 1 or h < m or w < m or h % m or w % m:
      raise ValueError(f"grid_thw[{entry}] = {(t, h, w)}: t must be >= 1 and h, w positive "
                       f"multiples of spatial_merge_size {m}")
    # Patch k of a frame is (block_row, block_col, in_row, in_col) in merge-block order.
    k = np.arange(h * w)
    row = (k // (m * m * (w // m))) * m + (k // m) % m
    col = ((k // (m * m)) % (w // m)) * m + k % m
    h_taps, h_weights = _axis_taps(row, h, side)
    w_taps, w_weights = _axis_taps(col, w, side)
    frame_index = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
    frame_weight = (h_weights[:, :, None] * w_weights[:, None, :]).reshape(-1, 4)
    positions.append(np.tile(np.stack([row, col], -1), (t, 1)))
    index.append(np.tile(frame_index, (t, 1)))
    weight.append(np.tile(frame_weight, (t, 1)))
    segments.append(np.repeat(np.arange(next_segment, next_segment + t), h * w))
    next_segment += t
  n = int(sum(len(s) for s in segments))
  if pad_to is not None:
    if pad_to < n or pad_to % cfg.merge_unit:
      raise ValueError(f"pad_to {pad_to} must be >= {n} patches and a multiple of {cfg.merge_unit}")
    extra = pad_to - n
    positions.append(np.zeros((extra, 2), np.int64))
    index.append(np.zeros((extra, 4), np.int64))
    weight.append(np.zeros((extra, 4), np.float32))
    segments.append(np.zeros((extra,), np.int64))
  cat = lambda xs, shape, dtype: (np.concatenate(xs) if xs else np.zeros(shape)).astype(dtype)
  segment_ids = cat(segments, (0,), np.int32)
  windows = {}
  if 0 < attention_chunk < segment_ids.size:
    key_start, span = _attention_windows(segment_ids, attention_chunk)
    windows = dict(key_start=key_start, attention_chunk=attention_chunk, attention_span=span)
  return VisionInputs(
      positions=cat(positions, (0, 2), np.int32),
      interp_index=cat(index, (0, 4), np.int32),
      interp_weight=cat(weight, (0, 4), np.float32),
      segment_ids=segment_ids,
      **windows,
  )
