"""Packing prompt + response sequences into fixed-length rows (host side, NumPy only).

Layout of one packed row of length L (`segment_ids` 1..n for the sequences, 0 for padding):

  tokens       p p p r r r | p p r r r r | 0 0
  segment_ids  1 1 1 1 1 1 | 2 2 2 2 2 2 | 0 0
  positions    0 1 2 3 4 5 | 0 1 2 3 4 5 | 0 0

Per-token training arrays are aligned to **prediction positions**: index i holds what concerns the
token predicted from position i, i.e. `targets[i] = tokens[i + 1]` of the same segment. So
`loss_mask[i]` is 1 when `tokens[i + 1]` is a response token of the same sequence that is in the loss
(not a forced prefix token of the Prefix baseline), and `advantages[i]` / `old_logprobs[i]` /
`sampler_logprobs[i]` belong to that token. The model's hidden state at i, the LM head and `targets`
give exactly the log-prob the loss needs, with no shifting in the learner.

A prompt with images brings its 3-axis positions (`prompt_positions`, the response continues at
their maximum plus one, as decoding did) and its vision features with the prompt columns they
replace (`prompt_features`); the batch then also holds `vision_embeds` / `vision_mask`, which the
learner writes over the token embeddings.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where one sequence went: row, first column, prompt and response lengths."""
  row: int
  start: int
  prompt_len: int
  response_len: int


@dataclasses.dataclass(frozen=True)
class PackedBatch:
  """Fixed-shape arrays of packed rows (R rows of L tokens).

  Attributes:
    tokens: int32[R, L] input tokens, 0 on padding.
    targets: int32[R, L] next token of the same segment, 0 where there is none.
    segment_ids: int32[R, L], 1..n per sequence in a row, 0 = padding.
    positions: int32[3, R, L] mRoPE positions (t, h, w); for text the three rows are equal and
      restart at 0 in every segment.
    loss_mask: float32[R, L], 1 where `targets` is a trained response token.
    advantages: float32[R, L] advantage of the target token (0 off the loss mask).
    old_logprobs: float32[R, L] log π_old of the target token, if given (else 0).
    sampler_logprobs: float32[R, L] log-prob reported by the sampler, if given (else 0).
    placements: one `Placement` per input sequence, in input order.
    vision_embeds: float32[R, L, D] image features at image-pad columns (0 elsewhere), or None
      when no sequence has images.
    vision_mask: bool[R, L] True where `vision_embeds` replaces the token embedding, or None.
  """
  tokens: np.ndarray
  targets: np.ndarray
  segment_ids: np.ndarray
  positions: np.ndarray
  loss_mask: np.ndarray
  advantages: np.ndarray
  old_logprobs: np.ndarray
  sampler_logprobs: np.ndarray
  placements: tuple[Placement, ...]
  vision_embeds: np.ndarray | None = None
  vision_mask: np.ndarray | None = None

  def arrays(self) -> dict[str, np.ndarray]:
    """The array fields as a dict (what the jitted learner consumes); absent vision arrays are
    left out, so text batches keep their shapes and programs."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name != "placements" and getattr(self, f.name) is not None}


def bucket(n: int, minimum: int = 1) -> int:
  """The smallest power of two >= max(n, minimum, 1): padded sizes that keep a run to a handful
  of compiled shapes."""
  return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def rows_needed(lengths: Sequence[int], row_len: int) -> int:
  """Rows `pack` fills with sequences of these total lengths (first-fit decreasing)."""
  return 1 + max((r for r, _ in _first_fit(lengths, row_len)), default=-1)


def _first_fit(lengths: Sequence[int], row_len: int) -> list[tuple[int, int]]:
  """First-fit decreasing: (row, start) for each length; ties keep input order (deterministic)."""
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  free: list[int] = []  # next free column of each row
  where = [(0, 0)] * len(lengths)
  for i in order:
    for r, used in enumerate(free):
      if used + lengths[i] <= row_len:
        where[i] = (r, used)
        free[r] = used + lengths[i]
        break
    else:
      where[i] = (len(free), 0)
      free.append(lengths[i])
  return where


def _per_response_token(values, i: int, n: int, name: str) -> np.ndarray:
  v = np.asarray(values[i], np.float32)
  if v.ndim == 0:
    return np.full(n, v, np.float32)
  if v.shape != (n,):
    raise ValueError(f"{name}[{i}] has shape {v.shape}, expected ({n},) for its response")
  return v


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], row_len: int, *,
         advantages: Sequence | None = None, old_logprobs: Sequence | None = None,
         sampler_logprobs: Sequence | None = None, response_masks: Sequence | None = None,
         num_rows: int | None = None, prompt_positions: Sequence | None = None,
         prompt_features: Sequence | None = None) -> PackedBatch:
  """Packs sequences into rows of `row_len` tokens.

  Args:
    prompts: token ids of each prompt.
    responses: token ids of each response (same count as prompts).
    row_len: L, tokens per row.
    advantages: per sequence a scalar or a float[len(response)] array.
    old_logprobs: per sequence float[len(response)].
    sampler_logprobs: per sequence float[len(response)].
    response_masks: per sequence 0/1[len(response)]; 0 keeps a response token out of the loss
      (the forced teacher prefix of the Prefix baseline). Default: all ones.
    num_rows: pad to exactly this many rows (static shapes for jit); an error if more are needed.
    prompt_positions: per sequence None (text: 0, 1, ...) or int[3, len(prompt)] mRoPE positions
      of a multimodal prompt; its response continues at their maximum plus one.
    prompt_features: per sequence None or (bool[len(prompt)] image-pad mask, float[k, D] the
      features of those k columns, in order).

  Returns:
    A `PackedBatch`.

  Raises:
    ValueError: naming the sequence that is empty, longer than a row, or has mis-sized arrays.
  """
  if len(prompts) != len(responses):
    raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
  lengths = []
  for i, (p, r) in enumerate(zip(prompts, responses)):
    if len(p) == 0 or len(r) == 0:
      raise ValueError(f"sequence {i} has an empty prompt or response ({len(p)}, {len(r)})")
    if len(p) + len(r) > row_len:
      raise ValueError(f"sequence {i} has {len(p) + len(r)} tokens, more than row_len={row_len}")
    lengths.append(len(p) + len(r))
  where = _first_fit(lengths, row_len)
  rows = 1 + max((r for r, _ in where), default=-1)
  if num_rows is not None:
    if rows > num_rows:
      raise ValueError(f"the sequences need {rows} rows of {row_len}, more than num_rows={num_rows}")
    rows = num_rows

  features = [None] * len(prompts) if prompt_features is None else list(prompt_features)
  positions = [None] * len(prompts) if prompt_positions is None else list(prompt_positions)
  if len(features) != len(prompts) or len(positions) != len(prompts):
    raise ValueError(f"{len(prompts)} prompts but {len(positions)} prompt positions and "
                     f"{len(features)} prompt features")
  width = next((f[1].shape[1] for f in features if f is not None), None)

  shape = (rows, row_len)
  out = {k: np.zeros(shape, np.int32) for k in ("tokens", "targets", "segment_ids")}
  if width is not None:
    out["vision_embeds"] = np.zeros(shape + (width,), np.float32)
    out["vision_mask"] = np.zeros(shape, bool)
  out["positions"] = np.zeros((3,) + shape, np.int32)
  for k in ("loss_mask", "advantages", "old_logprobs", "sampler_logprobs"):
    out[k] = np.zeros(shape, np.float32)
  next_segment = [1] * rows
  placements = []
  for i, ((row, start), p, r) in enumerate(zip(where, prompts, responses)):
    n_p, n_r = len(p), len(r)
    end = start + n_p + n_r
    seq = np.concatenate([np.asarray(p, np.int32), np.asarray(r, np.int32)])
    out["tokens"][row, start:end] = seq
    out["targets"][row, start:end - 1] = seq[1:]
    out["segment_ids"][row, start:end] = next_segment[row]
    next_segment[row] += 1
    out["positions"][:, row, start:end] = _sequence_positions(positions[i], n_p, n_r, i)
    if features[i] is not None:
      _place_features(out, features[i], row, start, n_p, i)
    # Response token j is predicted from column start + n_p + j - 1.
    pred = slice(start + n_p - 1, end - 1)
    mask = (np.ones(n_r, np.float32) if response_masks is None
            else _per_response_token(response_masks, i, n_r, "response_masks"))
    out["loss_mask"][row, pred] = mask
    if advantages is not None:
      out["advantages"][row, pred] = _per_response_token(advantages, i, n_r, "advantages") * mask
    if old_logprobs is not None:
      out["old_logprobs"][row, pred] = _per_response_token(old_logprobs, i, n_r, "old_logprobs")
    if sampler_logprobs is not None:
      out["sampler_logprobs"][row, pred] = _per_response_token(
          sampler_logprobs, i, n_r, "sampler_logprobs")
    placements.append(Placement(row, start, n_p, n_r))
  return PackedBatch(**out, placements=tuple(placements))


def _sequence_positions(prompt_positions, n_p: int, n_r: int, i: int) -> np.ndarray:
  """int32[3, n_p + n_r]: text positions, or a multimodal prompt's followed by its response's."""
  if prompt_positions is None:
    return np.arange(n_p + n_r, dtype=np.int32)
  pos = np.asarray(prompt_positions, np.int32)
  if pos.shape != (3, n_p):
    raise ValueError(f"prompt_positions[{i}] has shape {pos.shape}, expected (3, {n_p})")
  response = np.arange(n_r, dtype=np.int32) + pos.max() + 1
  return np.concatenate([pos, np.broadcast_to(response, (3, n_r))], axis=1)


def _place_features(out: dict, feature: tuple, row: int, start: int, n_p: int, i: int) -> None:
  mask, values = np.asarray(feature[0], bool), np.asarray(feature[1], np.float32)
  if mask.shape != (n_p,) or values.ndim != 2 or int(mask.sum()) != values.shape[0]:
    raise ValueError(f"prompt_features[{i}]: a mask of shape {mask.shape} with {int(mask.sum())} "
                     f"image columns and features of shape {values.shape} do not fit a prompt of "
                     f"{n_p} tokens")
  if values.shape[1] != out["vision_embeds"].shape[-1]:
    raise ValueError(f"prompt_features[{i}]: feature width {values.shape[1]}, others have "
                     f"{out['vision_embeds'].shape[-1]}")
  out["vision_embeds"][row, start:start + n_p][mask] = values
  out["vision_mask"][row, start:start + n_p] = mask


def unpack(values: np.ndarray, placements: Sequence[Placement]) -> list[np.ndarray]:
  """Per-sequence response values from a packed per-token array.

  Args:
    values: [R, L] array aligned to prediction positions (e.g. log-probs from the learner).
    placements: `PackedBatch.placements`.

  Returns:
    One array of length `response_len` per sequence, in input order.
  """
  values = np.asarray(values)
  out = []
  for pl in placements:
    first = pl.start + pl.prompt_len - 1
    out.append(values[pl.row, first:first + pl.response_len])
  return out
