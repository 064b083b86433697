"""Typed decoding caches for the hybrid decoder.

A `Cache` holds one typed entry per position of the layer cycle (`ModelConfig.cycle`): an
`AttnCache` for a full-attention layer, a `GDNCache` for a Gated DeltaNet layer. Like the scanned
parameters, each entry stacks the cycle's R = `cfg.num_cycles` repetitions on a leading axis, so
layer ``i`` of the model lives at ``cache.layers[i % P]`` index ``[i // P]`` (P = len(cycle)).
For the released models (3 GDN + 1 attention) that is 4 entries with R = 6, 8 or 16.

Shapes (R repetitions, B rows, S slots):
  AttnCache.k, .v        [R, B, K, S, H]   in the cache dtype (heads before slots: the layout the
                                           score and value matmuls read without a transpose)
  GDNCache.conv          [R, B, C, kernel - 1]  the last inputs of the causal conv
  GDNCache.recurrent     [R, B, Hv, Dk, Dv]  float32 delta-rule state
  Cache.kv_mask          bool[B, S]  slot holds a real token
  Cache.index            int32[]     next free slot (shared by all rows)
  Cache.next_position    int32[B]    rotary position the next token of each row takes
"""
from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp
from flax import struct

from zppo_jax.models.qwen3_5.config import ModelConfig


@struct.dataclass
class AttnCache:
  """Keys and values of one full-attention layer of the cycle: float[R, B, K, S, H] each."""
  k: jax.Array
  v: jax.Array


@struct.dataclass
class GDNCache:
  """Conv inputs float[R, B, C, kernel - 1] and delta-rule state float32[R, B, Hv, Dk, Dv]."""
  conv: jax.Array
  recurrent: jax.Array


LayerCache = Union[AttnCache, GDNCache]


@struct.dataclass
class Cache:
  """Decoding state of the whole model (see the module docstring for shapes)."""
  layers: tuple[LayerCache, ...]
  kv_mask: jax.Array
  index: jax.Array
  next_position: jax.Array

  @property
  def batch_size(self) -> int:
    return self.kv_mask.shape[0]

  @property
  def max_len(self) -> int:
    """S, the number of key/value slots."""
    return self.kv_mask.shape[1]

  def map_rows(self, fn) -> "Cache":
    """Applies ``fn`` (an array -> array map along axis 0 = rows) to every per-row array."""
    layers = tuple(jax.tree.map(lambda x: jnp.moveaxis(fn(jnp.moveaxis(x, 1, 0)), 0, 1), entry)
                   for entry in self.layers)
    return self.replace(layers=layers, kv_mask=fn(self.kv_mask),
                        next_position=fn(self.next_position))

  def repeat_rows(self, n: int) -> "Cache":
    """Each row repeated ``n`` times in place (row b becomes rows b*n .. b*n + n - 1)."""
    return self.map_rows(lambda x: jnp.repeat(x, n, axis=0))

  def take_rows(self, idx: jax.Array) -> "Cache":
    """The rows ``idx`` (int[B']) in that order."""
    return self.map_rows(lambda x: jnp.take(x, idx, axis=0))


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> Cache:
  """An empty cache for ``batch`` rows and ``max_len`` key/value slots.

  Args:
    cfg: model config.
    batch: B.
    max_len: S, prompt plus generated tokens; writing past it is undefined.
    dtype: dtype of keys, values and conv inputs (default ``cfg.dtype``); the delta-rule state
      is always float32.
  """
  dtype = cfg.dtype if dtype is None else dtype
  r = cfg.num_cycles
  layers = []
  for layer_type in cfg.cycle:
    if layer_type == "full_attention":
      kv, h = cfg.num_key_value_heads, cfg.head_dim
      shape = (r, batch, kv, max_len, h)
      layers.append(AttnCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype)))
    else:
      layers.append(GDNCache(
          conv=jnp.zeros((r, batch, cfg.gdn_conv_dim, cfg.linear_conv_kernel_dim - 1), dtype),
          recurrent=jnp.zeros((r, batch, cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                               cfg.linear_value_head_dim), jnp.float32)))
  return Cache(layers=tuple(layers), kv_mask=jnp.zeros((batch, max_len), bool),
               index=jnp.zeros((), jnp.int32), next_position=jnp.zeros((batch,), jnp.int32))
