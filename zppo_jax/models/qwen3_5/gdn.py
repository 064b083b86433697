"""Gated DeltaNet: the delta-rule math as pure functions, and the `GatedDeltaNet` token mixer.

The recurrence (one value head; q and k are L2-normalised, q is also scaled by 1/sqrt(Dk)):

    S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T      S_t: [Dk, Dv]
    o_t = S_t^T q_t

i.e. S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T: the state decays by
exp(g_t) <= 1, then the value it currently predicts for key k_t is moved towards v_t by the
"learning rate" beta_t in (0, 1). The layer computes, per token and from the normed hidden x:

    q, k, v = split(silu(causal_depthwise_conv(x W_qkv)))     kernel 4, with a rolling state
    q, k    = l2norm(q), l2norm(k);  q = q / sqrt(Dk)
    beta    = sigmoid(x W_b)                                  [Hv]
    g       = -exp(A_log) * softplus(x W_a + dt_bias)         [Hv], log-space decay
    o       = gated_rmsnorm(delta_rule(q, k, v, g, beta), z = x W_z) W_out

Key heads are shared by groups of Hv / Hk consecutive value heads (value head h reads key head
h // (Hv / Hk)). A token whose beta and g are both 0 leaves the state exactly unchanged: that is
how padding is made invisible. A `reset` flag clears the state before a token (packed sequences).

Three forms of the delta rule compute the same thing:
  * `delta_rule_naive`: a `lax.scan` of `delta_rule_step` over tokens (the reference);
  * `delta_rule_chunked`: the training and prefill form, linear in length. Inside a chunk of C
    tokens the C sequential updates are condensed with the UT transform into one unit lower
    triangular solve and a few matmuls; a scan over chunks carries the state;
  * `delta_rule_step`: one token (decode).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zppo_jax import parallel
from zppo_jax.models.qwen3_5.cache import GDNCache
from zppo_jax.models.qwen3_5.config import ModelConfig
from zppo_jax.models.qwen3_5.layers import Dense, GatedRMSNorm


def l2norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x * rsqrt(sum(x^2) + eps) over the last axis, as the reference (and FLA) compute it."""
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _group_keys(x: jax.Array, num_v_heads: int, axis: int) -> jax.Array:
  """Repeats each key head for the Hv / Hk consecutive value heads that read it."""
  groups = num_v_heads // x.shape[axis]
  return x if groups == 1 else jnp.repeat(x, groups, axis=axis)


def delta_rule_step(q, k, v, g, beta, state):
  """One token of the gated delta rule.

  Args:
    q: float[B, Hk, Dk] query (normalised and scaled).
    k: float[B, Hk, Dk] key (normalised).
    v: float[B, Hv, Dv] value.
    g: float[B, Hv] log decay (<= 0).
    beta: float[B, Hv] write strength.
    state: float32[B, Hv, Dk, Dv].

  Returns:
    (o float32[B, Hv, Dv], new state float32[B, Hv, Dk, Dv]).
  """
  hv = v.shape[1]
  q, k = (_group_keys(x.astype(jnp.float32), hv, 1) for x in (q, k))
  v, g, beta = (x.astype(jnp.float32) for x in (v, g, beta))
  # Two passes over the state (read S^T k and S^T q together, then write the new state) instead
  # of four: with decay e, S' = e S + k delta^T, so S'^T q = e S^T q + (k . q) delta.
  decay = jnp.exp(g)[..., None]                                             # [B, Hv, 1]
  reads = jnp.einsum('bhkv,bhnk->bhnv', state, jnp.stack([k, q], axis=2))   # [B, Hv, 2, Dv]
  delta = (v - decay * reads[:, :, 0]) * beta[..., None]
  out = decay * reads[:, :, 1] + jnp.sum(k * q, axis=-1)[..., None] * delta
  state = state * decay[..., None] + k[..., :, None] * delta[..., None, :]
  return out, state


def _zero_state(k, v):
  b, _, _, dk = k.shape
  return jnp.zeros((b, v.shape[2], dk, v.shape[3]), jnp.float32)


def delta_rule_naive(q, k, v, g, beta, initial_state=None, reset=None):
  """Token-by-token gated delta rule (the reference form).

  Args:
    q: float[B, T, Hk, Dk] queries (normalised and scaled).
    k: float[B, T, Hk, Dk] keys (normalised).
    v: float[B, T, Hv, Dv] values.
    g: float[B, T, Hv] log decays (<= 0).
    beta: float[B, T, Hv] write strengths.
    initial_state: optional float32[B, Hv, Dk, Dv] (zeros when None).
    reset: optional bool[B, T]; True clears the state before that token.

  Returns:
    (o float32[B, T, Hv, Dv], final state float32[B, Hv, Dk, Dv]).
  """
  state = _zero_state(k, v) if initial_state is None else initial_state.astype(jnp.float32)
  if reset is None:
    reset = jnp.zeros(k.shape[:2], bool)

  def body(state, xs):
    q_t, k_t, v_t, g_t, beta_t, reset_t = xs
    state = jnp.where(reset_t[:, None, None, None], 0.0, state)
    o_t, state = delta_rule_step(q_t, k_t, v_t, g_t, beta_t, state)
    return state, o_t

  xs = tuple(jnp.swapaxes(x, 0, 1) for x in (q, k, v, g, beta, reset))
  state, o = jax.lax.scan(body, state, xs)
  return jnp.swapaxes(o, 0, 1), state


def _exp_where(ok, log_x):
  """exp(log_x) where ok, else 0; values below exp(-20) ~ 2e-9 are flushed to exactly 0.

  Strong decays make exp() underflow into float32 subnormals, which x86 CPUs process tens of
  times slower than normal numbers; products with such tiny factors are below any tolerance.
  """
  ok = ok & (log_x > _LOG_TINY)
  return jnp.where(ok, jnp.exp(jnp.where(ok, log_x, 0.0)), 0.0)


_LOG_TINY = -20.0


def _forward_substitution(strict_lower):
  """(I + L)^-1 row by row: row i is e_i - sum_{j<i} L_ij row_j (C - 1 batched steps)."""
  c = strict_lower.shape[-1]
  eye = jnp.broadcast_to(jnp.eye(c, dtype=strict_lower.dtype), strict_lower.shape)

  def row(i, inverse):
    coeffs = jax.lax.dynamic_index_in_dim(strict_lower, i, axis=-2, keepdims=False)  # [..., C]
    update = -jnp.einsum('...j,...jc->...c', coeffs, inverse)
    return jax.lax.dynamic_update_index_in_dim(
        inverse, jax.lax.dynamic_index_in_dim(inverse, i, -2, False) + update, i, axis=-2)

  return jax.lax.fori_loop(1, c, row, eye)


_INVERSE_BLOCK = 16


@jax.custom_vjp
def _unit_lower_inverse(strict_lower):
  """(I + L)^-1 for strictly lower triangular L [..., C, C].

  Blockwise: the diagonal blocks of 16 are inverted together by forward substitution (15 small
  steps over a quarter of the data, instead of C - 1 steps over all of it: on CPU the row loop is
  bound by memory traffic), then block row i of the inverse follows from the rows above it,
  X_ij = -X_ii sum_{j<=k<i} L_ik X_kj, in a few batched matmuls. The gradient is the closed form
  dL = -strict_tril(M^T dM M^T) with M the inverse, not a differentiated loop.
  """
  c = strict_lower.shape[-1]
  if c <= _INVERSE_BLOCK or c % _INVERSE_BLOCK:
    return _forward_substitution(strict_lower)
  nb, blk = c // _INVERSE_BLOCK, _INVERSE_BLOCK
  lead = strict_lower.shape[:-2]
  lb = strict_lower.reshape(*lead, nb, blk, nb, blk)
  block = lambda i, j: lb[..., i, :, j, :]
  diag = _forward_substitution(jnp.stack([block(i, i) for i in range(nb)], axis=-3))
  zero = jnp.zeros((*lead, blk, blk), strict_lower.dtype)
  x = [[zero] * nb for _ in range(nb)]
  for i in range(nb):
    x[i][i] = diag[..., i, :, :]
    for j in range(i):
      acc = sum(block(i, k) @ x[k][j] for k in range(j, i))
      x[i][j] = -(x[i][i] @ acc)
  rows = [jnp.concatenate(x[i], axis=-1) for i in range(nb)]
  return jnp.concatenate(rows, axis=-2)


def _unit_lower_inverse_fwd(strict_lower):
  inverse = _unit_lower_inverse(strict_lower)
  return inverse, inverse


def _unit_lower_inverse_bwd(inverse, grad):
  t = jnp.swapaxes(inverse, -1, -2)
  return (-jnp.tril(t @ grad @ t, -1),)


_unit_lower_inverse.defvjp(_unit_lower_inverse_fwd, _unit_lower_inverse_bwd)


def _to_chunks(x, num_chunks, chunk):
  """[B, T, H, ...] -> [N, B, H, C, ...] (chunk axis first, for the scan)."""
  b, _, h = x.shape[:3]
  x = x.reshape(b, num_chunks, chunk, h, *x.shape[3:])
  return jnp.moveaxis(jnp.moveaxis(x, 1, 0), 2, 3)


def delta_rule_chunked(q, k, v, g, beta, initial_state=None, reset=None, chunk_size=64):
  """Chunked gated delta rule: same arguments and result as `delta_rule_naive`.

  Within a chunk, with cum_i = sum_{j<=i} g_j, D_ij = exp(cum_i - cum_j) for j <= i and M_ij = 1
  when no reset lies in (j, i], the values actually written (U) solve the unit lower triangular
  system (I + strict_tril(diag(beta) K K^T * D * M)) U = beta V - (beta k exp(cum) [no reset]) S_0,
  then O = (Q K^T * D * M) U + Q exp(cum) S_0 and the chunk's final state follows in closed form.
  Only the state crosses chunks, so the sequential part is T / C small matmul steps.
  """
  b, t, hk, dk = k.shape
  hv, dv = v.shape[2:]
  state = _zero_state(k, v) if initial_state is None else initial_state.astype(jnp.float32)
  chunk = min(chunk_size, t)
  pad = (-t) % chunk
  f32 = jnp.float32
  q, k = (_group_keys(x.astype(f32), hv, 2) for x in (q, k))
  v, g, beta = (x.astype(f32) for x in (v, g, beta))
  if reset is None:
    reset = jnp.zeros((b, t), bool)
  if pad:
    # Padded tokens have beta = 0 and g = 0, so they neither write nor decay the state.
    pad_width = lambda x: [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)
    q, k, v, g, beta, reset = (jnp.pad(x, pad_width(x)) for x in (q, k, v, g, beta, reset))
  n = (t + pad) // chunk
  q, k, v = (_to_chunks(x, n, chunk) for x in (q, k, v))           # [N, B, H, C, D]
  g, beta = (_to_chunks(x, n, chunk) for x in (g, beta))            # [N, B, H, C]
  seg = jnp.cumsum(_to_chunks(reset[:, :, None], n, chunk), axis=-1)  # [N, B, 1, C]

  cum = jnp.cumsum(g, axis=-1)
  causal = jnp.tril(jnp.ones((chunk, chunk), bool))
  visible = causal & (seg[..., :, None] == seg[..., None, :])       # [N, B, 1, C, C]
  decay = _exp_where(visible, cum[..., :, None] - cum[..., None, :])  # [N, B, H, C, C]
  from_start = _exp_where(seg == 0, cum)                            # decay since S_0, or 0
  to_end = _exp_where(seg == seg[..., -1:], cum[..., -1:] - cum)
  chunk_decay = from_start[..., -1]                                 # [N, B, H]

  k_beta = k * beta[..., None]
  inverse = _unit_lower_inverse(jnp.tril(jnp.einsum('nbhcd,nbhsd->nbhcs', k_beta, k) * decay, -1))
  new_values = jnp.einsum('nbhcs,nbhsv->nbhcv', inverse, v * beta[..., None])
  state_reads = jnp.einsum('nbhcs,nbhsk->nbhck', inverse, k_beta * from_start[..., None])
  intra = jnp.einsum('nbhcd,nbhsd->nbhcs', q, k) * decay
  q_start = q * from_start[..., None]
  k_end = k * to_end[..., None]

  def body(state, xs):
    new_values, state_reads, intra, q_start, k_end, chunk_decay = xs
    written = new_values - jnp.einsum('bhck,bhkv->bhcv', state_reads, state)
    o = jnp.einsum('bhck,bhkv->bhcv', q_start, state) + jnp.einsum('bhcs,bhsv->bhcv', intra, written)
    state = state * chunk_decay[..., None, None] + jnp.einsum('bhck,bhcv->bhkv', k_end, written)
    return state, o

  state, o = jax.lax.scan(body, state, (new_values, state_reads, intra, q_start, k_end, chunk_decay))
  o = jnp.moveaxis(jnp.moveaxis(o, 0, 1), 3, 2).reshape(b, n * chunk, hv, dv)
  return o[:, :t], state


def causal_conv(x, kernel, state=None, valid=None, reset=None):
  """Causal depthwise convolution over the valid tokens only, with a rolling state.

  Token t sees itself and the K - 1 previous *valid* entries of [state, x] that are not cut off
  by a reset. Padding therefore never enters a window: a left- or right-padded row produces the
  same outputs and final state as the unpadded row.

  Args:
    x: float[B, T, C].
    kernel: float[K, C]; tap K - 1 multiplies the current token.
    state: optional float[B, C, K - 1], the last K - 1 inputs before x (zeros when None).
    valid: optional bool[B, T], False for padding.
    reset: optional bool[B, T], True where a new sequence starts (cuts the window).

  Returns:
    (out float[B, T, C] before the activation, new state float[B, C, K - 1] holding the last
    K - 1 valid inputs of the last sequence, zeros where it is shorter).
  """
  b, t, c = x.shape
  taps = kernel.shape[0]
  if state is None:
    state = jnp.zeros((b, c, taps - 1), x.dtype)
  if valid is None:
    valid = jnp.ones((b, t), bool)
  if reset is None:
    reset = jnp.zeros((b, t), bool)
  entries = jnp.concatenate([jnp.swapaxes(state, 1, 2).astype(x.dtype), x], axis=1)  # [B, L, C]
  length = entries.shape[1]
  valid_all = jnp.concatenate([jnp.ones((b, taps - 1), bool), valid], axis=1)
  rank = jnp.cumsum(valid_all, axis=1, dtype=jnp.int32)            # 1-based rank of valid entries
  # slot_of_rank[b, r] = index of the valid entry of rank r.
  target = jnp.where(valid_all, rank, length + 1)
  rows = jnp.arange(b)[:, None]
  slot_of_rank = jnp.zeros((b, length + 1), jnp.int32).at[rows, target].set(
      jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length)), mode='drop')
  sequence = jnp.concatenate(
      [jnp.zeros((b, taps - 1), jnp.int32), jnp.cumsum(reset, axis=1, dtype=jnp.int32)], axis=1)

  def previous(ranks, want_sequence):
    """Entries of the given ranks [B, M], zeroed when missing or in another sequence."""
    slots = jnp.take_along_axis(slot_of_rank, jnp.clip(ranks, 0, length), axis=1)
    ok = (ranks >= 1) & (jnp.take_along_axis(sequence, slots, axis=1) == want_sequence)
    return jnp.where(ok[..., None], jnp.take_along_axis(entries, slots[..., None], axis=1), 0)

  own_rank, own_sequence = rank[:, taps - 1:], sequence[:, taps - 1:]
  kernel = kernel.astype(x.dtype)
  out = x * kernel[taps - 1]
  for j in range(1, taps):
    out = out + previous(own_rank - j, own_sequence) * kernel[taps - 1 - j]
  last_ranks = rank[:, -1:] - jnp.arange(taps - 2, -1, -1)         # oldest first
  new_state = previous(last_ranks, sequence[:, -1:])               # [B, K - 1, C]
  return out, jnp.swapaxes(new_state, 1, 2)


class ConvKernel(nnx.Module):
  """Taps of the causal depthwise conv: kernel float[K, C] (HF: conv1d.weight [C, 1, K])."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    taps = cfg.linear_conv_kernel_dim
    bound = 1.0 / np.sqrt(taps)  # PyTorch's default init of a depthwise conv
    init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    self.kernel = parallel.param(init, rngs.params(), (taps, cfg.gdn_conv_dim),
                                 (parallel.CONV_KERNEL, parallel.GDN_CONV), cfg.param_dtype)


class GatedDeltaNet(nnx.Module):
  """The Gated DeltaNet token mixer (see the module docstring for the equations).

  Parameters (HF names): in_proj_qkv.kernel [D, C], in_proj_z.kernel [D, Hv*Dv],
  in_proj_b.kernel [D, Hv], in_proj_a.kernel [D, Hv], conv1d.kernel [K, C] (HF: weight [C, 1, K]),
  dt_bias [Hv], A_log [Hv], norm.weight [Dv], out_proj.kernel [Hv*Dv, D].
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, c, hv = cfg.hidden_size, cfg.gdn_conv_dim, cfg.linear_num_value_heads
    self.cfg = cfg
    self.in_proj_qkv = Dense(d, c, (parallel.EMBED, parallel.GDN_CONV), cfg, rngs=rngs)
    self.in_proj_z = Dense(d, cfg.gdn_value_dim, (parallel.EMBED, parallel.GDN_HEADS), cfg,
                           rngs=rngs)
    self.in_proj_b = Dense(d, hv, (parallel.EMBED, parallel.GDN_HEADS), cfg, rngs=rngs)
    self.in_proj_a = Dense(d, hv, (parallel.EMBED, parallel.GDN_HEADS), cfg, rngs=rngs)
    self.conv1d = ConvKernel(cfg, rngs=rngs)
    self.dt_bias = parallel.param(jax.nn.initializers.ones, None, (hv,), (parallel.GDN_HEADS,),
                                  cfg.param_dtype)
    log_a = lambda key, shape, dtype: jnp.log(
        jax.random.uniform(key, shape, jnp.float32, 0.01, 16.0)).astype(dtype)
    self.A_log = parallel.param(log_a, rngs.params(), (hv,), (parallel.GDN_HEADS,),
                                cfg.param_dtype)
    self.norm = GatedRMSNorm(cfg.linear_value_head_dim, cfg, rngs=rngs)
    self.out_proj = Dense(cfg.gdn_value_dim, d, (parallel.GDN_HEADS, parallel.EMBED), cfg,
                          rngs=rngs)

  def __call__(self, x: jax.Array, valid: jax.Array, reset: jax.Array | None = None,
               cache: GDNCache | None = None) -> tuple[jax.Array, GDNCache | None]:
    """Mixes tokens.

    Args:
      x: float[B, T, D] normed hidden states.
      valid: bool[B, T], False for padding (which is made invisible to every other token).
      reset: optional bool[B, T], True where a packed sequence starts.
      cache: optional per-layer `GDNCache` (conv [B, C, K-1], recurrent [B, Hv, Dk, Dv]) to
        continue from; the updated one is returned.

    Returns:
      (float[B, T, D], the new cache or None).
    """
    cfg = self.cfg
    b, t, _ = x.shape
    hk, hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    dk, dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
    x = jnp.where(valid[..., None], x, 0).astype(cfg.dtype)
    mixed, conv_state = causal_conv(self.in_proj_qkv(x), self.conv1d.kernel[...],
                                    None if cache is None else cache.conv, valid, reset)
    mixed = jax.nn.silu(mixed)
    q = mixed[..., :hk * dk].reshape(b, t, hk, dk).astype(jnp.float32)
    k = mixed[..., hk * dk:2 * hk * dk].reshape(b, t, hk, dk).astype(jnp.float32)
    v = mixed[..., 2 * hk * dk:].reshape(b, t, hv, dv)
    q = l2norm(q) * (dk ** -0.5)
    k = l2norm(k)
    # Padding gets beta = 0 and g = 0: it neither writes to nor decays the state.
    beta = jnp.where(valid[..., None], jax.nn.sigmoid(self.in_proj_b(x).astype(jnp.float32)), 0)
    a = self.in_proj_a(x).astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32)
    g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(a)
    g = jnp.where(valid[..., None], g, 0)
    state = None if cache is None else cache.recurrent
    if t == 1 and state is not None and reset is None:
      o, state = delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state)
      o = o[:, None]
    else:
      o, state = delta_rule_chunked(q, k, v, g, beta, state, reset, cfg.gdn_chunk_size)
    z = self.in_proj_z(x).reshape(b, t, hv, dv)
    o = self.norm(o.astype(cfg.dtype), z).reshape(b, t, hv * dv)
    new_cache = None if cache is None else GDNCache(conv=conv_state.astype(cache.conv.dtype),
                                                    recurrent=state)
    return self.out_proj(o), new_cache
