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

Host-side metadata: `vision_inputs`; HF weights: `vision_checkpoint`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zppo_jax import parallel
from zppo_jax.models.qwen3_5.layers import Dense
# The host-side metadata the encoder takes (re-exported: callers import it from here).
from zppo_jax.models.qwen3_5.vision_inputs import VisionInputs, vision_inputs  # noqa: F401
from zppo_jax.models.qwen3_5.vision_config import VisionConfig

_ACT = {
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


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


def _dense(in_features: int, out_features: int, cfg: VisionConfig, rngs: nnx.Rngs) -> Dense:
  """A replicated `Dense` with bias, initialised as the HF vision tower is."""
  return Dense(in_features, out_features, (_REPLICATED, _REPLICATED), cfg, rngs=rngs,
               use_bias=True, init_std=cfg.initializer_range)


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
    self.qkv = _dense(cfg.hidden_size, 3 * cfg.hidden_size, cfg, rngs)
    self.proj = _dense(cfg.hidden_size, cfg.hidden_size, cfg, rngs)

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
    self.linear_fc1 = _dense(cfg.hidden_size, cfg.intermediate_size, cfg, rngs)
    self.linear_fc2 = _dense(cfg.intermediate_size, cfg.hidden_size, cfg, rngs)

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
    self.linear_fc1 = _dense(merged, merged, cfg, rngs)
    self.linear_fc2 = _dense(merged, cfg.out_hidden_size, cfg, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """float[N, D] -> float[N / (M*M), out_hidden_size]."""
    x = self.norm(x).reshape(-1, self.cfg.hidden_size * self.cfg.merge_unit)
    return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=False))


class PatchEmbed(nnx.Module):
  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.proj = _dense(cfg.patch_dim, cfg.hidden_size, cfg, rngs)

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
