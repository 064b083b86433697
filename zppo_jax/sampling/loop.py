"""The jitted rollout: prefill a left-padded prompt batch, share it over G samples, decode.

`RolloutLoop` is a frozen, hashable description of the compiled program (model graph, cache
length, token capacity, rule set); it is the static argument of two jitted functions:

  `prefill(loop, G, params, prompt, ...)`  one forward over the prompts (P rows), the cache and the
                                         next-token logits repeated to P * G rows;
  `decode(loop, params, state, logits, ...)`  one `lax.while_loop` that samples a token, appends it
                                         (one model step), and stops when every row is done.

Parameters are passed as arguments (`nnx.split`), never closed over, so new weights after a
training step reuse the compiled program. The decode state and logits are donated. Sampling knobs,
the seed, `max_new_tokens` and the stop ids are traced: changing them does not recompile.
"""
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from zppo_jax import parallel
from zppo_jax.models.qwen3_5.cache import init_cache
from zppo_jax.models.qwen3_5.model import stack_cycles
from zppo_jax.sampling import filters
from zppo_jax.sampling.state import LENGTH, STOPPED, DecodeState


@dataclasses.dataclass(frozen=True)
class RolloutLoop:
  """Static shape of one compiled rollout program.

  Attributes:
    graphdef: the model's `nnx.GraphDef` (from `nnx.split(model)`).
    vocab_size: V.
    cache_len: S, key/value slots (prompt bucket + capacity).
    capacity: N, size of the new-token buffers (the largest `max_new_tokens` it can run).
    rules: the logical-axis rule set the model is traced under.
    pad_id: token written after a row finished.
  """
  graphdef: Any
  vocab_size: int
  cache_len: int
  capacity: int
  rules: parallel.Rules = parallel.SAMPLE_RULES
  pad_id: int = 0


def _constrain_rows(x, axis):
  """Splits rows (dimension `axis`) over the batch mesh axes when a mesh is set and they divide."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = parallel.logical_to_spec([parallel.BATCH])[0]
  axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
  parts = 1
  for a in axes:
    parts *= mesh.shape[a]
  if x.shape[axis] % parts:
    return x
  names = [None] * x.ndim
  names[axis] = parallel.BATCH
  return parallel.constrain(x, names)


def _constrain_state(state, layer_row_axis=1):
  """Row sharding for every per-row array of the decode state (stacked cache layers have rows on
  axis 1, per-cycle ones on axis 0)."""
  cache = state.cache
  layers = jax.tree.map(lambda x: _constrain_rows(x, layer_row_axis), cache.layers)
  cache = cache.replace(layers=layers, kv_mask=_constrain_rows(cache.kv_mask, 0),
                        next_position=_constrain_rows(cache.next_position, 0))
  rows = {f: _constrain_rows(getattr(state, f), 0)
          for f in ("last_token", "tokens", "logprobs", "sampling_logprobs", "generated",
                    "lengths", "finish", "row_ids")}
  return state.replace(cache=cache, **rows)


@functools.partial(jax.jit, static_argnums=(0, 1))
def prefill(loop, num_samples, params, input_ids, inputs_embeds, positions, attention_mask,
            row_ids, real_rows):
  """Prefills P left-padded prompts once and repeats the result to the G samples of each.

  Args:
    loop: RolloutLoop (static).
    num_samples: G (static); prefix sharing repeats each prompt's cache and logits G times.
    params: the model's nnx.State.
    input_ids: int32[P, L] prompt ids (left-padded), or None when `inputs_embeds` is given.
    inputs_embeds: float[P, L, D] prompt embeddings, or None.
    positions: int32[3, P, L] rotary positions (t, h, w), or None for text positions.
    attention_mask: int32[P, L], 1 on real prompt tokens (every row has at least one).
    row_ids: int32[P * G] stable row identities (prompt index * G + sample).
    real_rows: bool[P * G], False for rows that only pad the batch bucket.

  Returns:
    (state, logits): DecodeState for P * G rows and float32[P * G, V] next-token logits.
  """
  with parallel.use_rules(loop.rules):
    model = nnx.merge(loop.graphdef, params)
    batch = attention_mask.shape[0]
    cache = init_cache(model.cfg, batch, loop.cache_len)
    hidden, cache = model.forward(input_ids=input_ids, inputs_embeds=inputs_embeds,
                                  positions=positions, attention_mask=attention_mask, cache=cache)
    logits = model.logits(hidden[:, -1:])[:, 0].astype(jnp.float32)
    cache = cache.repeat_rows(num_samples)
    logits = jnp.repeat(logits, num_samples, axis=0)
    state = DecodeState.create(cache, loop.capacity, loop.vocab_size, row_ids, real_rows,
                               loop.pad_id)
    return _constrain_state(state), _constrain_rows(logits, 0)


def _record(loop, state, logits, knobs, seed_key, max_new_tokens, stop_ids):
  """Samples one token per row from `logits` and appends it to the buffers of unfinished rows."""
  keys = filters.row_keys(seed_key, state.row_ids, state.step)
  token, sampling_logprob, policy_logprob = filters.sample_step(logits, keys, knobs,
                                                                state.generated)
  active = ~state.done
  token = jnp.where(active, token, loop.pad_id)
  column = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x[:, None], state.step, axis=1)
  lengths = state.lengths + active.astype(jnp.int32)
  stopped = active & jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
  out_of_room = active & ~stopped & (lengths >= max_new_tokens)
  finish = jnp.where(stopped, STOPPED, jnp.where(out_of_room, LENGTH, state.finish))
  rows = jnp.arange(token.shape[0])
  generated = state.generated.at[rows, token].set(state.generated[rows, token] | active)
  return state.replace(
      step=state.step + 1, last_token=token, tokens=column(state.tokens, token),
      logprobs=column(state.logprobs, jnp.where(active, policy_logprob, 0.0)),
      sampling_logprobs=column(state.sampling_logprobs, jnp.where(active, sampling_logprob, 0.0)),
      generated=generated, lengths=lengths, finish=finish.astype(jnp.int32))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def decode(loop, params, state, logits, knobs, seed_key, max_new_tokens, stop_ids):
  """Generates until every row has stopped or reached `max_new_tokens`, in one while loop.

  Args:
    loop: RolloutLoop (static).
    params: the model's nnx.State.
    state: DecodeState from `prefill` (donated).
    logits: float32[B, V] next-token logits from `prefill`.
    knobs: filters.SamplingKnobs of [B] arrays.
    seed_key: PRNG key of the call.
    max_new_tokens: int32[] (clipped to the capacity N).
    stop_ids: int32[K] stop token ids, padded with -1.

  Returns:
    The final DecodeState.
  """
  with parallel.use_rules(loop.rules):
    model = nnx.merge(loop.graphdef, params)
    max_new_tokens = jnp.clip(max_new_tokens, 1, loop.capacity)
    record = functools.partial(_record, loop, knobs=knobs, seed_key=seed_key,
                               max_new_tokens=max_new_tokens, stop_ids=stop_ids)
    state = record(state, logits)
    # Weights and cache sliced per layer-cycle once, outside the loop: slicing the stacked
    # arrays inside it copies every weight, and re-stacks the cache, on every token.
    cycle_params = model.cycle_params()
    state = state.replace(cache=model.unstack_cycles(state.cache))

    def step(state):
      hidden, cache = model.forward(input_ids=state.last_token[:, None], cache=state.cache,
                                    cycle_params=cycle_params)
      logits = model.logits(hidden)[:, 0].astype(jnp.float32)
      return _constrain_state(record(state.replace(cache=cache), logits), layer_row_axis=0)

    state = jax.lax.while_loop(lambda s: jnp.any(~s.done), step, state)
    return state.replace(cache=state.cache.replace(layers=stack_cycles(state.cache.layers)))
