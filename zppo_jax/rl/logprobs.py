"""Chosen-token log-probabilities, entropy and JSD from hidden states, without full logits.

A 12k-token response over Qwen3.5's 248k vocabulary has 12 GB of fp32 logits, so the LM head is
never applied to a whole sequence at once. The tokens are flattened and scanned in chunks of
`token_chunk`; inside a chunk the vocabulary is scanned in chunks of `vocab_chunk` with an online
log-sum-exp (running max m, Σ e^{z−m} and Σ e^{z−m} z), so the largest live logits block is
`[token_chunk, vocab_chunk]`. The backward passes are written by hand (`jax.custom_vjp`): they
recompute each logits block from the saved hidden states and per-token statistics, so training
memory does not grow with T × V either.

Gradients, per token with logits z, p = softmax(z), chosen token y, entropy H:
  ∂ log p_y / ∂z = onehot(y) − p,     ∂H/∂z = −p ⊙ (log p + H),
  ∂JSD_β/∂z_S = (1 − β) p_S ⊙ (log p_S − log m − KL(p_S ‖ m)),   m = (1 − β) p_S + β p_T.
The teacher side of the JSD is treated as a constant (it receives a zero cotangent).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array


def _token_chunks(x: Array, chunk: int) -> Array:
  """[N, ...] -> [ceil(N / chunk), chunk, ...], zero-padded."""
  n = x.shape[0]
  pad = -n % chunk
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((n + pad) // chunk, chunk, *x.shape[1:])


def _vocab_chunks(kernel: Array, chunk: int) -> tuple[Array, Array]:
  """[D, V] -> ([nV, D, chunk] kernel blocks, int32[nV] first column of each block)."""
  d, v = kernel.shape
  pad = -v % chunk
  kernel = jnp.pad(kernel, ((0, 0), (0, pad)))
  blocks = kernel.reshape(d, (v + pad) // chunk, chunk).transpose(1, 0, 2)
  return blocks, jnp.arange(0, v + pad, chunk, dtype=jnp.int32)


def _unchunk_kernel(blocks: Array, v: int) -> Array:
  """Inverse of `_vocab_chunks` (drops the padding columns)."""
  n, d, c = blocks.shape
  return blocks.transpose(1, 0, 2).reshape(d, n * c)[:, :v]


def _block_logits(h: Array, w: Array, offset: Array, v: int) -> tuple[Array, Array, Array]:
  """fp32 logits of one [tokens, vocab-block] tile, -inf on padding columns."""
  z = jnp.dot(h, w, preferred_element_type=jnp.float32)
  cols = offset + jnp.arange(w.shape[1], dtype=jnp.int32)
  valid = cols < v
  return jnp.where(valid[None, :], z, -jnp.inf), cols, valid


def _online_lse(h: Array, blocks: Array, offsets: Array, v: int, targets: Array | None = None):
  """Online log-sum-exp over vocab blocks: returns (lse, E_p[z], z_target) each float32[tokens]."""
  n = h.shape[0]

  def body(carry, inp):
    m, s, t, zy = carry
    w, off = inp
    z, cols, valid = _block_logits(h, w, off, v)
    m_new = jnp.maximum(m, jnp.max(z, axis=-1))
    scale = jnp.exp(m - m_new)
    e = jnp.exp(z - m_new[:, None])
    s = s * scale + jnp.sum(e, axis=-1)
    t = t * scale + jnp.sum(e * jnp.where(valid[None, :], z, 0.0), axis=-1)
    if targets is not None:
      zy = zy + jnp.sum(jnp.where(cols[None, :] == targets[:, None], z, 0.0), axis=-1)
    return (m_new, s, t, zy), None

  zeros = jnp.zeros((n,), jnp.float32)
  init = (jnp.full((n,), -jnp.inf, jnp.float32), zeros, zeros, zeros)
  (m, s, t, zy), _ = jax.lax.scan(body, init, (blocks, offsets))
  return m + jnp.log(s), t / s, zy


# --- Chosen-token log-probs and entropy. ---


def _logits_cotangent(onehot, p, ent_term, g_lp, g_ent):
  """dz of one logits tile from the log-prob and entropy cotangents (module docstring),
  materialised before the kernel-gradient matmul (see `layers.linear`: no transposing fusion)."""
  return jax.lax.optimization_barrier(g_lp[:, None] * (onehot - p) - g_ent[:, None] * ent_term)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _logprobs_entropy(h, kernel, targets, token_chunk, vocab_chunk):
  out, _ = _logprobs_entropy_fwd(h, kernel, targets, token_chunk, vocab_chunk)
  return out


def _logprobs_entropy_fwd(h, kernel, targets, token_chunk, vocab_chunk):
  n, v = h.shape[0], kernel.shape[1]
  blocks, offsets = _vocab_chunks(kernel, vocab_chunk)

  def per_chunk(_, inp):
    hc, yc = inp
    lse, mean_z, zy = _online_lse(hc, blocks, offsets, v, yc)
    return None, (zy - lse, lse - mean_z, lse)

  _, (lp, ent, lse) = jax.lax.scan(
      per_chunk, None, (_token_chunks(h, token_chunk), _token_chunks(targets, token_chunk)))
  lp, ent, lse = (x.reshape(-1)[:n] for x in (lp, ent, lse))
  return (lp, ent), (h, kernel, targets, lse, ent)


def _logprobs_entropy_bwd(token_chunk, vocab_chunk, res, cotangents):
  h, kernel, targets, lse, ent = res
  g_lp, g_ent = cotangents
  v = kernel.shape[1]
  blocks, offsets = _vocab_chunks(kernel, vocab_chunk)
  chunked = [_token_chunks(x, token_chunk) for x in (h, targets, lse, ent, g_lp, g_ent)]

  def per_chunk(d_blocks, inp):
    hc, yc, lse_c, ent_c, glp_c, gent_c = inp

    def per_block(dh, binp):
      w, dw, off = binp
      z, cols, valid = _block_logits(hc, w, off, v)
      logp = z - lse_c[:, None]
      p = jnp.where(valid[None, :], jnp.exp(logp), 0.0)
      onehot = (cols[None, :] == yc[:, None]).astype(jnp.float32)
      ent_term = jnp.where(valid[None, :], p * (logp + ent_c[:, None]), 0.0)
      dz = _logits_cotangent(onehot, p, ent_term, glp_c, gent_c)
      dh = dh + jnp.dot(dz, w.T.astype(jnp.float32))
      dw = dw + jnp.dot(hc.T.astype(jnp.float32), dz)
      return dh, dw

    dh0 = jnp.zeros(hc.shape, jnp.float32)
    dh, d_blocks = jax.lax.scan(per_block, dh0, (blocks, d_blocks, offsets))
    return d_blocks, dh

  d_blocks0 = jnp.zeros(blocks.shape, jnp.float32)
  d_blocks, dh = jax.lax.scan(per_chunk, d_blocks0, tuple(chunked))
  dh = dh.reshape(-1, h.shape[1])[:h.shape[0]].astype(h.dtype)
  dkernel = _unchunk_kernel(d_blocks, v).astype(kernel.dtype)
  return dh, dkernel, None


_logprobs_entropy.defvjp(_logprobs_entropy_fwd, _logprobs_entropy_bwd)


# --- The same with the logits kept for the backward pass (when they are small enough). ---


@jax.custom_vjp
def _logprobs_entropy_kept(h, kernel, targets):
  out, _ = _logprobs_entropy_kept_fwd(h, kernel, targets)
  return out


def _logprobs_entropy_kept_fwd(h, kernel, targets):
  """All [N, V] logits in one matmul, kept as a residual: the backward pass reads them instead of
  recomputing the LM-head matmul (a quarter of its FLOPs). They are all live anyway, so nothing is
  scanned: a scan's stacked output would be zero-filled and copied, and each row's logits are the
  same bits whatever the number of rows in the matmul."""
  z = jnp.dot(h, kernel, preferred_element_type=jnp.float32)
  lse = jax.nn.logsumexp(z, axis=-1)
  p = jnp.exp(z - lse[:, None])
  ent = lse - jnp.sum(p * z, axis=-1)
  zy = jnp.take_along_axis(z, targets[:, None], axis=-1)[:, 0]
  return (zy - lse, ent), (h, kernel, targets, lse, ent, z)


def _logprobs_entropy_kept_bwd(res, cotangents):
  """One logits cotangent for all N tokens (the size of the kept logits, whose buffer it may
  reuse), then the two gradient matmuls over all of them: the kernel gradient's contraction over
  N tokens runs about twice as fast as the same sum over token chunks."""
  h, kernel, targets, lse, ent, z = res
  g_lp, g_ent = cotangents
  logp = z - lse[:, None]
  p = jnp.exp(logp)
  onehot = (jnp.arange(kernel.shape[1], dtype=jnp.int32)[None, :] == targets[:, None]
            ).astype(jnp.float32)
  dz = _logits_cotangent(onehot, p, p * (logp + ent[:, None]), g_lp, g_ent)
  dh = jnp.dot(dz, kernel.T.astype(jnp.float32)).astype(h.dtype)
  dw = jnp.dot(h.T.astype(jnp.float32), dz).astype(kernel.dtype)
  return dh, dw, None


_logprobs_entropy_kept.defvjp(_logprobs_entropy_kept_fwd, _logprobs_entropy_kept_bwd)


def chunked_logprobs(hidden: Array, kernel: Array, targets: Array, *, token_chunk: int = 1024,
                     vocab_chunk: int | None = None, keep_logits_bytes: int = 0
                     ) -> tuple[Array, Array]:
  """Log-probs of `targets` and the entropy, from hidden states and the LM-head kernel.

  Args:
    hidden: float[B, T, D] final-norm hidden states (bf16 or fp32; logits are fp32).
    kernel: float[D, V] LM-head kernel (`model.lm_head_kernel()`).
    targets: int[B, T] token whose log-prob to gather at each position (any value on padding).
    token_chunk: tokens per scanned chunk (B·T is flattened first).
    vocab_chunk: vocabulary columns per online-softmax block; None = the whole vocabulary.
    keep_logits_bytes: when the fp32 logits of all B·T tokens take at most this many bytes (and
      the vocabulary is not chunked), they are kept for the backward pass instead of recomputed
      (same values; one LM-head matmul fewer, B·T·V·4 bytes more live memory, and as much again
      for their cotangent during the backward pass). 0: never.

  Returns:
    (logprobs float32[B, T], entropy float32[B, T]); both differentiable w.r.t. hidden and kernel.
  """
  b, t, d = hidden.shape
  if kernel.ndim != 2 or kernel.shape[0] != d:
    raise ValueError(f"kernel must be [D={d}, V], got {kernel.shape}")
  vocab_chunk = min(vocab_chunk or kernel.shape[1], kernel.shape[1])
  token_chunk = min(token_chunk, b * t)
  if vocab_chunk == kernel.shape[1] and b * t * kernel.shape[1] * 4 <= keep_logits_bytes:
    lp, ent = _logprobs_entropy_kept(hidden.reshape(b * t, d), kernel,
                                     targets.reshape(b * t).astype(jnp.int32))
    return lp.reshape(b, t), ent.reshape(b, t)
  lp, ent = _logprobs_entropy(hidden.reshape(b * t, d), kernel,
                              targets.reshape(b * t).astype(jnp.int32), token_chunk, vocab_chunk)
  return lp.reshape(b, t), ent.reshape(b, t)


def full_logprobs(hidden: Array, kernel: Array, targets: Array) -> tuple[Array, Array]:
  """Reference: the same quantities through the full `[B, T, V]` logits (tests, small models)."""
  logits = jnp.einsum("BTD,DV->BTV", hidden, kernel, preferred_element_type=jnp.float32)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  lp = jnp.take_along_axis(log_p, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return lp, -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


# --- Generalised JSD between a student and a (constant) teacher. ---


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _jsd(hs, ks, ht, kt, beta, token_chunk, vocab_chunk):
  out, _ = _jsd_fwd(hs, ks, ht, kt, beta, token_chunk, vocab_chunk)
  return out


def _jsd_tile(hs, ws, ht, wt, off, v, lse_s, lse_t, beta):
  """log p_S, log p_T, log m and p_S of one tile (padding columns have p = 0)."""
  zs, _, valid = _block_logits(hs, ws, off, v)
  zt, _, _ = _block_logits(ht, wt, off, v)
  log_s = zs - lse_s[:, None]
  log_t = zt - lse_t[:, None]
  log_m = jnp.logaddexp(log_s + math.log1p(-beta), log_t + math.log(beta))
  safe = lambda x: jnp.where(valid[None, :], x, 0.0)
  return safe(log_s), safe(log_t), safe(log_m), safe(jnp.exp(log_s)), safe(jnp.exp(log_t))


def _jsd_fwd(hs, ks, ht, kt, beta, token_chunk, vocab_chunk):
  n, v = hs.shape[0], ks.shape[1]
  bs, offsets = _vocab_chunks(ks, vocab_chunk)
  bt, _ = _vocab_chunks(kt, vocab_chunk)

  def per_chunk(_, inp):
    hsc, htc = inp
    lse_s, _, _ = _online_lse(hsc, bs, offsets, v)
    lse_t, _, _ = _online_lse(htc, bt, offsets, v)

    def per_block(carry, binp):
      kl_t, kl_s = carry
      ws, wt, off = binp
      log_s, log_t, log_m, p_s, p_t = _jsd_tile(hsc, ws, htc, wt, off, v, lse_s, lse_t, beta)
      kl_t = kl_t + jnp.sum(p_t * (log_t - log_m), axis=-1)
      kl_s = kl_s + jnp.sum(p_s * (log_s - log_m), axis=-1)
      return (kl_t, kl_s), None

    zeros = jnp.zeros((hsc.shape[0],), jnp.float32)
    (kl_t, kl_s), _ = jax.lax.scan(per_block, (zeros, zeros), (bs, bt, offsets))
    return None, (beta * kl_t + (1.0 - beta) * kl_s, kl_s, lse_s, lse_t)

  _, outs = jax.lax.scan(per_chunk, None,
                         (_token_chunks(hs, token_chunk), _token_chunks(ht, token_chunk)))
  jsd, kl_s, lse_s, lse_t = (x.reshape(-1)[:n] for x in outs)
  return jsd, (hs, ks, ht, kt, kl_s, lse_s, lse_t)


def _jsd_bwd(beta, token_chunk, vocab_chunk, res, g):
  hs, ks, ht, kt, kl_s, lse_s, lse_t = res
  v = ks.shape[1]
  bs, offsets = _vocab_chunks(ks, vocab_chunk)
  bt, _ = _vocab_chunks(kt, vocab_chunk)
  chunked = [_token_chunks(x, token_chunk) for x in (hs, ht, kl_s, lse_s, lse_t, g)]

  def per_chunk(d_blocks, inp):
    hsc, htc, kl_c, lse_sc, lse_tc, g_c = inp

    def per_block(dh, binp):
      ws, wt, dw, off = binp
      log_s, _, log_m, p_s, _ = _jsd_tile(hsc, ws, htc, wt, off, v, lse_sc, lse_tc, beta)
      dz = (g_c * (1.0 - beta))[:, None] * p_s * (log_s - log_m - kl_c[:, None])
      dh = dh + jnp.dot(dz, ws.T.astype(jnp.float32))
      dw = dw + jnp.dot(hsc.T.astype(jnp.float32), dz)
      return dh, dw

    dh, d_blocks = jax.lax.scan(per_block, jnp.zeros(hsc.shape, jnp.float32),
                                (bs, bt, d_blocks, offsets))
    return d_blocks, dh

  d_blocks, dh = jax.lax.scan(per_chunk, jnp.zeros(bs.shape, jnp.float32), tuple(chunked))
  dh = dh.reshape(-1, hs.shape[1])[:hs.shape[0]].astype(hs.dtype)
  dks = _unchunk_kernel(d_blocks, v).astype(ks.dtype)
  return dh, dks, jnp.zeros_like(ht), jnp.zeros_like(kt)


_jsd.defvjp(_jsd_fwd, _jsd_bwd)


def chunked_jsd(student_hidden: Array, student_kernel: Array, teacher_hidden: Array,
                teacher_kernel: Array, *, beta: float = 0.5, token_chunk: int = 1024,
                vocab_chunk: int | None = None) -> Array:
  """Per-token generalised JSD_β(student ‖ teacher) without materialising `[B, T, V]` logits.

  Args:
    student_hidden: float[B, T, Ds] student final-norm hidden states (differentiated).
    student_kernel: float[Ds, V] student LM-head kernel (differentiated).
    teacher_hidden: float[B, T, Dt] teacher hidden states at the same positions (constant).
    teacher_kernel: float[Dt, V] teacher LM-head kernel over the same vocabulary (constant).
    beta: β in (0, 1), M = (1 − β) P_S + β P_T (see `losses.jsd_per_token`).
    token_chunk: tokens per scanned chunk.
    vocab_chunk: vocabulary columns per block; None = the whole vocabulary.

  Returns:
    float32[B, T] JSD per position.
  """
  if not 0.0 < beta < 1.0:
    raise ValueError(f"beta must be in (0, 1), got {beta}")
  b, t, ds = student_hidden.shape
  if teacher_hidden.shape[:2] != (b, t):
    raise ValueError(f"teacher_hidden {teacher_hidden.shape} does not match student {(b, t)}")
  if student_kernel.shape[1] != teacher_kernel.shape[1]:
    raise ValueError(f"vocabularies differ: {student_kernel.shape} vs {teacher_kernel.shape}")
  v = student_kernel.shape[1]
  vocab_chunk = min(vocab_chunk or v, v)
  token_chunk = min(token_chunk, b * t)
  dt = teacher_hidden.shape[-1]
  jsd = _jsd(student_hidden.reshape(b * t, ds), student_kernel,
             jax.lax.stop_gradient(teacher_hidden.reshape(b * t, dt)),
             jax.lax.stop_gradient(teacher_kernel), float(beta), token_chunk, vocab_chunk)
  return jsd.reshape(b, t)
