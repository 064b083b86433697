"""Building blocks of the Qwen3.5 decoder: linear maps, RMSNorms, the SwiGLU MLP and mRoPE.

Every parameter is created with its logical axis names (``zppo_jax.parallel``), stored in
``cfg.param_dtype`` and used in ``cfg.dtype``. Norm statistics, rotary angles and the softmax are
always computed in float32, as the reference does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zppo_jax import parallel
from zppo_jax.models.qwen3_5.config import ModelConfig

_INIT_STD = 0.02  # transformers' `initializer_range`


@jax.custom_vjp
def linear(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``x @ kernel`` for x float[..., in], kernel float[in, out]; the backward pass as autodiff's,
  with the output cotangent materialised before the kernel-gradient matmul.

  Without the barrier XLA fuses the producer of the cotangent (e.g. SiLU's derivative) into a
  copy that writes it transposed for the kernel-gradient dot; on CPU that strided fusion took
  longer than both matmuls of the backward pass together (bench/RESULTS.md, train step).
  """
  return jnp.dot(x, kernel)


def _linear_fwd(x, kernel):
  return jnp.dot(x, kernel), (x, kernel)


def _linear_bwd(res, dy):
  x, kernel = res
  dx = jnp.dot(dy, kernel.T)
  dy2 = jax.lax.optimization_barrier(dy.reshape(-1, dy.shape[-1]))
  dkernel = jnp.dot(x.reshape(-1, x.shape[-1]).T, dy2)
  return dx, dkernel.astype(kernel.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


class Dense(nnx.Module):
  """``y = x @ kernel (+ bias)``; kernel float[in, out] (HF stores its transpose).

  Args:
    in_features: input width.
    out_features: output width.
    names: logical axis names of the kernel (input axis, output axis); None = replicated.
    cfg: a model config with `dtype` and `param_dtype` (`ModelConfig`, `VisionConfig`).
    rngs: PRNG streams.
    use_bias: add a bias float[out] (the vision tower's layers have one, the decoder's none).
    init_std: standard deviation of the kernel's normal initialisation.
  """

  def __init__(self, in_features: int, out_features: int, names: tuple[str | None, str | None],
               cfg: ModelConfig, *, rngs: nnx.Rngs, use_bias: bool = False,
               init_std: float = _INIT_STD):
    self.kernel = parallel.param(jax.nn.initializers.normal(init_std), rngs.params(),
                                 (in_features, out_features), names, cfg.param_dtype)
    self.bias = parallel.param(jax.nn.initializers.zeros, None, (out_features,), names[1:],
                               cfg.param_dtype) if use_bias else None
    self.dtype = cfg.dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """float[..., in] -> float[..., out] in the compute dtype."""
    y = linear(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class RMSNorm(nnx.Module):
  """Qwen3.5's zero-centred RMSNorm: ``x / rms(x) * (1 + weight)``, weight initialised to 0.

  Statistics and the scaling are computed in float32 and the result cast back to the input's
  dtype (the reference multiplies before casting, unlike Llama).
  """

  def __init__(self, dim: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
    del rngs
    self.weight = parallel.param(jax.nn.initializers.zeros, None, (dim,), (parallel.NORM,),
                                 cfg.param_dtype)
    self.eps = cfg.rms_norm_eps

  def __call__(self, x: jax.Array) -> jax.Array:
    """float[..., dim] -> float[..., dim] (same dtype)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + self.weight[...].astype(jnp.float32))).astype(x.dtype)


class GatedRMSNorm(nnx.Module):
  """RMSNorm then a SiLU gate: ``weight * (x / rms(x)) * silu(gate)``, weight initialised to 1.

  Unlike `RMSNorm` the weight is used as is (not ``1 + weight``). Used on each GDN value head.
  """

  def __init__(self, dim: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
    del rngs
    self.weight = parallel.param(jax.nn.initializers.ones, None, (dim,), (parallel.NORM,),
                                 cfg.param_dtype)
    self.eps = cfg.rms_norm_eps

  def __call__(self, x: jax.Array, gate: jax.Array) -> jax.Array:
    """x, gate: float[..., dim] -> float[..., dim] in x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    normed = self.weight[...].astype(x.dtype) * normed.astype(x.dtype)
    return (normed * jax.nn.silu(gate.astype(jnp.float32))).astype(x.dtype)


class MLP(nnx.Module):
  """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``, D -> F -> D."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.gate_proj = Dense(d, f, (parallel.EMBED, parallel.MLP), cfg, rngs=rngs)
    self.up_proj = Dense(d, f, (parallel.EMBED, parallel.MLP), cfg, rngs=rngs)
    self.down_proj = Dense(f, d, (parallel.MLP, parallel.EMBED), cfg, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """float[B, T, D] -> float[B, T, D]."""
    hidden = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
    hidden = parallel.constrain(hidden, (parallel.BATCH, parallel.LENGTH, parallel.ACT_MLP))
    return self.down_proj(hidden)


def mrope_axis_of_frequency(cfg: ModelConfig) -> np.ndarray:
  """Which position axis (0 t, 1 h, 2 w) drives each rotary frequency: int[rotary_dim // 2].

  Interleaved mRoPE: frequency i belongs to axis 1 when i % 3 == 1 and i < 3 * section[1], to
  axis 2 when i % 3 == 2 and i < 3 * section[2], and to the temporal axis otherwise.
  """
  i = np.arange(cfg.rotary_dim // 2)
  axis = np.zeros_like(i)
  for a in (1, 2):
    axis[(i % 3 == a) & (i < 3 * cfg.mrope_section[a])] = a
  return axis


def rotary_cos_sin(positions: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
  """Cosines and sines of the interleaved multi-axis rotary embedding.

  Args:
    positions: int32[3, B, T] (t, h, w) positions; for text all three are the token index.
    cfg: model config.

  Returns:
    (cos, sin), each float32[B, T, rotary_dim]; the two halves repeat the same frequencies
    (the ``rotate_half`` layout).
  """
  rot = cfg.rotary_dim
  inv_freq = (1.0 / cfg.rope_theta ** (np.arange(0, rot, 2, dtype=np.float64) / rot))
  axis = mrope_axis_of_frequency(cfg)
  pos = jnp.moveaxis(positions.astype(jnp.float32)[axis], 0, -1)   # [B, T, rot/2]
  angles = pos * jnp.asarray(inv_freq, jnp.float32)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates the first ``rotary_dim`` features of every head (``rotate_half`` pairing).

  Args:
    x: float[B, T, N, H].
    cos, sin: float32[B, T, R] with R <= H even.

  Returns:
    float[B, T, N, H] in x's dtype; features R: pass through.
  """
  r = cos.shape[-1]
  x_rot, x_pass = x[..., :r], x[..., r:]
  cos, sin = cos[:, :, None].astype(x.dtype), sin[:, :, None].astype(x.dtype)
  half = r // 2
  rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
  return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1)
