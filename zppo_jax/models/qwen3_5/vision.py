"""The Qwen3.5 vision encoder in Flax NNX (transformers' `Qwen3_5VisionModel`).

Images and videos of different sizes are packed into one sequence of N patches, laid out by the
processor in spatial-merge-block order (`zppo_jax.data.vision`). Per entry of `grid_thw` (t, h, w)
in patches:

  x = pixel_values @ W_patch + b                  3-D patch embedding (a strided Conv3d == a matmul)
  x += sum_k w_k * E_pos[i_k]                     learned 48 x 48 position table, bilinearly
                                                  interpolated (align_corners) to the h x w grid
  x = x + Attn(LN1(x));  x = x + MLP(LN2(x))      `depth` pre-norm blocks; the attention is
                                                  non-causal, uses a 2-D axial rotary embedding
                                                  (row, col) and never crosses a frame boundary
                                                  (every frame of every entry is its own segment)
  y = fc2(gelu(fc1(concat_MxM(LN(x)))))           the merger: M x M neighbours -> one LM token

The grid-dependent metadata (rotary positions, interpolation taps, segment ids) is computed on the
host with numpy by `vision_inputs`, so the encoder itself is a static-shape function of N that jits
once per (padded) patch count. Above `attention_chunk` patches the attention runs over chunks of
queries, each against the window of keys its frames span, so a batch of many large images costs
memory N * (chunk + frame length) rather than N^2.

Parameter tree (HF `model.visual.` names mirrored; blocks are stacked on a leading `depth` axis, so
HF `blocks.{i}.X` is row i of our `blocks.X`):

  patch_embed.proj.kernel  [C*Tp*P*P, D]   HF patch_embed.proj.weight [D, C, Tp, P, P] reshaped, .T
  patch_embed.proj.bias    [D]
  pos_embed.embedding      [num_position_embeddings, D]         HF pos_embed.weight
  blocks.norm1.scale/bias  [L, D]          HF blocks.{i}.norm1.weight/bias (same for norm2)
  blocks.attn.qkv.kernel   [L, D, 3D]      HF blocks.{i}.attn.qkv.weight [3D, D] .T; bias [L, 3D]
  blocks.attn.proj.kernel  [L, D, D]       HF blocks.{i}.attn.proj.weight .T; bias [L, D]
  blocks.mlp.linear_fc1.kernel [L, D, F]   HF blocks.{i}.mlp.linear_fc1.weight .T; bias [L, F]
  blocks.mlp.linear_fc2.kernel [L, F, D]   HF blocks.{i}.mlp.linear_fc2.weight .T; bias [L, D]
  merger.norm.scale/bias   [D]
  merger.linear_fc1.kernel [4D, 4D]        HF merger.linear_fc1.weight .T; bias [4D]
  merger.linear_fc2.kernel [4D, O]         HF merger.linear_fc2.weight .T; bias [O]

`HF_VISION_KEYS` is that table; `vision_params_from_hf` / `vision_params_to_hf` apply it.
"""
from __future__ import annotations

from collections.abc import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zppo_jax import parallel
from zppo_jax.models.qwen3_5.vision_config import VisionConfig

_ACT = {
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


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


def rotary_cos_sin(positions: jax.Array, cfg: VisionConfig) -> tuple[jax.Array, jax.Array]:
  """2-D axial rotary tables: int32[N, 2] (row, col) -> float32[N, H] cos and sin.

  A quarter of the head dim rotates with the row, a quarter with the column; the half is then
  repeated so that `rotate_half` pairs dimension j with j + H/2.
  """
  half = cfg.head_dim // 2
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, half, 2, dtype=jnp.float32) / half))
  freqs = positions.astype(jnp.float32)[:, :, None] * inv_freq   # [N, 2, H/4]
  freqs = freqs.reshape(freqs.shape[0], -1)                        # [N, H/2]: rows then cols
  freqs = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(freqs), jnp.sin(freqs)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates float[N, heads, H] by the [N, H] tables (in fp32, like the reference)."""
  dtype = x.dtype
  x = x.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos[:, None, :] + rotated * sin[:, None, :]).astype(dtype)


# The tower is small next to the decoder: its parameters are replicated (logical names None).
_REPLICATED = None


class Dense(nnx.Module):
  """``y = x @ kernel + bias``; kernel float[in, out] (HF stores its transpose)."""

  def __init__(self, in_features: int, out_features: int, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.kernel = parallel.param(jax.nn.initializers.normal(cfg.initializer_range), rngs.params(),
                                 (in_features, out_features), (_REPLICATED, _REPLICATED),
                                 cfg.param_dtype)
    self.bias = parallel.param(jax.nn.initializers.zeros, None, (out_features,), (_REPLICATED,),
                               cfg.param_dtype)
    self.dtype = cfg.dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """float[..., in] -> float[..., out] in the compute dtype."""
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    return y + self.bias[...].astype(self.dtype)


class LayerNorm(nnx.Module):
  """``(x - mean) / sqrt(var + eps) * scale + bias``, statistics in float32."""

  def __init__(self, dim: int, cfg: VisionConfig, *, rngs: nnx.Rngs):
    del rngs
    self.scale = parallel.param(jax.nn.initializers.ones, None, (dim,), (_REPLICATED,),
                                cfg.param_dtype)
    self.bias = parallel.param(jax.nn.initializers.zeros, None, (dim,), (_REPLICATED,),
                               cfg.param_dtype)
    self.eps = cfg.layer_norm_eps

  def __call__(self, x: jax.Array) -> jax.Array:
    """float[..., dim] -> float[..., dim] (same dtype)."""
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
    return (normed * self.scale[...].astype(jnp.float32)
            + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class PositionTable(nnx.Module):
  """The learned square position-embedding table float[num_position_embeddings, D]."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.embedding = parallel.param(jax.nn.initializers.normal(cfg.initializer_range),
                                    rngs.params(), (cfg.num_position_embeddings, cfg.hidden_size),
                                    (_REPLICATED, _REPLICATED), cfg.param_dtype)


class VisionAttention(nnx.Module):
  """Non-causal multi-head attention with 2-D rotary positions, restricted to each segment."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.qkv = Dense(cfg.hidden_size, 3 * cfg.hidden_size, cfg, rngs=rngs)
    self.proj = Dense(cfg.hidden_size, cfg.hidden_size, cfg, rngs=rngs)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, inputs: VisionInputs
               ) -> jax.Array:
    """float[T, D] -> float[T, D]; cos/sin float32[T, H]; segments and windows from `inputs`."""
    cfg = self.cfg
    t = x.shape[0]
    q, k, v = jnp.moveaxis(self.qkv(x).reshape(t, 3, cfg.num_heads, cfg.head_dim), 1, 0)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    segment_ids = jnp.asarray(inputs.segment_ids)
    if inputs.key_start is None:
      out = _segment_attention(q, k, v, segment_ids, segment_ids)
    else:
      chunk, span = inputs.attention_chunk, inputs.attention_span
      n_chunks = inputs.key_start.shape[0]
      pad = n_chunks * chunk - t
      # Padded queries get segment -1: they match no key and are dropped below.
      q_chunks = jnp.pad(q, ((0, pad), (0, 0), (0, 0))).reshape(n_chunks, chunk, *q.shape[1:])
      seg_chunks = jnp.pad(segment_ids, (0, pad), constant_values=-1).reshape(n_chunks, chunk)

      def one_chunk(args):
        q_c, seg_c, start = args
        window = lambda a: jax.lax.dynamic_slice_in_dim(a, start, span, axis=0)
        return _segment_attention(q_c, window(k), window(v), seg_c, window(segment_ids))

      out = jax.lax.map(one_chunk, (q_chunks, seg_chunks, jnp.asarray(inputs.key_start)))
      out = out.reshape(n_chunks * chunk, *q.shape[1:])[:t]
    return self.proj(out.reshape(t, cfg.hidden_size))


def _segment_attention(q, k, v, q_segments, k_segments):
  """Softmax attention of q float[T, N, H] over k, v float[S, N, H] within equal segment ids."""
  logits = jnp.einsum("TNH,SNH->NTS", q, k, preferred_element_type=jnp.float32)
  logits = logits * q.shape[-1] ** -0.5
  same = q_segments[:, None] == k_segments[None, :]
  logits = jnp.where(same[None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("NTS,SNH->TNH", probs, v)


class VisionMLP(nnx.Module):
  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.act = _ACT[cfg.hidden_act]
    self.linear_fc1 = Dense(cfg.hidden_size, cfg.intermediate_size, cfg, rngs=rngs)
    self.linear_fc2 = Dense(cfg.intermediate_size, cfg.hidden_size, cfg, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear_fc2(self.act(self.linear_fc1(x)))


class VisionBlock(nnx.Module):
  """Pre-norm transformer block: x + Attn(LN1(x)), then + MLP(LN2(x))."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.norm1 = LayerNorm(cfg.hidden_size, cfg, rngs=rngs)
    self.norm2 = LayerNorm(cfg.hidden_size, cfg, rngs=rngs)
    self.attn = VisionAttention(cfg, rngs=rngs)
    self.mlp = VisionMLP(cfg, rngs=rngs)

  def __call__(self, x, cos, sin, inputs: VisionInputs):
    x = x + self.attn(self.norm1(x), cos, sin, inputs)
    return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
  """LayerNorm, then M x M consecutive patches concatenated and projected to the LM width."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    merged = cfg.hidden_size * cfg.merge_unit
    self.norm = LayerNorm(cfg.hidden_size, cfg, rngs=rngs)
    self.linear_fc1 = Dense(merged, merged, cfg, rngs=rngs)
    self.linear_fc2 = Dense(merged, cfg.out_hidden_size, cfg, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """float[N, D] -> float[N / (M*M), out_hidden_size]."""
    x = self.norm(x).reshape(-1, self.cfg.hidden_size * self.cfg.merge_unit)
    return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=False))


class PatchEmbed(nnx.Module):
  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.proj = Dense(cfg.patch_dim, cfg.hidden_size, cfg, rngs=rngs)

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    """float[N, C*Tp*P*P] -> float[N, D]."""
    return self.proj(pixel_values)


class VisionModel(nnx.Module):
  """The Qwen3.5 vision tower: packed patches -> merged features in the LM width."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.patch_embed = PatchEmbed(cfg, rngs=rngs)
    self.pos_embed = PositionTable(cfg, rngs=rngs)

    @nnx.split_rngs(splits=cfg.depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=parallel.SCAN_METADATA)
    def make_blocks(block_rngs):
      return VisionBlock(cfg, rngs=block_rngs)

    self.blocks = make_blocks(rngs)
    self.merger = PatchMerger(cfg, rngs=rngs)

  def __call__(self, pixel_values, grid_thw=None, *, inputs: VisionInputs | None = None):
    """Encodes a packed batch of images/videos.

    Args:
      pixel_values: float[N, C*Tp*P*P] patches as produced by the processor.
      grid_thw: int[E, 3] grids (host values); used to build `inputs` when not given.
      inputs: precomputed `vision_inputs(grid_thw, cfg, pad_to)` (needed under `jit`).

    Returns:
      float[N / (M*M), out_hidden_size] features, entry after entry in `grid_thw` order.
    """
    if inputs is None:
      if grid_thw is None:
        raise ValueError("VisionModel needs grid_thw or precomputed inputs")
      inputs = vision_inputs(np.asarray(grid_thw), self.cfg)
    if pixel_values.shape[0] != inputs.segment_ids.shape[0]:
      raise ValueError(f"pixel_values has {pixel_values.shape[0]} patches but the grids describe "
                       f"{inputs.segment_ids.shape[0]}")
    return self.merger(self.encode(pixel_values, inputs))

  def encode(self, pixel_values: jax.Array, inputs: VisionInputs) -> jax.Array:
    """The blocks' output before the merger: float[N, C*Tp*P*P] -> float[N, D]."""
    cfg = self.cfg
    x = self.patch_embed(jnp.asarray(pixel_values).astype(cfg.dtype))
    table = self.pos_embed.embedding[...]
    pos = jnp.einsum("NK,NKD->ND", jnp.asarray(inputs.interp_weight),
                     table[jnp.asarray(inputs.interp_index)].astype(jnp.float32))
    x = x + pos.astype(x.dtype)
    cos, sin = rotary_cos_sin(jnp.asarray(inputs.positions), cfg)
    graphdef, state = nnx.split(self.blocks)

    def run_block(h, block_state):
      return nnx.merge(graphdef, block_state)(h, cos, sin, inputs), None

    if cfg.scan_layers:
      x, _ = jax.lax.scan(run_block, x, state)
    else:
      for i in range(cfg.depth):
        x, _ = run_block(x, jax.tree.map(lambda a, i=i: a[i], state))
    return x


# HF key suffix (under `model.visual.`) -> (our parameter path, conversion). `{i}` is the block.
HF_VISION_KEYS: tuple[tuple[str, str, str], ...] = (
    ("patch_embed.proj.weight", "patch_embed.proj.kernel", "conv"),
    ("patch_embed.proj.bias", "patch_embed.proj.bias", "copy"),
    ("pos_embed.weight", "pos_embed.embedding", "copy"),
    *((f"blocks.{{i}}.{hf}.weight", f"blocks.{ours}.{kind_name}", kind)
      for hf, ours, kind_name, kind in (
          ("norm1", "norm1", "scale", "copy"), ("norm2", "norm2", "scale", "copy"),
          ("attn.qkv", "attn.qkv", "kernel", "linear"), ("attn.proj", "attn.proj", "kernel", "linear"),
          ("mlp.linear_fc1", "mlp.linear_fc1", "kernel", "linear"),
          ("mlp.linear_fc2", "mlp.linear_fc2", "kernel", "linear"))),
    *((f"blocks.{{i}}.{name}.bias", f"blocks.{name}.bias", "copy")
      for name in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2")),
    ("merger.norm.weight", "merger.norm.scale", "copy"),
    ("merger.norm.bias", "merger.norm.bias", "copy"),
    ("merger.linear_fc1.weight", "merger.linear_fc1.kernel", "linear"),
    ("merger.linear_fc1.bias", "merger.linear_fc1.bias", "copy"),
    ("merger.linear_fc2.weight", "merger.linear_fc2.kernel", "linear"),
    ("merger.linear_fc2.bias", "merger.linear_fc2.bias", "copy"),
)


def _from_hf(array: np.ndarray, kind: str) -> np.ndarray:
  if kind == "linear":
    return array.T
  if kind == "conv":
    return array.reshape(array.shape[0], -1).T
  return array


def vision_params_from_hf(tensors: Mapping[str, np.ndarray], cfg: VisionConfig,
                          prefix: str = "model.visual.") -> dict[str, np.ndarray]:
  """Converts HF vision tensors to our flat `{path: array}` parameters (blocks stacked).

  Raises:
    KeyError: naming the first HF key that is missing.
  """
  params = {}
  for hf_key, path, kind in HF_VISION_KEYS:
    if "{i}" in hf_key:
      rows = []
      for i in range(cfg.depth):
        key = prefix + hf_key.format(i=i)
        if key not in tensors:
          raise KeyError(f"missing vision weight {key!r}")
        rows.append(_from_hf(np.asarray(tensors[key]), kind))
      params[path] = np.stack(rows)
    else:
      if prefix + hf_key not in tensors:
        raise KeyError(f"missing vision weight {prefix + hf_key!r}")
      params[path] = _from_hf(np.asarray(tensors[prefix + hf_key]), kind)
  return params


def vision_params_to_hf(params: Mapping[str, np.ndarray], cfg: VisionConfig,
                        prefix: str = "model.visual.") -> dict[str, np.ndarray]:
  """Inverse of `vision_params_from_hf`."""
  conv_shape = (cfg.hidden_size, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size,
                cfg.patch_size)
  tensors = {}
  for hf_key, path, kind in HF_VISION_KEYS:
    value = np.asarray(params[path])
    to_hf = {"linear": lambda a: a.T, "conv": lambda a: a.T.reshape(conv_shape),
             "copy": lambda a: a}[kind]
    if "{i}" in hf_key:
      for i in range(cfg.depth):
        tensors[prefix + hf_key.format(i=i)] = np.ascontiguousarray(to_hf(value[i]))
    else:
      tensors[prefix + hf_key] = np.ascontiguousarray(to_hf(value))
  return tensors


def vision_state_dict(model: VisionModel) -> dict[str, np.ndarray]:
  """The model's parameters as a flat `{dotted path: numpy array}` dict."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return {".".join(str(p) for p in path): np.asarray(var[...]) for path, var in flat}


def load_vision_params(model: VisionModel, params: Mapping[str, np.ndarray]) -> None:
  """Writes `{dotted path: array}` parameters into `model` in place, checking every shape.

  `model` may be abstract (from `nnx.eval_shape`): no random initialisation is then needed.
  """
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  seen = set()
  for path, var in flat:
    key = ".".join(str(p) for p in path)
    if key not in params:
      raise KeyError(f"no value for vision parameter {key!r}")
    value, current = np.asarray(params[key]), var.get_value()
    if value.shape != current.shape:
      raise ValueError(f"vision parameter {key!r}: shape {value.shape}, expected {current.shape}")
    # set_value also fills an abstract (`nnx.eval_shape`) model.
    var.set_value(jnp.asarray(value, dtype=current.dtype))
    seen.add(key)
  extra = sorted(set(params) - seen)
  if extra:
    raise KeyError(f"unexpected vision parameters {extra}")
