"""Gated full attention of Qwen3.5.

    q, gate = split_per_head(x W_q)            W_q: [D, N * 2H] (each head: H query, H gate)
    q, k    = rmsnorm(q), rmsnorm(x W_k)       zero-centred RMSNorm over H
    q, k    = mrope(q), mrope(k)               first rotary_dim features of each head
    o       = softmax(q k^T / sqrt(H) + mask) v      grouped-query: query head n reads kv head n // G
    out     = (o * sigmoid(gate)) W_o

The mask (bool[B, T, S], True = may attend) is built once per forward by the model: causal in
slot order, restricted to real tokens and, for packed rows, to the query's own segment.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zppo_jax import parallel
from zppo_jax.models.qwen3_5.cache import AttnCache
from zppo_jax.models.qwen3_5.config import ModelConfig
from zppo_jax.models.qwen3_5.layers import Dense, RMSNorm, apply_rotary


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                      cache_layout: bool = False) -> jax.Array:
  """Softmax attention with grouped key/value heads.

  Args:
    q: float[B, T, N, H] (already scaled by 1/sqrt(H)).
    k, v: float[B, S, K, H] with N % K == 0; with `cache_layout`, a cache's layout
      float[B, K, S, H] (read without a transpose of the whole cache).
    mask: bool[B, T, S].

  Returns:
    float[B, T, N, H]. A query that may attend to nothing gets the mean of the values (never NaN).
  """
  b, t, n, h = q.shape
  kv_heads = k.shape[1 if cache_layout else 2]
  kv_axes = 'BKSH' if cache_layout else 'BSKH'
  q = q.reshape(b, t, kv_heads, n // kv_heads, h)
  logits = jnp.einsum(f'BTKGH,{kv_axes}->BKGTS', q, k, preferred_element_type=jnp.float32)
  logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum(f'BKGTS,{kv_axes}->BTKGH', probs, v)
  return out.reshape(b, t, n, h)


def causal_block_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                           max_blocks: int = 8, min_block: int = 128) -> jax.Array:
  """`grouped_attention` for a mask that is causal in slot order (no cache: S = T).

  The queries are split into up to `max_blocks` blocks; block i attends to keys [0, end of block
  i) only, so the all-masked upper triangle of blocks is never computed (with 8 blocks, 56% of
  the full score matrix). Real tokens get exactly `grouped_attention`'s result; a query that may
  attend to nothing gets the mean of the values its block reads (finite, never NaN).

  Args:
    q: float[B, T, N, H] (already scaled). k, v: float[B, T, K, H]. mask: bool[B, T, T], False
      wherever the key slot is after the query slot.

  Returns:
    float[B, T, N, H].
  """
  t = q.shape[1]
  block = max(min_block, -(-t // max_blocks))
  if t <= block or t % block:
    return grouped_attention(q, k, v, mask)
  outs = []
  for start in range(0, t, block):
    end = start + block
    outs.append(grouped_attention(q[:, start:end], k[:, :end], v[:, :end],
                                  mask[:, start:end, :end]))
  return jnp.concatenate(outs, axis=1)


class Attention(nnx.Module):
  """Gated grouped-query attention with q/k RMSNorm and partial interleaved mRoPE.

  Parameters (HF names): q_proj.kernel [D, N*2H], k_proj.kernel [D, K*H], v_proj.kernel
  [D, K*H], o_proj.kernel [N*H, D], q_norm.weight [H], k_norm.weight [H].
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, n, kv, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    self.cfg = cfg
    self.q_proj = Dense(d, n * 2 * h, (parallel.EMBED, parallel.Q_HEADS), cfg, rngs=rngs)
    self.k_proj = Dense(d, kv * h, (parallel.EMBED, parallel.KV_HEADS), cfg, rngs=rngs)
    self.v_proj = Dense(d, kv * h, (parallel.EMBED, parallel.KV_HEADS), cfg, rngs=rngs)
    self.o_proj = Dense(n * h, d, (parallel.Q_HEADS, parallel.EMBED), cfg, rngs=rngs)
    self.q_norm = RMSNorm(h, cfg, rngs=rngs)
    self.k_norm = RMSNorm(h, cfg, rngs=rngs)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array,
               cache: AttnCache | None = None, index: jax.Array | None = None,
               ) -> tuple[jax.Array, AttnCache | None]:
    """Attends.

    Args:
      x: float[B, T, D] normed hidden states.
      cos, sin: float32[B, T, rotary_dim] from `layers.rotary_cos_sin`.
      mask: bool[B, T, S]; S = T without a cache, else the cache's slot count.
      cache: optional per-layer `AttnCache` (k, v [B, K, S, H]); the new keys and values are
        written at slots [index, index + T) and attention runs over all S slots.
      index: int32[], first slot to write (with a cache).

    Returns:
      (float[B, T, D], the updated cache or None).
    """
    cfg = self.cfg
    b, t, _ = x.shape
    n, kv, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q_gate = self.q_proj(x).reshape(b, t, n, 2 * h)
    q, gate = q_gate[..., :h], q_gate[..., h:].reshape(b, t, n * h)
    q = apply_rotary(self.q_norm(q), cos, sin) * jnp.asarray(h ** -0.5, cfg.dtype)
    k = apply_rotary(self.k_norm(self.k_proj(x).reshape(b, t, kv, h)), cos, sin)
    v = self.v_proj(x).reshape(b, t, kv, h)
    if cache is not None:
      start = (0, 0, index, 0)
      new = lambda x, like: jnp.swapaxes(x, 1, 2).astype(like.dtype)   # [B, K, T, H]
      cache = AttnCache(k=jax.lax.dynamic_update_slice(cache.k, new(k, cache.k), start),
                        v=jax.lax.dynamic_update_slice(cache.v, new(v, cache.v), start))
      out = grouped_attention(q, cache.k.astype(cfg.dtype), cache.v.astype(cfg.dtype), mask,
                              cache_layout=True)
    else:
      out = causal_block_attention(q, k, v, mask)
    out = out.reshape(b, t, n * h)
    out = out * jax.nn.sigmoid(gate)
    return self.o_proj(out), cache
