"""Sampling filters: one next token per row from a batch of logits, as a pure jittable function.

The order follows the common serving engines: the presence penalty is subtracted from the logits of
every token the row has already generated, the result is divided by the temperature, then top-k,
top-p and min-p remove tokens, and one token is drawn from what remains by inverting the CDF at one
uniform per row. Temperature 0 means greedy (the argmax of the penalised logits).

Every knob is a traced per-row array (`SamplingKnobs`), so changing a value never recompiles. The
top-k / top-p cut points are found by bisection instead of a sort (a [64, 32000] sort takes ~0.7 s
on this CPU), and only when some row asks for them (`lax.cond`): at the training setting
(temperature 1, no filters) the per-step sampling cost stays a few milliseconds.

Two log-probabilities come back for each chosen token: under the distribution it was drawn from
(after penalty, temperature and filters; 0 for a greedy row) and under the unmodified policy
(temperature 1, no penalty, no filter), which is what the RL losses use.
"""
import jax
import jax.numpy as jnp
from flax import struct

_NEG_INF = -jnp.inf


@struct.dataclass
class SamplingKnobs:
  """Per-row sampling parameters, all traced.

  Attributes:
    temperature: float32[B]; 0 = greedy.
    top_p: float32[B]; keep the smallest set of most likely tokens whose mass reaches top_p (1 = off).
    top_k: int32[B]; keep the k most likely tokens (0 = off).
    min_p: float32[B]; drop tokens whose probability is below min_p times the largest (0 = off).
    presence_penalty: float32[B]; subtracted once from the logit of every token already generated.
  """
  temperature: jax.Array
  top_p: jax.Array
  top_k: jax.Array
  min_p: jax.Array
  presence_penalty: jax.Array

  @classmethod
  def create(cls, batch, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, presence_penalty=0.0):
    """Broadcasts scalars (or [B] arrays) to per-row arrays of the right dtypes."""
    full = lambda v, dtype: jnp.broadcast_to(jnp.asarray(v, dtype), (batch,))
    return cls(temperature=full(temperature, jnp.float32), top_p=full(top_p, jnp.float32),
               top_k=full(top_k, jnp.int32), min_p=full(min_p, jnp.float32),
               presence_penalty=full(presence_penalty, jnp.float32))


def _sortable(x):
  """Maps float32 to uint32 so that unsigned order equals float order (-inf included)."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _largest_threshold(keys, ok):
  """Per row, the largest t with ok(keys >= t) true, by bisection on the 32 key bits.

  A full sort of [B, V] costs hundreds of milliseconds on CPU; 32 masked reductions cost a few tens.

  Args:
    keys: uint32[B, V] from `_sortable`.
    ok: function of a bool[B, V] selection -> bool[B]; monotone (true for smaller thresholds).

  Returns:
    uint32[B]: keys >= threshold is the selection; `min(keys)` when only it satisfies `ok`.
  """
  lo, hi = jnp.min(keys, axis=-1), jnp.max(keys, axis=-1)

  def halve(_, bounds):
    lo, hi = bounds
    gap = hi - lo
    mid = lo + gap // 2 + (gap & 1)
    good = ok(keys >= mid[:, None])
    return jnp.where(good, mid, lo), jnp.where(good, hi, mid - 1)

  lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
  return lo


def _top_k_top_p_mask(logits, top_k, top_p):
  """Keep-mask of top-k then top-p (on the renormalised top-k distribution), ties at the cut kept.

  Args:
    logits: float32[B, V] tempered logits.
    top_k: int32[B] (0 = off).
    top_p: float32[B] (1 = off).

  Returns:
    bool[B, V], True for tokens that stay.
  """
  keys = _sortable(logits)
  k = jnp.where(top_k <= 0, logits.shape[-1], top_k)
  keep = keys >= _largest_threshold(keys, lambda sel: jnp.sum(sel, axis=-1) >= k)[:, None]
  weights = jnp.where(keep, jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True)), 0.0)
  # The nucleus is the set above the largest cut whose mass still reaches top_p; the most likely
  # token always stays, so a row never ends up with nothing to sample.
  target = jnp.minimum(top_p, 1.0) * jnp.sum(weights, axis=-1)
  mass_ok = lambda sel: jnp.sum(jnp.where(sel, weights, 0.0), axis=-1) >= target
  nucleus = keys >= _largest_threshold(jnp.where(keep, keys, 0), mass_ok)[:, None]
  return keep & jnp.where((top_p < 1.0)[:, None], nucleus, True)


def filter_logits(logits, knobs, generated_mask):
  """Applies presence penalty, temperature, top-k, top-p and min-p.

  Args:
    logits: float[B, V] raw policy logits.
    knobs: SamplingKnobs of [B] arrays.
    generated_mask: bool[B, V], True for tokens the row has generated so far.

  Returns:
    float32[B, V]: the logits of the sampling distribution (-inf where filtered). Greedy rows
    (temperature 0) are returned penalised but neither divided nor filtered.
  """
  logits = logits.astype(jnp.float32)
  logits = logits - knobs.presence_penalty[:, None] * generated_mask.astype(jnp.float32)
  greedy = knobs.temperature <= 0
  temperature = jnp.where(greedy, 1.0, knobs.temperature)
  logits = logits / temperature[:, None]

  needs_cut = jnp.any(~greedy & (((knobs.top_k > 0) & (knobs.top_k < logits.shape[-1]))
                                 | (knobs.top_p < 1.0)))
  keep = jax.lax.cond(needs_cut,
                      lambda: _top_k_top_p_mask(logits, knobs.top_k, knobs.top_p),
                      lambda: jnp.ones(logits.shape, bool))
  # min-p: p >= min_p * p_max  <=>  logit >= max_logit + log(min_p); log(0) = -inf keeps all.
  max_logit = jnp.max(logits, axis=-1, keepdims=True)
  keep &= logits >= max_logit + jnp.log(knobs.min_p)[:, None]
  keep |= greedy[:, None]
  return jnp.where(keep, logits, _NEG_INF)


_BLOCK = 128


def _inverse_cdf(logits, u):
  """Draws index i with probability softmax(logits)_i by inverting the CDF at u in [0, 1).

  The CDF is built in two levels (sums of blocks of 128, then the chosen block) because a cumsum
  over the whole vocabulary is several times slower than the softmax on CPU, and because one
  uniform per row is far cheaper to generate than a Gumbel variate per logit.

  Args:
    logits: float32[B, V], -inf for excluded tokens (at least one finite per row).
    u: float32[B] uniforms.

  Returns:
    (int32[B] indices, never an excluded token; float32[B] log of the softmax normaliser, so that
    the chosen token's log-probability is logits[index] - it).
  """
  batch, vocab = logits.shape
  blocks = -(-vocab // _BLOCK)
  max_logit = jnp.max(logits, axis=-1, keepdims=True)
  weights = jnp.exp(logits - max_logit)
  weights = jnp.pad(weights, ((0, 0), (0, blocks * _BLOCK - vocab))).reshape(batch, blocks, _BLOCK)
  block_mass = jnp.sum(weights, axis=-1)
  block_cdf = jnp.cumsum(block_mass, axis=-1)
  target = u * block_cdf[:, -1]

  def last_positive(w):  # rounding must never land on a zero-weight entry past the last real one
    return w.shape[-1] - 1 - jnp.argmax(w[:, ::-1] > 0, axis=-1)

  block = jnp.minimum(jnp.sum(block_cdf <= target[:, None], axis=-1), last_positive(block_mass))
  inner = jnp.take_along_axis(weights, block[:, None, None], axis=1)[:, 0]
  start = jnp.take_along_axis(block_cdf - block_mass, block[:, None], axis=1)
  inner_cdf = jnp.cumsum(inner, axis=-1) + start
  index = jnp.minimum(jnp.sum(inner_cdf <= target[:, None], axis=-1), last_positive(inner))
  log_normaliser = max_logit[:, 0] + jnp.log(block_cdf[:, -1])
  return (block * _BLOCK + index).astype(jnp.int32), log_normaliser


def _picked(logits, token):
  return jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0]


def _logprob_of(logits, token):
  return _picked(logits, token) - jax.nn.logsumexp(logits, axis=-1)


def sample_step(logits, key, knobs, generated_mask):
  """Chooses one token per row.

  Args:
    logits: float[B, V] raw policy logits for the next position.
    key: keys[B], one random key per row for this step (see `row_keys`).
    knobs: SamplingKnobs of [B] arrays.
    generated_mask: bool[B, V], tokens generated so far per row (for the presence penalty).

  Returns:
    token int32[B]; sampling_logprob float32[B] (log-probability under the distribution sampled
    from; 0 for greedy rows); policy_logprob float32[B] (log-softmax of the raw logits).
  """
  logits = logits.astype(jnp.float32)
  u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(key)

  def plain():
    # Temperature 1 and nothing else for every row (the RL training setting): the sampling
    # distribution is the policy, which saves several passes over [B, V] per step.
    token, log_normaliser = _inverse_cdf(logits, u)
    logprob = _picked(logits, token) - log_normaliser
    return token, logprob, logprob

  def general():
    filtered = filter_logits(logits, knobs, generated_mask)
    greedy = knobs.temperature <= 0
    sampled, log_normaliser = _inverse_cdf(filtered, u)
    token = jnp.where(greedy, jnp.argmax(filtered, axis=-1).astype(jnp.int32), sampled)
    sampling_logprob = jnp.where(greedy, 0.0, _picked(filtered, token) - log_normaliser)
    return token, sampling_logprob, _logprob_of(logits, token)

  is_plain = jnp.all((knobs.temperature == 1.0) & (knobs.top_p >= 1.0) & (knobs.top_k <= 0)
                     & (knobs.min_p <= 0.0) & (knobs.presence_penalty == 0.0))
  return jax.lax.cond(is_plain, plain, general)


def row_keys(seed_key, row_ids, step):
  """Per-row, per-step keys: fold_in(fold_in(seed, row id), step), independent of batch layout.

  Args:
    seed_key: a PRNG key (uint32[2] or typed).
    row_ids: int32[B] stable identity of each row (prompt index * G + sample index).
    step: int32[] decode step.

  Returns:
    keys[B].
  """
  return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(seed_key, r), step))(row_ids)
