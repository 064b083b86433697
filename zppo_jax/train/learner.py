"""The learner: jitted policy-gradient and distillation updates of the student.

One rollout step (Algorithm 1, step 9) arrives as I packed mini-batches (`zppo_jax.data.packing`;
rows hold whole sequences, so no rollout is used twice). The caller (`train.student.Student`)

1. asks `old_logprobs` for log π_old of the trained tokens of all I mini-batches at once, with
   the parameters before any update (or takes the sampler's, by `LearnerConfig.old_logprobs`);
2. calls `update` once per mini-batch: one AdamW update each.

The learner
1. inside each jitted update, accumulates gradients over micro-batches with `lax.scan`; the loss is
   a weighted token sum whose weights are computed over the whole mini-batch first, so accumulation
   is exact for every aggregation;
2. skips (and counts) an update whose loss or gradient norm is not finite: parameters and optimizer
   state are returned unchanged.

The model is split once into a static graphdef and a state; parameters and optimizer state live in a
donated `TrainState`. With a mesh, every jitted call runs under `jax.set_mesh(mesh)` and the
training rule set: parameters and optimizer moments are sharded by their logical axes, batch rows over
(`data`, `fsdp`). Activation rematerialisation is the model's `ModelConfig.remat` policy.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from zppo_jax import distributed, parallel
from zppo_jax.rl import logprobs as logprobs_lib
from zppo_jax.rl import losses
from zppo_jax.train import optim

Batch = Mapping[str, jax.Array]
OLD_LOGPROB_SOURCES = ("recompute", "sampler")
# Metrics that are weighted token sums (shares of the mini-batch total): summed over micro-batches.
# Every other metric is a token mean per micro-batch, combined by token counts (or min / max).
_SUMMED_METRICS = ("pg_loss",)


# The run config's `rl` fields the learner takes, under the same names.
RL_FIELDS = ("micro_batch_rows", "clip_low", "clip_high", "dual_clip", "loss_agg", "kl_coef",
             "kl_estimator", "jsd_beta", "policy_loss")


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
  """Learner hyper-parameters; defaults are the paper's (ZPPO_SPEC.md §2-3). The fields shared
  with the run config keep its names (`LearnerConfig.from_config`).

  Attributes:
    micro_batch_rows: packed rows per gradient-accumulation micro-batch; 0 = the whole
      mini-batch in one pass.
    clip_low: ε_low, lower clip of the importance ratio (0.20).
    clip_high: ε_high, upper clip (clip-higher, 0.28).
    dual_clip: c, dual-clip bound for negative advantages (10); 0 disables it.
    loss_agg: aggregation: "token_mean" (the paper's), "seq_mean_token_mean",
      "seq_mean_token_sum_norm" (Dr. GRPO; needs `max_response_len`).
    kl_coef: β_KL of the KL(π_θ ‖ π_ref) penalty (0: off; the batch must then hold `ref_logprobs`).
    kl_estimator: "k1", "k2" or "k3".
    jsd_beta: β of the generalised JSD of the distillation baselines (0.5).
    policy_loss: the policy loss, by its name in `losses.POLICY_LOSSES` ("ppo").
    max_response_len: the constant normaliser of "seq_mean_token_sum_norm".
    old_logprobs: "recompute" (log π_old from the learner's parameters before the first update) or
      "sampler" (the sampler's log-probs stand in for π_old).
    tis_cap: C of the truncated importance weight min(π_old / π_sampler, C) applied when old
      log-probs are recomputed; None disables it.
    token_chunk: tokens per chunk of the LM-head scan (`rl.logprobs`).
    vocab_chunk: vocabulary columns per online-softmax block; None = whole vocabulary.
    keep_logits_mib: a micro-batch whose fp32 logits take at most this many MiB computes them in
      one matmul and keeps them from the forward pass for the backward one (one LM-head matmul
      fewer; their cotangent takes as much again during the backward pass); larger ones are
      scanned and recomputed chunk by chunk. 0: always recompute.
    optim: the optimizer (`optim.OptimConfig`, the run config's `optim` group).
  """
  micro_batch_rows: int = 0
  clip_low: float = 0.2
  clip_high: float = 0.28
  dual_clip: float = 10.0
  loss_agg: str = "token_mean"
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  jsd_beta: float = 0.5
  policy_loss: str = "ppo"
  max_response_len: int | None = None
  old_logprobs: str = "recompute"
  tis_cap: float | None = None
  token_chunk: int = 1024
  vocab_chunk: int | None = None
  keep_logits_mib: int = 1024
  optim: optim.OptimConfig = optim.OptimConfig()

  def __post_init__(self):
    errors = []
    if self.micro_batch_rows < 0:
      errors.append(f"micro_batch_rows must be >= 0, got {self.micro_batch_rows}")
    if self.loss_agg not in losses.AGGREGATIONS:
      errors.append(f"loss_agg {self.loss_agg!r} not in {losses.AGGREGATIONS}")
    if self.loss_agg == "seq_mean_token_sum_norm" and not self.max_response_len:
      errors.append("loss_agg='seq_mean_token_sum_norm' needs max_response_len")
    if self.kl_estimator not in losses.KL_ESTIMATORS:
      errors.append(f"kl_estimator {self.kl_estimator!r} not in {sorted(losses.KL_ESTIMATORS)}")
    if self.policy_loss not in losses.POLICY_LOSSES:
      errors.append(f"policy_loss {self.policy_loss!r} not in {sorted(losses.POLICY_LOSSES)}")
    if self.old_logprobs not in OLD_LOGPROB_SOURCES:
      errors.append(f"old_logprobs {self.old_logprobs!r} not in {OLD_LOGPROB_SOURCES}")
    if not 0.0 < self.jsd_beta < 1.0:
      errors.append(f"jsd_beta must be in (0, 1), got {self.jsd_beta}")
    if errors:
      raise ValueError("invalid LearnerConfig: " + "; ".join(errors))

  @classmethod
  def from_config(cls, config) -> LearnerConfig:
    """The learner of a run config: its `rl` fields, its `optim` group, and the response budget
    `sampling.max_new_tokens` as the Dr. GRPO normaliser."""
    return cls(**{f: config.rl[f] for f in RL_FIELDS},
               max_response_len=config.sampling.max_new_tokens,
               optim=optim.OptimConfig(**config.optim))


@flax.struct.dataclass
class TrainState:
  """Everything an update changes (donated to the jitted step).

  `params` are what the optimizer updates: fp32 masters of bf16 weights (`optim.master_params`),
  or the weights themselves; the forward pass and the sampler use them cast to the model's dtypes.
  """
  params: nnx.State
  opt_state: optax.OptState
  step: jax.Array      # int32[], applied updates
  skipped: jax.Array   # int32[], updates skipped because the loss or grad norm was not finite
  compensation: nnx.State | None = None  # Kahan buffers (`OptimConfig.kahan`), else None


_VISION_KEYS = ("vision_embeds", "vision_mask")


def _vision_keys(batch) -> tuple[str, ...]:
  """The image-feature arrays of a packed batch whose prompts have images (else none)."""
  return _VISION_KEYS if "vision_embeds" in batch else ()


def packed_hidden(model, mb):
  """float[R, T, D] final hidden states of packed rows; image features (the frozen vision
  tower's, as the sampler placed them) replace the embeddings of their placeholder tokens."""
  if "vision_embeds" not in mb:
    hidden, _ = model.forward(input_ids=mb["tokens"], positions=mb["positions"],
                              segment_ids=mb["segment_ids"])
    return hidden
  embeds = jnp.where(mb["vision_mask"][..., None], mb["vision_embeds"].astype(model.cfg.dtype),
                     model.embed(mb["tokens"]))
  hidden, _ = model.forward(inputs_embeds=embeds, positions=mb["positions"],
                            segment_ids=mb["segment_ids"])
  return hidden


def _masked_mean(x, mask):
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class Learner:
  """Owns the student's parameters and optimizer state and applies jitted updates.

  Args:
    model: the student, e.g. `Qwen3_5ForCausalLM`, with `forward(input_ids=, positions=,
      segment_ids=) -> (hidden, cache)` and `lm_head_kernel()`.
    cfg: `LearnerConfig`.
    mesh: device mesh; None runs unsharded on the default device.
    rules: logical-axis rule set used under the mesh (default `parallel.TRAIN_RULES`).
    tx: the optimizer; None = `cfg.optim.optimizer()` (AdamW). Tests that compare parameters
      across layouts pass plain SGD, whose update does not amplify reduction-order noise.
  """

  def __init__(self, model: nnx.Module, cfg: LearnerConfig, *, mesh=None,
               rules: parallel.Rules = parallel.TRAIN_RULES,
               tx: optax.GradientTransformation | None = None):
    self.cfg = cfg
    self.mesh = mesh
    self.rules = rules
    self.graphdef, params, self._rest = nnx.split(model, nnx.Param, ...)
    self._dtypes = jax.tree.map(lambda x: x.dtype, params)
    self.tx = cfg.optim.optimizer() if tx is None else tx
    with self._context():
      state_sh = self._state_shardings(params)
      self.state = jax.jit(self._init_state, out_shardings=state_sh)(params)
    self._jit_steps(state_sh)

  def _jit_steps(self, state_sh) -> None:
    """The jitted update, distillation update and log-probs, with the state's shardings."""
    self._update = jax.jit(self._policy_update, donate_argnums=0,
                           out_shardings=(state_sh, None))
    self._distill = jax.jit(self._distill_update, donate_argnums=0,
                            out_shardings=(state_sh, None))
    self._logprobs = jax.jit(self._all_logprobs)

  @classmethod
  def abstract(cls, model: nnx.Module, cfg: LearnerConfig, *, mesh=None,
               rules: parallel.Rules = parallel.TRAIN_RULES) -> Learner:
    """A learner that allocates nothing, for ahead-of-time compilation (`zppo_jax.plan`).

    Its `state` holds `jax.ShapeDtypeStruct`s with the shardings `__init__` would give; lower its
    jitted update with `lower_update`. Arguments as for `Learner`; `model` may be abstract
    (`nnx.eval_shape`).
    """
    learner = cls.__new__(cls)
    learner.cfg, learner.mesh, learner.rules = cfg, mesh, rules
    learner.graphdef, params, learner._rest = nnx.split(model, nnx.Param, ...)
    learner._dtypes = jax.tree.map(lambda x: x.dtype, params)
    learner.tx = cfg.optim.optimizer()
    with learner._context():
      state_sh = learner._state_shardings(params)
      state = jax.eval_shape(learner._init_state, params)
    if state_sh is not None:
      state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                           state, state_sh)
    learner.state = state
    learner._jit_steps(state_sh)
    return learner

  def lower_update(self, batch: Batch):
    """The jitted policy update lowered for `self.state` and `batch` (arrays or
    `jax.ShapeDtypeStruct`s of `update`'s rows, placed as `update` places them)."""
    with self._context():
      return self._update.lower(self.state, batch)

  def trace_update(self, batch: Batch):
    """The jitted policy update traced for `self.state` and `batch` (as for `lower_update`); its
    `.jaxpr` is the update's program (e.g. for counting its matmuls)."""
    with self._context():
      return self._update.trace(self.state, batch)

  # --- Set-up helpers. ---

  def _init_state(self, params) -> TrainState:
    """The state before the first update: masters (if any), fresh optimizer moments, zero
    counters, Kahan buffers (if any)."""
    params = optim.master_params(params, self.cfg.optim)
    return TrainState(params, self.tx.init(params), jnp.zeros([], jnp.int32),
                      jnp.zeros([], jnp.int32), optim.init_compensation(params, self.cfg.optim))

  def _context(self):
    if self.mesh is None:
      return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(parallel.use_rules(self.rules))
    return stack

  def _state_shardings(self, params):
    if self.mesh is None:
      return None
    abstract = jax.eval_shape(self._init_state, params)
    replicated = NamedSharding(self.mesh, PartitionSpec())

    def one(path, leaf):
      if isinstance(leaf, nnx.Variable):
        names = parallel.logical_axes(leaf)
        if names is None:
          return leaf.replace(replicated)
        what = "/".join(str(p) for p in path)
        return leaf.replace(parallel.named_sharding(self.mesh, names, self.rules,
                                                    leaf.get_value().shape, what))
      return replicated

    return jax.tree.map_with_path(one, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))

  def _put(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    if self.mesh is None:
      return {k: jnp.asarray(v) for k, v in batch.items()}
    shards = self.mesh.shape[parallel.DATA] * self.mesh.shape[parallel.FSDP]
    micro_rows = self.cfg.micro_batch_rows or batch["tokens"].shape[0]
    if micro_rows % shards:
      raise ValueError(f"micro-batches of {micro_rows} rows cannot be split over the {shards} "
                       "data x fsdp shards of the mesh")
    out = {}
    for k, v in batch.items():
      v = np.asarray(v)
      spec = PartitionSpec(None, (parallel.DATA, parallel.FSDP)) if k == "positions" \
          else PartitionSpec((parallel.DATA, parallel.FSDP))
      out[k] = jax.device_put(v, NamedSharding(self.mesh, spec))
    return out

  # --- Traced pieces. ---

  def _model(self, params) -> nnx.Module:
    """The model at `params` in its own dtypes (masters cast back: bf16 compute)."""
    return nnx.merge(self.graphdef, optim.compute_params(params, self._dtypes), self._rest)

  def _token_logprobs(self, params, mb):
    model = self._model(params)
    hidden = packed_hidden(model, mb)
    return logprobs_lib.chunked_logprobs(hidden, model.lm_head_kernel(), mb["targets"],
                                         token_chunk=self.cfg.token_chunk,
                                         vocab_chunk=self.cfg.vocab_chunk,
                                         keep_logits_bytes=self.cfg.keep_logits_mib << 20)

  def _micro_batches(self, batch: Batch) -> Batch:
    """[R, ...] -> [M, R / M, ...] so that each micro-batch is spread over the batch shards."""
    rows = batch["tokens"].shape[0]
    mb_rows = self.cfg.micro_batch_rows or rows
    if rows % mb_rows:
      raise ValueError(f"mini-batch of {rows} rows is not divisible by micro_batch_rows={mb_rows}")
    m = rows // mb_rows

    def split(k, x):
      axis = 1 if k == "positions" else 0
      x = jnp.moveaxis(x, axis, 0)
      x = x.reshape(mb_rows, m, *x.shape[1:]).swapaxes(0, 1)  # row r -> micro-batch r % m
      x = jnp.moveaxis(x, 1, axis + 1)
      names = (None,) * (axis + 1) + (parallel.BATCH,) + (None,) * (x.ndim - axis - 2)
      return parallel.constrain(x, names, self.rules) if self.mesh is not None else x

    return {k: split(k, v) for k, v in batch.items()}

  def _accumulate(self, params, micro: Batch, loss_fn: Callable):
    """Σ over micro-batches of (loss, grads, token-weighted metrics) with `lax.scan`."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(carry, mb):
      g_acc, loss_acc = carry
      (loss, (metrics, n)), grads = grad_fn(params, mb)
      g_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), g_acc, grads)
      return (g_acc, loss_acc + loss), (metrics, n)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (grads, loss), (metrics, counts) = jax.lax.scan(body, (zeros, jnp.zeros([])), micro)
    share = counts / jnp.maximum(jnp.sum(counts), 1.0)
    reduced = {}
    for k, v in metrics.items():
      if k in _SUMMED_METRICS:
        reduced[k] = jnp.sum(v)
      elif k.endswith("_min"):
        reduced[k] = jnp.min(v)
      elif k.endswith("_max"):
        reduced[k] = jnp.max(v)
      else:
        reduced[k] = jnp.sum(v * share)
    reduced["num_tokens"] = jnp.sum(counts)
    return loss, grads, reduced

  def _apply(self, state: TrainState, loss, grads, metrics):
    """One AdamW step, or no change at all when the loss or gradient norm is not finite."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params, compensation = optim.apply_updates(state.params, updates, state.compensation)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(keep(params, state.params), keep(opt_state, state.opt_state),
                           state.step + finite.astype(jnp.int32),
                           state.skipped + (~finite).astype(jnp.int32),
                           keep(compensation, state.compensation))
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, skipped=(~finite).astype(jnp.int32))
    return new_state, metrics

  def _policy_update(self, state: TrainState, batch: Batch):
    cfg = self.cfg
    weights = losses.token_weights(batch["loss_mask"], cfg.loss_agg,
                                   segment_ids=batch["segment_ids"], max_len=cfg.max_response_len)
    micro = self._micro_batches(dict(batch, weights=weights))
    policy_loss = losses.get_policy_loss(cfg.policy_loss)

    def loss_fn(params, mb):
      lp, ent = self._token_logprobs(params, mb)
      loss, metrics = policy_loss(
          lp, mb["old_logprobs"], mb["advantages"], mb["loss_mask"], clip_low=cfg.clip_low,
          clip_high=cfg.clip_high, dual_clip=cfg.dual_clip or None, weights=mb["weights"],
          ref_logprobs=mb.get("ref_logprobs"), kl_coef=cfg.kl_coef,
          kl_estimator=cfg.kl_estimator, sampler_logprobs=mb.get("sampler_logprobs"),
          tis_cap=cfg.tis_cap if cfg.old_logprobs == "recompute" else None)
      metrics["entropy"] = _masked_mean(jax.lax.stop_gradient(ent), mb["loss_mask"])
      return loss, (metrics, jnp.sum(mb["loss_mask"]))

    loss, grads, metrics = self._accumulate(state.params, micro, loss_fn)
    return self._apply(state, loss, grads, metrics)

  def _distill_update(self, state: TrainState, batch: Batch, teacher_kernel: jax.Array):
    cfg = self.cfg
    weights = losses.token_weights(batch["loss_mask"], "token_mean")
    micro = self._micro_batches(dict(batch, weights=weights))

    def loss_fn(params, mb):
      model = self._model(params)
      hidden = packed_hidden(model, mb)
      jsd = logprobs_lib.chunked_jsd(hidden, model.lm_head_kernel(), mb["teacher_hidden"],
                                     teacher_kernel, beta=cfg.jsd_beta,
                                     token_chunk=cfg.token_chunk, vocab_chunk=cfg.vocab_chunk)
      jsd = jnp.where(mb["loss_mask"] > 0, jsd, 0.0)
      loss = jnp.sum(mb["weights"] * jsd)
      return loss, ({"jsd": _masked_mean(jax.lax.stop_gradient(jsd), mb["loss_mask"])},
                    jnp.sum(mb["loss_mask"]))

    loss, grads, metrics = self._accumulate(state.params, micro, loss_fn)
    return self._apply(state, loss, grads, metrics)

  def _all_logprobs(self, params, batch: Batch) -> jax.Array:
    """float32[R, T] log-probs of `targets`, micro-batch by micro-batch (`lax.map`)."""
    micro = self._micro_batches(batch)
    lp = jax.lax.map(lambda mb: self._token_logprobs(params, mb)[0], micro)  # [M, R/M, T]
    return lp.swapaxes(0, 1).reshape(-1, lp.shape[-1])  # undo the r -> r % M interleave

  # --- Host API. ---

  def logprobs(self, batch: Mapping[str, np.ndarray]) -> jax.Array:
    """Log-probs of `batch["targets"]` under the current parameters: float32[R, T]."""
    keys = ("tokens", "targets", "positions", "segment_ids") + _vision_keys(batch)
    with self._context():
      return self._logprobs(self.state.params, self._put({k: batch[k] for k in keys}))

  def old_logprobs(self, minibatches: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    """log π_old float32[R, T] of every mini-batch of a step, taken before its first `update`.

    Recomputed with the current parameters in one pass over the rows of all mini-batches (the
    same program whatever I is), or the sampler's log-probs (`LearnerConfig.old_logprobs`).
    """
    if self.cfg.old_logprobs != "recompute":
      return [mb["sampler_logprobs"] for mb in minibatches]
    keys = ("tokens", "targets", "positions", "segment_ids") + _vision_keys(minibatches[0])
    rows = {k: np.concatenate([mb[k] for mb in minibatches], axis=1 if k == "positions" else 0)
            for k in keys}
    sizes = [mb["tokens"].shape[0] for mb in minibatches]
    # Gathered from every process: on a multi-process mesh the rows may come back split over
    # the processes' devices.
    return np.split(distributed.to_host(self.logprobs(rows)), np.cumsum(sizes)[:-1])

  def update(self, minibatch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """One AdamW update on the policy loss of one mini-batch (skipped when not finite).

    Args:
      minibatch: packed arrays (`PackedBatch.arrays()` plus `old_logprobs` and optionally
        `ref_logprobs`) with R rows, R divisible by `micro_batch_rows`.

    Returns:
      The update's metrics as device scalars (loss, grad_norm, skipped, clip fractions, entropy,
      ...); `jax.device_get` them after the step's last update.
    """
    with self._context():
      self.state, metrics = self._update(self.state, self._put(minibatch))
    return metrics

  def distill_update(self, batch: Mapping[str, np.ndarray], teacher_kernel: jax.Array
                     ) -> dict[str, float]:
    """One JSD update on the given tokens (Off/On-Distill: a single update per step).

    Args:
      batch: packed arrays plus `teacher_hidden` float[R, T, Dt], the teacher's final hidden
        states at the same positions.
      teacher_kernel: float[Dt, V] the teacher's LM-head kernel.
    """
    keys = ("tokens", "targets", "positions", "segment_ids", "loss_mask",
            "teacher_hidden") + _vision_keys(batch)
    with self._context():
      self.state, metrics = self._distill(self.state, self._put({k: batch[k] for k in keys}),
                                          teacher_kernel)
    return {k: float(v) for k, v in jax.device_get(metrics).items()}

  def update_model(self, model: nnx.Module) -> None:
    """Writes the current parameters into `model` (e.g. the sampler's copy), cast from the
    masters to the model's dtypes."""
    if not self.cfg.optim.masters:
      nnx.update(model, self.state.params)
      return
    with self._context():
      nnx.update(model, self._cast(self.state.params))

  @functools.cached_property
  def _cast(self):
    return jax.jit(lambda params: optim.compute_params(params, self._dtypes))
