"""The Qwen3.5 text decoder (`Qwen3_5ForCausalLM`) in Flax NNX.

Parameter tree (P = len(cfg.cycle) layers per cycle, R = cfg.num_cycles repetitions; HF layer
``i`` is ``layers[i % P]`` at index ``[i // P]`` of the leading LAYERS axis; a ``layer_types`` that
does not repeat is one cycle, P = num_hidden_layers and R = 1). Kernels are [in, out], the
transpose of HF's ``weight``; every other tensor has HF's shape (plus the leading R):

  embed_tokens.embedding                      [V, D]           model.embed_tokens.weight
  layers[p].input_layernorm.weight            [R, D]           model.layers.{i}.input_layernorm.weight
  layers[p].post_attention_layernorm.weight   [R, D]
  layers[p].mlp.{gate_proj,up_proj}.kernel    [R, D, F]        ....mlp.{gate,up}_proj.weight [F, D]
  layers[p].mlp.down_proj.kernel              [R, F, D]
  full-attention layers (cycle[p] == "full_attention"):
  layers[p].self_attn.q_proj.kernel           [R, D, N*2H]     (per head: H query, then H gate)
  layers[p].self_attn.{k_proj,v_proj}.kernel  [R, D, K*H]
  layers[p].self_attn.o_proj.kernel           [R, N*H, D]
  layers[p].self_attn.{q_norm,k_norm}.weight  [R, H]
  Gated DeltaNet layers (cycle[p] == "linear_attention"):
  layers[p].linear_attn.in_proj_qkv.kernel    [R, D, C]        C = 2*Hk*Dk + Hv*Dv
  layers[p].linear_attn.in_proj_z.kernel      [R, D, Hv*Dv]
  layers[p].linear_attn.{in_proj_b,in_proj_a}.kernel  [R, D, Hv]
  layers[p].linear_attn.conv1d.kernel         [R, K, C]        HF conv1d.weight [C, 1, K]
  layers[p].linear_attn.{dt_bias,A_log}       [R, Hv]
  layers[p].linear_attn.norm.weight           [R, Dv]
  layers[p].linear_attn.out_proj.kernel       [R, Hv*Dv, D]
  norm.weight                                 [D]              model.norm.weight
  lm_head.kernel                              [D, V]           lm_head.weight (absent when tied)

RMSNorm weights are stored as HF stores them (zero-centred: the scale is 1 + weight), except the
GDN's gated norm whose weight is the scale itself. Stacked parameters carry the LAYERS logical
axis first. Layers run under `jax.lax.scan` over the R repetitions (`cfg.scan_layers`), or in a
Python loop over the same stacked parameters.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zppo_jax import parallel
from zppo_jax.models.qwen3_5.attention import Attention
from zppo_jax.models.qwen3_5.cache import Cache
from zppo_jax.models.qwen3_5.config import ModelConfig
from zppo_jax.models.qwen3_5.gdn import GatedDeltaNet
from zppo_jax.models.qwen3_5.layers import MLP, Dense, RMSNorm, rotary_cos_sin

_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
_ACT = (parallel.BATCH, parallel.LENGTH, parallel.ACT_EMBED)


class DecoderLayer(nnx.Module):
  """Pre-norm residual block: token mixer (GDN or attention), then the SwiGLU MLP."""

  def __init__(self, cfg: ModelConfig, layer_type: str, *, rngs: nnx.Rngs):
    self.layer_type = layer_type
    if layer_type == "linear_attention":
      self.linear_attn = GatedDeltaNet(cfg, rngs=rngs)
    else:
      self.self_attn = Attention(cfg, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg, rngs=rngs)

  def __call__(self, x, ctx, cache=None):
    """x float[B, T, D], ctx the per-forward `_Context` dict, cache the layer's entry or None."""
    h = self.input_layernorm(x)
    if self.layer_type == "linear_attention":
      h, cache = self.linear_attn(h, ctx["valid"], ctx["reset"], cache)
    else:
      h, cache = self.self_attn(h, ctx["cos"], ctx["sin"], ctx["mask"], cache, ctx["index"])
    x = parallel.constrain(x + h, _ACT)
    x = x + self.mlp(self.post_attention_layernorm(x))
    return parallel.constrain(x, _ACT), cache


class Embed(nnx.Module):
  """Token embedding table float[V, D] (also the LM head when tied)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.embedding = parallel.param(jax.nn.initializers.normal(0.02), rngs.params(),
                                    (cfg.vocab_size, cfg.hidden_size),
                                    (parallel.VOCAB, parallel.EMBED), cfg.param_dtype)


def stack_cycles(per_cycle):
  """Per-cycle layer caches (a sequence of R trees) -> one tree with a leading R axis."""
  return jax.tree.map(lambda *a: jnp.stack(a), *per_cycle)


def _segment_layout(valid, segment_ids):
  """Sequence starts of packed rows: reset bool[B, T] (a real token whose previous real token
  has another segment id), or None without segment ids."""
  if segment_ids is None:
    return None
  t = valid.shape[1]
  last_real = jax.lax.cummax(jnp.where(valid, jnp.arange(t), -1), axis=1)
  prev_real = jnp.concatenate([jnp.full_like(last_real[:, :1], -1), last_real[:, :-1]], axis=1)
  prev_segment = jnp.take_along_axis(segment_ids, jnp.maximum(prev_real, 0), axis=1)
  return valid & (prev_real >= 0) & (prev_segment != segment_ids)


def default_positions(valid, reset=None, start=None):
  """Token index among the real tokens of its sequence: int32[3, B, T] (pads get a neighbour's).

  Args:
    valid: bool[B, T].
    reset: optional bool[B, T], sequence starts (positions restart at 0).
    start: optional int32[B], position of each row's first token (a cache's next_position).
  """
  count = jnp.cumsum(valid, axis=1, dtype=jnp.int32)
  if reset is not None:
    count = count - jax.lax.cummax(jnp.where(reset, count - 1, 0), axis=1)
  pos = jnp.maximum(count - 1, 0)
  if start is not None:
    pos = pos + start[:, None]
  return jnp.broadcast_to(pos, (3, *pos.shape))


def _stacked_layers(cfg: ModelConfig, layer_type: str, rngs: nnx.Rngs) -> DecoderLayer:
  """R = cfg.num_cycles layers of one cycle position, parameters stacked on a leading axis."""

  @nnx.split_rngs(splits=cfg.num_cycles)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata=parallel.SCAN_METADATA)
  def build(rngs):
    return DecoderLayer(cfg, layer_type, rngs=rngs)

  return build(rngs)


class Qwen3_5ForCausalLM(nnx.Module):
  """Qwen3.5 dense text decoder: embedding, hybrid GDN/attention layers, final norm, LM head."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed_tokens = Embed(cfg, rngs=rngs)
    self.layers = nnx.List([_stacked_layers(cfg, layer_type, rngs) for layer_type in cfg.cycle])
    self.norm = RMSNorm(cfg.hidden_size, cfg, rngs=rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = Dense(cfg.hidden_size, cfg.vocab_size, (parallel.EMBED, parallel.VOCAB), cfg,
                           rngs=rngs)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """int32[B, T] -> float[B, T, D] in the compute dtype."""
    return jnp.take(self.embed_tokens.embedding[...], input_ids, axis=0).astype(self.cfg.dtype)

  def lm_head_kernel(self) -> jax.Array:
    """float[D, V]: the tied embedding transposed, or the LM head."""
    if self.cfg.tie_word_embeddings:
      return self.embed_tokens.embedding[...].T
    return self.lm_head.kernel[...]

  def logits(self, hidden: jax.Array) -> jax.Array:
    """float[B, T, D] -> float32[B, T, V]."""
    kernel = self.lm_head_kernel().astype(self.cfg.dtype)
    logits = jnp.dot(hidden.astype(self.cfg.dtype), kernel, preferred_element_type=jnp.float32)
    return parallel.constrain(logits, (parallel.BATCH, parallel.LENGTH, parallel.ACT_VOCAB))

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """int32[B, T] (and optional 0/1 mask [B, T]) -> float32[B, T, V] logits."""
    hidden, _ = self.forward(input_ids=input_ids, attention_mask=attention_mask)
    return self.logits(hidden)

  def forward(self, input_ids=None, inputs_embeds=None, positions=None, attention_mask=None,
              segment_ids=None, cache: Cache | None = None, cycle_params=None):
    """Runs the decoder.

    Args:
      input_ids: int32[B, T], or
      inputs_embeds: float[B, T, D].
      positions: int32[3, B, T] mRoPE (t, h, w) positions; default: the index of each token among
        the real tokens of its sequence, after the cache's ``next_position``.
      attention_mask: int/bool[B, T], 1 = real token (padding may be left or right).
      segment_ids: int32[B, T] packed sequences, 0 = padding; no attention or GDN state crosses
        a change of id. Not allowed together with a cache.
      cache: a `Cache`; the T tokens are written at slots [index, index + T).
      cycle_params: optional `cycle_params()` of this model's parameters, for passes with a
        cache whose layers are per cycle (`unstack_cycles`): a decode loop slices the stacked
        weights and cache once instead of on every token.

    Returns:
      (hidden float[B, T, D] after the final norm, the new cache or None).
    """
    cfg = self.cfg
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if segment_ids is not None and cache is not None:
      raise ValueError("segment_ids (packed training rows) cannot be combined with a cache")
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.dtype)
    b, t, _ = x.shape
    valid = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    if segment_ids is not None:
      valid = valid & (segment_ids != 0)
    reset = _segment_layout(valid, segment_ids)
    if positions is None:
      positions = default_positions(valid, reset, None if cache is None else cache.next_position)
    cos, sin = rotary_cos_sin(positions, cfg)
    q_slot = jnp.arange(t)
    if cache is None:
      index, key_valid, key_slot = None, valid, jnp.arange(t)
      mask = key_valid[:, None, :] & (key_slot[None, None, :] <= q_slot[None, :, None])
      if reset is not None:
        sequence = jnp.cumsum(reset, axis=1)
        mask = mask & (sequence[:, :, None] == sequence[:, None, :])
    else:
      index = cache.index
      key_valid = jax.lax.dynamic_update_slice(cache.kv_mask, valid, (0, index))
      key_slot = jnp.arange(cache.max_len)
      mask = key_valid[:, None, :] & (key_slot[None, None, :] <= (index + q_slot)[None, :, None])
    ctx = dict(valid=valid, reset=reset, cos=cos, sin=sin, mask=mask, index=index)
    x = parallel.constrain(x, _ACT)
    x, layer_caches = self._run_layers(x, ctx, None if cache is None else cache.layers,
                                       cycle_params)
    hidden = self.norm(x)
    if cache is not None:
      last = jnp.max(jnp.where(valid, positions.max(axis=0), -1), axis=1)
      cache = cache.replace(
          layers=layer_caches, kv_mask=key_valid, index=cache.index + t,
          next_position=jnp.where(last >= 0, last + 1, cache.next_position).astype(jnp.int32))
    return hidden, cache

  def _run_layers(self, x, ctx, caches, cycle_params=None):
    """Applies the R repetitions of the layer cycle (scanned or unrolled)."""
    cfg = self.cfg
    split = [nnx.split(block) for block in self.layers]
    graphdefs = [g for g, _ in split]

    def cycle(x, states, caches):
      new_caches = []
      for p, (graphdef, state) in enumerate(zip(graphdefs, states)):
        layer = nnx.merge(graphdef, state)
        x, c = layer(x, ctx, None if caches is None else caches[p])
        new_caches.append(c)
      return x, (None if caches is None else tuple(new_caches))

    if cfg.remat != "none":
      cycle = jax.checkpoint(cycle, policy=_REMAT_POLICIES[cfg.remat])
    states = tuple(s for _, s in split)
    # With a cache (prefill, and every decode step) the cycles are unrolled: a scan would slice
    # every weight out of the stacked parameters on each step, copying all of them per token.
    if cfg.scan_layers and caches is None:
      def body(x, xs):
        return cycle(x, *xs)
      return jax.lax.scan(body, x, (states, caches))
    per_cycle = cycle_params is not None   # then `caches` is per cycle too (`unstack_cycles`)
    outs = []
    for r in range(cfg.num_cycles):
      take = lambda tree: jax.tree.map(lambda a: a[r], tree)
      params = cycle_params[r] if per_cycle else take(states)
      cache = None if caches is None else (caches[r] if per_cycle else take(caches))
      x, c = cycle(x, params, cache)
      outs.append(c)
    if caches is None:
      return x, None
    return x, (tuple(outs) if per_cycle else stack_cycles(outs))

  def unstack_cycles(self, cache: Cache) -> Cache:
    """`cache` with its layers per cycle: a tuple (R) of per-layer caches, as `forward` takes
    them with `cycle_params`; `stack_cycles` undoes it."""
    return cache.replace(layers=tuple(jax.tree.map(lambda a: a[r], cache.layers)
                                      for r in range(self.cfg.num_cycles)))

  def cycle_params(self):
    """The layer parameters sliced per repetition of the cycle: a tuple (R) of tuples (P) of
    states, for `forward(cycle_params=...)`. A decode loop slices them once, outside the loop,
    instead of once per token."""
    states = [nnx.split(block)[1] for block in self.layers]
    return tuple(tuple(jax.tree.map(lambda a: a[r], s) for s in states)
                 for r in range(self.cfg.num_cycles))
