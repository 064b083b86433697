"""Ahead-of-time compilation of the step's programs for a TPU topology, with their memory and cost.

  train    the learner's update (`Learner.abstract(...).lower_update`: micro-batch scan of forward +
           backward, AdamW) on the student's devices with `parallel.TRAIN_RULES` (FSDP x tensor);
  prefill  the sampler's prefill (`sampling.loop.prefill`) of a rollout batch, and
  decode   its decode loop (`sampling.loop.decode`), with `parallel.SAMPLE_RULES`, for the student
           and (named `t_prefill`, `t_decode`) for the teacher, its weights in FP8 if asked.

Every input is a `jax.ShapeDtypeStruct` with its sharding: nothing is allocated. Each `Program`
holds the compiler's per-chip memory (arguments, temporaries, outputs) and the model-formula cost
of one call, from which `Program.row` derives the roofline time, tokens/s and MFU.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from zppo_jax import parallel
from zppo_jax.plan.shapes import RunShape, cache_bytes_per_row, forward_flops
from zppo_jax.plan.topology import Chip

GIB = 1024 ** 3


@dataclasses.dataclass
class Program:
  """One compiled program's numbers (bytes per chip unless said otherwise)."""
  name: str
  chips: int
  hbm: float
  argument: float = 0.0
  temp: float = 0.0
  output: float = 0.0
  alias: float = 0.0
  resident: float = 0.0       # other state that stays in HBM meanwhile (see `report.plan`)
  flops: float = 0.0          # model FLOPs of one call, all chips
  hw_flops: float = 0.0       # with rematerialisation
  hbm_bytes: float = 0.0      # bytes one call must stream per chip (weights, cache)
  tokens: float = 0.0         # tokens one call produces/trains (all chips)
  rows: int = 0               # rollout rows of a sampling program (all chips)
  compile_s: float = 0.0
  xla_flops: float = 0.0      # the compiler's estimate (a loop body counted once)
  error: str = ""

  @property
  def total(self) -> float:
    return self.argument + self.temp + self.output - self.alias + self.resident

  @property
  def fits(self) -> bool:
    return not self.error and self.total <= self.hbm

  def seconds(self, chip: Chip) -> float:
    """Roofline time of one call: FLOPs at peak or HBM bytes at bandwidth, the slower."""
    compute = self.hw_flops / (self.chips * chip.peak_tflops * 1e12)
    memory = self.hbm_bytes / (chip.hbm_gbps * 1e9)
    return max(compute, memory)

  def row(self, chip: Chip) -> dict[str, Any]:
    """The report's numbers (GiB, TFLOP, seconds, tokens/s, MFU)."""
    s = self.seconds(chip)
    mfu = self.flops / (s * self.chips * chip.peak_tflops * 1e12) if s else 0.0
    return dict(program=self.name, chips=self.chips, args_gib=self.argument / GIB,
                resident_gib=self.resident / GIB,
                temp_gib=self.temp / GIB, out_gib=self.output / GIB, total_gib=self.total / GIB,
                hbm_gib=self.hbm / GIB, fits=self.fits, tflop=self.flops / 1e12, est_s=s,
                tokens_per_s=self.tokens / s if s else 0.0, mfu=mfu, compile_s=self.compile_s,
                rows=self.rows or "", error=self.error)


def _compile(program: Program, lower: Callable[[], Any]):
  """Lowers and compiles; fills `program`'s memory numbers (or its error). Returns the compiled
  program or None."""
  start = time.time()
  compiled = None
  try:
    compiled = lower().compile()
    m = compiled.memory_analysis()
    program.argument = float(m.argument_size_in_bytes)
    program.temp = float(m.temp_size_in_bytes)
    program.output = float(m.output_size_in_bytes)
    program.alias = float(m.alias_size_in_bytes)
  except Exception as e:  # pylint: disable=broad-except  (an OOM is a result, not a crash)
    program.error = str(e).split("\n")[0][:300]
  program.compile_s = time.time() - start
  if compiled is not None:
    try:
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      program.xla_flops = float((cost or {}).get("flops", 0.0))
    except Exception:  # pylint: disable=broad-except  (some backends have no cost model)
      pass
  return compiled


def mesh_for(devices, tensor: int) -> jax.sharding.Mesh:
  """A (data=1, fsdp=N/tensor, tensor) mesh over `devices`."""
  n = len(devices)
  if n % tensor:
    raise ValueError(f"{n} devices are not divisible by tensor={tensor}")
  grid = np.array(devices).reshape(1, n // tensor, tensor)
  return jax.sharding.Mesh(grid, parallel.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _abstract_model(cfg, fp8: bool = False):
  from zppo_jax.models.qwen3_5 import Qwen3_5ForCausalLM  # pylint: disable=import-outside-toplevel
  from zppo_jax.models.qwen3_5 import fp8 as fp8_lib  # pylint: disable=import-outside-toplevel

  def build():
    model = Qwen3_5ForCausalLM(cfg, rngs=nnx.Rngs(0))
    return fp8_lib.quantize_modules(model) if fp8 else model

  return nnx.eval_shape(build)


def _batch_spec(mesh, rows: int) -> PartitionSpec:
  shards = mesh.shape[parallel.DATA] * mesh.shape[parallel.FSDP]
  return PartitionSpec((parallel.DATA, parallel.FSDP) if rows % shards == 0 else None)


def compile_train(shape: RunShape, devices, hbm: float) -> Program:
  """The learner's jitted update on one mini-batch of `train_rows * micro_batches` packed rows."""
  from zppo_jax.train import learner as learner_lib  # pylint: disable=import-outside-toplevel
  from zppo_jax.train import optim  # pylint: disable=import-outside-toplevel
  mesh = mesh_for(devices, shape.tensor)
  shards = mesh.shape[parallel.DATA] * mesh.shape[parallel.FSDP]
  micro = shape.train_rows or shards
  rows, t = micro * shape.micro_batches, shape.row_len
  cfg = learner_lib.LearnerConfig(micro_batch_rows=micro,
                                  optim=optim.OptimConfig(state_dtype=shape.opt_state_dtype))
  learner = learner_lib.Learner.abstract(_abstract_model(shape.student), cfg, mesh=mesh,
                                         rules=parallel.TRAIN_RULES)
  row = NamedSharding(mesh, PartitionSpec((parallel.DATA, parallel.FSDP)))
  pos = NamedSharding(mesh, PartitionSpec(None, (parallel.DATA, parallel.FSDP)))
  batch = {k: jax.ShapeDtypeStruct((rows, t), dtype, sharding=row) for k, dtype in (
      ("tokens", jnp.int32), ("targets", jnp.int32), ("segment_ids", jnp.int32),
      ("loss_mask", jnp.float32), ("advantages", jnp.float32), ("old_logprobs", jnp.float32))}
  batch["positions"] = jax.ShapeDtypeStruct((3, rows, t), jnp.int32, sharding=pos)
  program = Program("train", len(devices), hbm)
  _compile(program, lambda: learner.lower_update(batch))
  program.tokens = rows * t
  program.flops = 3 * forward_flops(shape.student, program.tokens, t / 4)  # packed: ~T/4 context
  extra = {"none": 0, "dots": 0.15, "full": 1}[shape.student.remat]
  program.hw_flops = program.flops * (1 + extra / 3)
  program.hbm_bytes = 0.0   # compute-bound
  return program


def compile_rollout(name: str, cfg, rows: int, group: int, shape: RunShape, devices, hbm: float,
                    fp8: bool = False, tensor: int = 1) -> tuple[Program, Program]:
  """The sampler's prefill of `rows / group` prompts and its decode loop over `rows` rows.

  Args:
    name: prefix of the programs' names ("" or "t_").
    cfg: the model's `ModelConfig`.
    rows: decode rows of one call (all chips); group: samples per prompt.
    shape: the run's shapes (prompt bucket, max response).
    devices, hbm: the program's devices and the HBM bytes of one.
    fp8: weights in FP8 with block scales.
    tensor: tensor-parallel size of the mesh.

  Returns:
    (prefill, decode) programs; decode carries an error when the prefill did not compile.
  """
  from zppo_jax.sampling import filters, loop as rollout  # pylint: disable=import-outside-toplevel
  mesh = mesh_for(devices, tensor)
  graphdef, state = nnx.split(_abstract_model(cfg, fp8))
  cache_len = shape.prompt_len + shape.max_new
  loop = rollout.RolloutLoop(graphdef, cfg.vocab_size, cache_len, shape.max_new,
                             parallel.SAMPLE_RULES, 0)
  prompts = rows // group
  pre = Program(f"{name}prefill", len(devices), hbm)
  dec = Program(f"{name}decode", len(devices), hbm)
  sds = lambda s, dt, spec: jax.ShapeDtypeStruct(s, dt, sharding=NamedSharding(mesh, spec))
  with jax.set_mesh(mesh), parallel.use_rules(parallel.SAMPLE_RULES):
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state,
                          parallel.state_shardings(state, mesh, parallel.SAMPLE_RULES))
    p_spec, r_spec = _batch_spec(mesh, prompts), _batch_spec(mesh, rows)
    ids = sds((prompts, shape.prompt_len), jnp.int32, p_spec)
    mask = sds((prompts, shape.prompt_len), jnp.int32, p_spec)
    row_ids = sds((rows,), jnp.int32, r_spec)
    real = sds((rows,), jnp.bool_, r_spec)
    lowered = []

    def lower_prefill():
      lowered.append(rollout.prefill.lower(loop, group, params, ids, None, None, mask, row_ids,
                                           real))
      return lowered[0]

    compiled = _compile(pre, lower_prefill)
    if compiled is not None:
      state_in, logits_in = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
          lowered[0].out_info, compiled.output_shardings)
      per_row = lambda dt: sds((rows,), dt, r_spec)
      knobs = filters.SamplingKnobs(
          temperature=per_row(jnp.float32), top_p=per_row(jnp.float32),
          top_k=per_row(jnp.int32), min_p=per_row(jnp.float32),
          presence_penalty=per_row(jnp.float32))
      key = jax.eval_shape(lambda: jax.random.key(0))
      key = jax.ShapeDtypeStruct(key.shape, key.dtype,
                                 sharding=NamedSharding(mesh, PartitionSpec()))
      scalar = sds((), jnp.int32, PartitionSpec())
      stops = sds((8,), jnp.int32, PartitionSpec())
      _compile(dec, lambda: rollout.decode.lower(loop, params, state_in, logits_in, knobs, key,
                                                 scalar, stops))
    else:
      dec.error = "prefill did not compile"
  pre.tokens = prompts * shape.prompt_len
  pre.flops = pre.hw_flops = forward_flops(cfg, pre.tokens, shape.prompt_len / 2)
  weights_per_chip = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / tensor
  # One decode step: every row makes a token attending to prompt + max_new / 2 keys on average,
  # but the attention reads every slot of the static cache (masked), so every slot is streamed.
  context = shape.prompt_len + shape.max_new / 2
  dec.tokens = rows
  dec.flops = forward_flops(cfg, rows, context)
  dec.hw_flops = forward_flops(cfg, rows, cache_len)
  dec.hbm_bytes = weights_per_chip + rows * cache_bytes_per_row(cfg, cache_len) / len(devices)
  pre.hbm_bytes = weights_per_chip
  return pre, dec
