"""The optimizer: global-norm clipping, then AdamW with a configurable moment dtype (optax).

optax's own `adamw` stores only the first moment in a chosen dtype; the paper keeps both moments
in bf16, so `scale_by_adam` here stores μ and ν in `state_dtype` and does the arithmetic in fp32.
The update matches `torch.optim.AdamW`: bias-corrected moments, ε added to √ν̂, decoupled weight
decay scaled by the learning rate.

Updates that land (shared/ZPPO_SPEC.md §3): at lr 1e-6 an AdamW step is far below half a bf16 ulp
of a typical weight, so `p + u` rounded back to bf16 is `p`. Two remedies, as in the paper's
AnyPrecisionAdamW: fp32 master weights (`master_params`: the learner keeps and updates fp32
copies, computes with them cast back to the model's dtype), or Kahan-compensated updates of the
bf16 weights (`apply_updates` with a compensation buffer holding what rounding lost).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

STATE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# "none": the parameters are updated in their own dtype (plain `optax.apply_updates`).
MASTER_DTYPES = ("float32", "none")


class ScaleByAdamState(NamedTuple):
  count: jax.Array  # int32[], number of applied updates
  mu: optax.Updates
  nu: optax.Updates


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                  state_dtype=jnp.float32) -> optax.GradientTransformation:
  """Adam's bias-corrected direction m̂ / (√v̂ + ε), moments stored in `state_dtype`."""

  def init(params):
    zeros = lambda p: jnp.zeros(p.shape, state_dtype)
    return ScaleByAdamState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                            jax.tree.map(zeros, params))

  def update(grads, state, params=None):
    del params
    count = state.count + 1
    f32 = lambda x: x.astype(jnp.float32)
    mu = jax.tree.map(lambda m, g: b1 * f32(m) + (1 - b1) * f32(g), state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * f32(v) + (1 - b2) * jnp.square(f32(g)), state.nu, grads)
    c1 = 1 - b1 ** count.astype(jnp.float32)
    c2 = 1 - b2 ** count.astype(jnp.float32)
    updates = jax.tree.map(lambda m, v, g: ((m / c1) / (jnp.sqrt(v / c2) + eps)).astype(g.dtype),
                           mu, nu, grads)
    cast = lambda t: jax.tree.map(lambda x: x.astype(state_dtype), t)
    return updates, ScaleByAdamState(count, cast(mu), cast(nu))

  return optax.GradientTransformation(init, update)


def make_optimizer(learning_rate: float = 1e-6, *, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.1, max_grad_norm: float | None = 1.0,
                   state_dtype: str = "float32", warmup_steps: int = 0
                   ) -> optax.GradientTransformation:
  """Clip by global norm → Adam direction → decoupled weight decay → scale by −lr.

  Args:
    learning_rate: learning rate η (1e-6 in the paper, constant: no warm-up).
    b1: β₁.
    b2: β₂.
    eps: ε added to √v̂.
    weight_decay: λ, decoupled (applied to every parameter, as `torch.optim.AdamW` on all params).
    max_grad_norm: global-norm clip threshold; None disables clipping.
    state_dtype: "float32" or "bfloat16" storage of both Adam moments.
    warmup_steps: the first this many updates scale η linearly, η·k/warmup_steps for the k-th;
      0 keeps η constant from the first update.
  """
  if state_dtype not in STATE_DTYPES:
    raise ValueError(f"state_dtype must be one of {sorted(STATE_DTYPES)}, got {state_dtype!r}")
  parts = [] if max_grad_norm is None else [optax.clip_by_global_norm(max_grad_norm)]
  parts += [scale_by_adam(b1, b2, eps, STATE_DTYPES[state_dtype])]
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  if warmup_steps > 0:   # η/W at the first update, η from the W-th on
    parts.append(optax.scale_by_learning_rate(optax.linear_schedule(
        learning_rate / warmup_steps, learning_rate, transition_steps=warmup_steps - 1)))
  else:
    parts.append(optax.scale(-learning_rate))
  return optax.chain(*parts)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The optimizer's fields, named as in the run config's `optim` group:
  `OptimConfig(**config.optim)`.

  Attributes:
    lr: η (1e-6, constant).
    warmup_steps: linear warm-up of η over this many optimizer updates (0, the paper's: none).
    b1: β₁ (0.9).
    b2: β₂ (0.999).
    eps: ε (1e-8).
    weight_decay: λ, decoupled (0.1).
    clip_norm: global-norm clip (1.0); 0 = off.
    state_dtype: storage of the Adam moments, "float32" (the default here, so that fp32 runs and
      tests are exact) or "bfloat16" (the paper's, set in the run config).
    master_dtype: "float32" keeps fp32 master copies of parameters stored in a narrower dtype
      (bf16) and updates those; "none" updates the parameters in their own dtype. fp32
      parameters are their own masters either way.
    kahan: update narrow parameters in place with Kahan compensation (a buffer of their dtype)
      instead of keeping master copies; `master_dtype` is then unused.
  """
  lr: float = 1e-6
  warmup_steps: int = 0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: float = 1.0
  state_dtype: str = "float32"
  master_dtype: str = "float32"
  kahan: bool = False

  def __post_init__(self):
    if self.state_dtype not in STATE_DTYPES:
      raise ValueError(f"optim.state_dtype {self.state_dtype!r} not in {sorted(STATE_DTYPES)}")
    if self.warmup_steps < 0:
      raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
    if self.master_dtype not in MASTER_DTYPES:
      raise ValueError(f"optim.master_dtype {self.master_dtype!r} not in {MASTER_DTYPES}")

  @property
  def masters(self) -> bool:
    """Whether narrow parameters get fp32 master copies."""
    return self.master_dtype == "float32" and not self.kahan

  def optimizer(self) -> optax.GradientTransformation:
    return make_optimizer(self.lr, b1=self.b1, b2=self.b2, eps=self.eps,
                          weight_decay=self.weight_decay, max_grad_norm=self.clip_norm or None,
                          state_dtype=self.state_dtype, warmup_steps=self.warmup_steps)


def _narrow(x) -> bool:
  """A floating-point leaf stored in fewer bits than fp32 (bf16, fp16)."""
  return jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32


def master_params(params, cfg: OptimConfig):
  """The parameters the optimizer updates: narrow leaves as fp32 masters when `cfg.masters`,
  every leaf unchanged otherwise (fp32 trees are returned as they are)."""
  if not cfg.masters:
    return params
  return jax.tree.map(lambda x: x.astype(jnp.float32) if _narrow(x) else x, params)


def compute_params(params, dtypes):
  """`params` cast to the model's own dtypes (`dtypes`: the same tree with a dtype per leaf):
  what the forward pass and the sampler use. A no-op for leaves already in their dtype."""
  return jax.tree.map(lambda x, d: x if x.dtype == d else x.astype(d), params, dtypes)


def init_compensation(params, cfg: OptimConfig):
  """The Kahan buffer (zeros in each parameter's dtype) when `cfg.kahan`, else None."""
  if not cfg.kahan:
    return None
  return jax.tree.map(jnp.zeros_like, params)


def apply_updates(params, updates, compensation=None):
  """`params + updates` in each parameter's dtype; with a Kahan buffer, compensated.

  Kahan (AnyPrecisionAdamW's form): the buffer c accumulates the update, the parameter takes
  p + c rounded to its dtype, and c keeps what the rounding lost, c += p_old - p_new. The sums
  are formed in fp32, so c carries the sub-ulp remainder across steps.

  Returns:
    (new params, new compensation or None).
  """
  if compensation is None:
    return optax.apply_updates(params, updates), None

  f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
  acc = jax.tree.map(lambda u, c: f32(c) + f32(u), updates, compensation)
  new = jax.tree.map(lambda p, a: (f32(p) + a).astype(p.dtype), params, acc)
  kept = jax.tree.map(lambda a, p, n, c: (a - (f32(n) - f32(p))).astype(c.dtype),
                      acc, params, new, compensation)
  return new, kept
