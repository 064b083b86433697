"""The decode loop's carried state: one `flax.struct` pytree, donated from step to step.

Shapes: B rows (prompts x samples, padded to a bucket), N new-token capacity, V vocabulary.
"""
import jax
import jax.numpy as jnp
from flax import struct

from zppo_jax.models.qwen3_5.cache import Cache

# Finish reasons, as stored per row (`DecodeState.finish`).
RUNNING = 0
STOPPED = 1   # a stop token was generated (and is included in the tokens)
LENGTH = 2    # max_new_tokens was reached
PADDING = 3   # a row that only fills the batch bucket
FINISH_NAMES = {RUNNING: "running", STOPPED: "stop", LENGTH: "length", PADDING: "padding"}


@struct.dataclass
class DecodeState:
  """Everything the decode loop carries.

  Attributes:
    cache: the model's decoding cache for B rows.
    step: int32[] number of tokens generated so far (the next column of `tokens`).
    last_token: int32[B] the most recent token of each row (the next model input).
    tokens: int32[B, N] generated tokens; `pad_id` after a row finished.
    logprobs: float32[B, N] policy log-probabilities (temperature 1, unfiltered) of `tokens`.
    sampling_logprobs: float32[B, N] log-probabilities under the distribution sampled from.
    generated: bool[B, V] tokens each row has generated (for the presence penalty).
    lengths: int32[B] generated tokens per row, stop token included.
    finish: int32[B] finish reason per row (RUNNING, STOPPED, LENGTH, PADDING).
    row_ids: int32[B] stable row identity (prompt index * G + sample) for the random keys.
  """
  cache: Cache
  step: jax.Array
  last_token: jax.Array
  tokens: jax.Array
  logprobs: jax.Array
  sampling_logprobs: jax.Array
  generated: jax.Array
  lengths: jax.Array
  finish: jax.Array
  row_ids: jax.Array

  @property
  def done(self) -> jax.Array:
    """bool[B]: rows that take no more tokens."""
    return self.finish != RUNNING

  @classmethod
  def create(cls, cache, capacity, vocab_size, row_ids, real_rows, pad_id=0):
    """A fresh state for a prefilled cache.

    Args:
      cache: Cache with B rows (prompt already written).
      capacity: N, static size of the token buffers.
      vocab_size: V.
      row_ids: int32[B] row identities.
      real_rows: bool[B], False for rows that only pad the batch (they start finished).
      pad_id: token written after a row finished.
    """
    batch = row_ids.shape[0]
    return cls(
        cache=cache, step=jnp.zeros((), jnp.int32),
        last_token=jnp.full((batch,), pad_id, jnp.int32),
        tokens=jnp.full((batch, capacity), pad_id, jnp.int32),
        logprobs=jnp.zeros((batch, capacity), jnp.float32),
        sampling_logprobs=jnp.zeros((batch, capacity), jnp.float32),
        generated=jnp.zeros((batch, vocab_size), bool),
        lengths=jnp.zeros((batch,), jnp.int32),
        finish=jnp.where(real_rows, RUNNING, PADDING).astype(jnp.int32),
        row_ids=row_ids.astype(jnp.int32))
