"""`zppo plan`: will a run fit on a TPU slice? Ahead-of-time compilation for a topology on any host.

    zppo plan --config configs/qwen3_5_2b_zppo.py --topology v5p-64 [--tensor 1] [--remat full]

With libtpu installed (``pip install -e ".[tpu]"``) JAX can compile for a TPU topology it does not
have (`jax.experimental.topologies`). The plan builds the student, the teacher and the optimizer
state as shapes only (``nnx.eval_shape``) with the run's sharding rules and compiles, for the
topology:

  train    the learner's update (`Learner._policy_update`: micro-batch scan of forward + backward,
           AdamW) on the student's devices with `parallel.TRAIN_RULES` (FSDP x tensor);
  prefill  the sampler's prefill (`sampling.loop.prefill`) of the student's rollout batch, and
  decode   its decode loop (`sampling.loop.decode`), with `parallel.SAMPLE_RULES`;
  t_prefill / t_decode  the same for the teacher's G_T rollouts on the teacher's devices (the
           last ``teacher.device_fraction`` of the slice), its weights in FP8 with `--teacher-fp8`.

Each program reports the compiler's per-chip memory (arguments, temporaries, outputs, total against
the chip's HBM) and a cost estimate. XLA's ``cost_analysis()`` counts a scan or while-loop body
once, so FLOPs come from the model's own formula (`model_flops`) and time from a roofline (FLOPs at
peak, or weight + cache bytes at HBM bandwidth, whichever is slower); tokens/s and MFU follow. The
estimates are upper bounds: real steps lose time to collectives and the sampler's host work.

When a program does not fit, `suggest` compiles the same plan on 2x, 4x, ... the chips of the same
generation and reports the first that fits.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: HBM per chip, bf16 peak, HBM bandwidth; `cores_in_name` is 2 where
  the slice name counts TensorCores (v4-32 = 16 chips) and 1 where it counts chips (v5e-16)."""
  name: str
  hbm_gib: float
  peak_tflops: float
  hbm_gbps: float
  cores_in_name: int
  dims: int   # torus dimensions of the topology string


CHIPS = {
    "v5p": Chip("v5p", 95.0, 459.0, 2765.0, 2, 3),
    "v6e": Chip("v6e", 32.0, 918.0, 1640.0, 1, 2),
    "v5e": Chip("v5e", 16.0, 197.0, 819.0, 1, 2),
    "v4": Chip("v4", 32.0, 275.0, 1200.0, 2, 3),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str          # e.g. "v5p-128"
  chip: Chip
  chips: int
  desc: str          # `get_topology_desc` name, e.g. "v5p:4x4x4"


def _torus(chips: int, dims: int) -> str:
  if chips & (chips - 1):
    raise ValueError(f"{chips} chips: only power-of-two slices are supported")
  shape = [1] * dims
  i = 0
  while math.prod(shape) < chips:
    shape[i % dims] *= 2
    i += 1
  return "x".join(str(s) for s in sorted(shape))


def parse_topology(name: str) -> Topology:
  """`v5p-128` (TensorCores, 64 chips), `v6e-64`, `v5e-16`, `v4-32` -> a `Topology`."""
  gen, _, count = name.partition("-")
  if gen not in CHIPS or not count.isdigit() or int(count) < 1:
    raise ValueError(f"unknown topology {name!r}: expected GEN-N with GEN in {sorted(CHIPS)}, "
                     "e.g. v5p-128, v6e-64, v5e-16")
  chip = CHIPS[gen]
  chips = max(1, int(count) // chip.cores_in_name)
  return Topology(name, chip, chips, f"{gen}:{_torus(chips, chip.dims)}")


def scaled(topo: Topology, factor: int) -> Topology:
  n = topo.chips * factor
  return parse_topology(f"{topo.chip.name}-{n * topo.chip.cores_in_name}")


def _tpu_env():
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-16")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def libtpu_available() -> str | None:
  """None when AOT compilation for TPU works here, else the reason it does not."""
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return "libtpu is not installed (pip install -e '.[tpu]')"
  return None


def topology_devices(topo: Topology) -> list:
  _tpu_env()
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  return list(topologies.get_topology_desc(topology_name=topo.desc, platform="tpu").devices)


# --- The run's shapes. ---

@dataclasses.dataclass(frozen=True)
class RunShape:
  """What the plan compiles, from a run config plus the plan's choices.

  Attributes:
    student, teacher: `ModelConfig` presets with the run's dtypes and remat.
    prompt_len: prompt bucket L (data.max_prompt_tokens).
    max_new: max response tokens (sampling.max_new_tokens).
    row_len: packed training row (rl.pack_row_len); also the sampler's cache length.
    group: G_S; teacher_group: G_T.
    prompts: prompts per step (|X_new| + |X_replay|).
    rollout_rows / teacher_rows: rows of one compiled decode program (all chips together).
    train_rows: rows of one update's micro-batch (all chips together), and micro_batches of them.
    tensor: tensor-parallel size of the student's mesh; teacher_tensor: of the teacher's.
    teacher_fraction: share of the chips that run the teacher (0 = shares the student's).
    teacher_fp8: teacher weights in FP8 with block scales.
    opt_state_dtype: Adam moments' dtype.
  """
  student: Any
  teacher: Any
  prompt_len: int
  max_new: int
  row_len: int
  group: int
  teacher_group: int
  prompts: int
  rollout_rows: int
  teacher_rows: int
  train_rows: int
  micro_batches: int
  tensor: int
  teacher_tensor: int
  teacher_fraction: float
  teacher_fp8: bool
  opt_state_dtype: str


def _preset(checkpoint: str):
  from zppo_jax.models.qwen3_5 import config as mc  # pylint: disable=import-outside-toplevel
  base = os.path.basename(checkpoint.rstrip("/")).lower()
  for suffix in ("-fp8", "_fp8"):
    base = base.removesuffix(suffix)
  key = base.replace("qwen3.5-", "qwen3_5_").replace(".", "_").replace("-", "_")
  if key not in mc.PRESETS:
    raise ValueError(f"checkpoint {checkpoint!r}: no preset {key!r} (known: {sorted(mc.PRESETS)}); "
                     "the plan needs the model's shape")
  return mc.PRESETS[key]


def run_shape(config, *, tensor: int = 1, teacher_tensor: int | None = None, remat: str = "full",
              rollout_rows: int = 0,
              teacher_rows: int = 0, train_rows: int = 0, micro_batches: int = 2,
              teacher_fp8: bool | None = None, student_preset=None, teacher_preset=None
              ) -> RunShape:
  """The shapes of one ZPPO step of `config` (an ml_collections run config)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  dt = lambda s: jnp.dtype(s)
  student_preset = student_preset or _preset(config.student.checkpoint)
  teacher_preset = teacher_preset or _preset(config.teacher.checkpoint)
  student = student_preset(dtype=dt(config.student.compute_dtype),
                           param_dtype=dt(config.student.param_dtype), remat=remat)
  teacher = teacher_preset(dtype=dt(config.teacher.compute_dtype),
                           param_dtype=dt(config.teacher.param_dtype))
  if teacher_fp8 is None:
    teacher_fp8 = "fp8" in config.teacher.checkpoint.lower()
  prompts = int(config.rl.batch_prompts * (1 + config.rl.replay_ratio))
  return RunShape(
      student=student, teacher=teacher, prompt_len=int(config.data.max_prompt_tokens),
      max_new=int(config.sampling.max_new_tokens), row_len=int(config.rl.pack_row_len),
      group=int(config.rl.group_size), teacher_group=int(config.rl.teacher_group_size),
      prompts=prompts, rollout_rows=rollout_rows, teacher_rows=teacher_rows,
      train_rows=train_rows, micro_batches=micro_batches, tensor=tensor,
      teacher_tensor=tensor if teacher_tensor is None else teacher_tensor,
      teacher_fraction=float(config.teacher.device_fraction), teacher_fp8=bool(teacher_fp8),
      opt_state_dtype=str(config.optim.state_dtype))


# --- The model's own cost formula. ---

def matmul_params(cfg) -> int:
  """Weights touched by a matmul per token (everything but the embedding lookup and norms)."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  attn = d * (cfg.num_attention_heads * 2 * cfg.head_dim) + 2 * d * cfg.num_key_value_heads * \
      cfg.head_dim + cfg.num_attention_heads * cfg.head_dim * d
  gdn = d * (cfg.gdn_conv_dim + cfg.linear_num_value_heads * cfg.linear_value_head_dim
             + 2 * cfg.linear_num_value_heads) + cfg.linear_num_value_heads * \
      cfg.linear_value_head_dim * d
  mlp = 3 * d * f
  n_attn = sum(t == "full_attention" for t in cfg.layer_types)
  n_gdn = cfg.num_hidden_layers - n_attn
  return n_attn * attn + n_gdn * gdn + cfg.num_hidden_layers * mlp + d * cfg.vocab_size


def forward_flops(cfg, tokens: float, context: float) -> float:
  """Forward FLOPs of `tokens` tokens attending to `context` keys on average."""
  n_attn = sum(t == "full_attention" for t in cfg.layer_types)
  n_gdn = cfg.num_hidden_layers - n_attn
  attn = 4 * context * cfg.num_attention_heads * cfg.head_dim * n_attn
  gdn = 6 * cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * n_gdn
  return tokens * (2 * matmul_params(cfg) + attn + gdn)


def cache_bytes_per_row(cfg, slots: int) -> int:
  """Decode cache of one row: attention k/v over `slots` plus the GDN conv and fp32 state."""
  n_attn = sum(t == "full_attention" for t in cfg.layer_types)
  n_gdn = cfg.num_hidden_layers - n_attn
  item = np.dtype(cfg.dtype).itemsize
  kv = 2 * slots * cfg.num_key_value_heads * cfg.head_dim * item * n_attn
  gdn = (cfg.gdn_conv_dim * (cfg.linear_conv_kernel_dim - 1) * item
         + 4 * cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim)
  return kv + gdn * n_gdn


# --- Compilation. ---

@dataclasses.dataclass
class Program:
  """One compiled program's numbers (per chip unless said otherwise)."""
  name: str
  chips: int
  hbm: float
  argument: float = 0.0
  temp: float = 0.0
  output: float = 0.0
  alias: float = 0.0
  resident: float = 0.0       # other state that stays in HBM meanwhile (see `plan`)
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
    compute = self.hw_flops / (self.chips * chip.peak_tflops * 1e12)
    memory = self.hbm_bytes / (chip.hbm_gbps * 1e9)
    return max(compute, memory)

  def row(self, chip: Chip) -> dict[str, Any]:
    s = self.seconds(chip)
    mfu = self.flops / (s * self.chips * chip.peak_tflops * 1e12) if s else 0.0
    return dict(program=self.name, chips=self.chips, args_gib=self.argument / GIB,
                resident_gib=self.resident / GIB,
                temp_gib=self.temp / GIB, out_gib=self.output / GIB, total_gib=self.total / GIB,
                hbm_gib=self.hbm / GIB, fits=self.fits, tflop=self.flops / 1e12, est_s=s,
                tokens_per_s=self.tokens / s if s else 0.0, mfu=mfu, compile_s=self.compile_s,
                rows=self.rows or "", error=self.error)


def _memory(compiled, program: Program):
  m = compiled.memory_analysis()
  program.argument = float(m.argument_size_in_bytes)
  program.temp = float(m.temp_size_in_bytes)
  program.output = float(m.output_size_in_bytes)
  program.alias = float(m.alias_size_in_bytes)
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    program.xla_flops = float(cost.get("flops", 0.0))
  except Exception:  # pylint: disable=broad-except  (some backends have no cost model)
    pass


def _compile(program: Program, lower: Callable[[], Any]):
  """Lowers and compiles; fills `program`'s memory numbers (or its error). Returns the compiled
  program or None."""
  start = time.time()
  compiled = None
  try:
    compiled = lower().compile()
    _memory(compiled, program)
  except Exception as e:  # pylint: disable=broad-except
    program.error = str(e).split("\n")[0][:300]
  program.compile_s = time.time() - start
  return compiled


def _mesh(devices, tensor: int):
  import jax  # pylint: disable=import-outside-toplevel
  from zppo_jax import parallel  # pylint: disable=import-outside-toplevel
  n = len(devices)
  if n % tensor:
    raise ValueError(f"{n} devices are not divisible by tensor={tensor}")
  grid = np.array(devices).reshape(1, n // tensor, tensor)
  return jax.sharding.Mesh(grid, parallel.MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _abstract(tree, shardings):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def _abstract_model(cfg, fp8: bool = False):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from zppo_jax.models.qwen3_5 import Qwen3_5ForCausalLM  # pylint: disable=import-outside-toplevel
  from zppo_jax.models.qwen3_5 import fp8 as fp8_lib  # pylint: disable=import-outside-toplevel

  def build():
    model = Qwen3_5ForCausalLM(cfg, rngs=nnx.Rngs(0))
    return fp8_lib.quantize_modules(model) if fp8 else model

  return nnx.eval_shape(build)


def _batch_spec(mesh, rows):
  import jax  # pylint: disable=import-outside-toplevel
  from zppo_jax import parallel  # pylint: disable=import-outside-toplevel
  shards = mesh.shape[parallel.DATA] * mesh.shape[parallel.FSDP]
  axes = (parallel.DATA, parallel.FSDP) if rows % shards == 0 else None
  return jax.sharding.PartitionSpec(axes)


def compile_train(shape: RunShape, devices, hbm: float) -> Program:
  """The learner's jitted update on one mini-batch of `train_rows * micro_batches` packed rows."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  from zppo_jax import parallel  # pylint: disable=import-outside-toplevel
  from zppo_jax.train import learner as learner_lib  # pylint: disable=import-outside-toplevel

  mesh = _mesh(devices, shape.tensor)
  shards = mesh.shape[parallel.DATA] * mesh.shape[parallel.FSDP]
  micro = shape.train_rows or shards
  rows = micro * shape.micro_batches
  cfg = learner_lib.LearnerConfig(micro_batch_rows=micro, opt_state_dtype=shape.opt_state_dtype)
  model = _abstract_model(shape.student)
  # A Learner without its eager set-up (which would allocate the state): the same traced update.
  learner = object.__new__(learner_lib.Learner)
  learner.cfg, learner.mesh, learner.rules = cfg, mesh, parallel.TRAIN_RULES
  learner.graphdef, params, learner._rest = nnx.split(model, nnx.Param, ...)
  learner.tx = cfg.optimizer()
  program = Program("train", len(devices), hbm)
  with jax.set_mesh(mesh), parallel.use_rules(parallel.TRAIN_RULES):
    state_sh = learner._state_shardings(params)
    abstract_state = jax.eval_shape(
        lambda p: learner_lib.TrainState(p, learner.tx.init(p), jnp.zeros([], jnp.int32),
                                         jnp.zeros([], jnp.int32)), params)
    state = _abstract(abstract_state, state_sh)
    t = shape.row_len
    row = NamedSharding(mesh, PartitionSpec((parallel.DATA, parallel.FSDP)))
    pos = NamedSharding(mesh, PartitionSpec(None, (parallel.DATA, parallel.FSDP)))
    i32, f32 = jnp.int32, jnp.float32
    batch = {k: jax.ShapeDtypeStruct((rows, t), dtype, sharding=row) for k, dtype in (
        ("tokens", i32), ("targets", i32), ("segment_ids", i32), ("loss_mask", f32),
        ("advantages", f32), ("old_logprobs", f32))}
    batch["positions"] = jax.ShapeDtypeStruct((3, rows, t), i32, sharding=pos)
    update = jax.jit(learner._policy_update, donate_argnums=0, out_shardings=(state_sh, None))
    _compile(program, lambda: update.lower(state, batch))
  tokens = rows * t
  program.tokens = tokens
  program.flops = 3 * forward_flops(shape.student, tokens, t / 4)   # packed rows: ~T/4 context
  extra = {"none": 0, "dots": 0.15, "full": 1}[shape.student.remat]
  program.hw_flops = program.flops * (1 + extra / 3)
  program.hbm_bytes = 0.0   # compute-bound
  return program


def compile_rollout(name: str, cfg, rows: int, group: int, shape: RunShape, devices, hbm: float,
                    fp8: bool = False, tensor: int = 1) -> tuple[Program, Program]:
  """The sampler's prefill of rows / group prompts and its decode loop over `rows` rows."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  from zppo_jax import parallel  # pylint: disable=import-outside-toplevel
  from zppo_jax.sampling import filters, loop as rollout  # pylint: disable=import-outside-toplevel

  mesh = _mesh(devices, tensor)
  model = _abstract_model(cfg, fp8)
  graphdef, state = nnx.split(model)
  cache_len = shape.prompt_len + shape.max_new
  loop = rollout.RolloutLoop(graphdef, cfg.vocab_size, cache_len, shape.max_new,
                             parallel.SAMPLE_RULES, 0)
  prompts = rows // group
  pre = Program(f"{name}prefill", len(devices), hbm)
  dec = Program(f"{name}decode", len(devices), hbm)
  with jax.set_mesh(mesh), parallel.use_rules(parallel.SAMPLE_RULES):
    params = _abstract(state, parallel.state_shardings(state, mesh, parallel.SAMPLE_RULES))
    p_spec, r_spec = _batch_spec(mesh, prompts), _batch_spec(mesh, rows)
    sds = lambda s, dt, spec: jax.ShapeDtypeStruct(s, dt, sharding=NamedSharding(mesh, spec))
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
      rep = PartitionSpec()
      knobs = filters.SamplingKnobs(
          temperature=sds((rows,), jnp.float32, r_spec), top_p=sds((rows,), jnp.float32, r_spec),
          top_k=sds((rows,), jnp.int32, r_spec), min_p=sds((rows,), jnp.float32, r_spec),
          presence_penalty=sds((rows,), jnp.float32, r_spec))
      key = jax.eval_shape(lambda: jax.random.key(0))
      key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, rep))
      scalar = sds((), jnp.int32, rep)
      stops = sds((8,), jnp.int32, rep)
      _compile(dec, lambda: rollout.decode.lower(loop, params, state_in, logits_in, knobs, key,
                                                 scalar, stops))
    else:
      dec.error = "prefill did not compile"
  pre.tokens = prompts * shape.prompt_len
  pre.flops = pre.hw_flops = forward_flops(cfg, pre.tokens, shape.prompt_len / 2)
  weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  weights_per_chip = weights / tensor
  # One decode step: every row makes a token; mean context prompt + max_new / 2.
  context = shape.prompt_len + shape.max_new / 2
  dec.tokens = rows
  dec.flops = dec.hw_flops = forward_flops(cfg, rows, context)
  dec.hbm_bytes = weights_per_chip + rows * cache_bytes_per_row(cfg, int(context)) / len(devices)
  pre.hbm_bytes = weights_per_chip
  return pre, dec


def _weight_bytes(cfg, fp8: bool = False) -> float:
  """Parameter bytes (FP8: quantised matmul weights 1 byte, embedding and LM head kept)."""
  item = np.dtype(cfg.param_dtype).itemsize
  embed = cfg.vocab_size * cfg.hidden_size
  body = matmul_params(cfg) - embed
  head = embed if cfg.tie_word_embeddings else 2 * embed
  return body * (1 if fp8 else item) + head * item


def _split_devices(devices, fraction):
  n_teacher = int(math.ceil(fraction * len(devices)))
  if fraction <= 0 or len(devices) < 2 or n_teacher >= len(devices):
    return devices, devices
  return devices[:-n_teacher], devices[-n_teacher:]


def _largest_pow2(n: int) -> int:
  return 1 << max(0, int(n).bit_length() - 1)


def auto_rows(cfg, shape: RunShape, chips: int, hbm: float, want: int, group: int,
              fp8: bool = False, tensor: int = 1) -> int:
  """Largest power-of-two rollout batch (a multiple of `group`, at most `want`) that fits by the
  formula in 75% of the chips' HBM: weights, each row's decode cache and buffers, and the prefill's
  attention scores ([N, L, S] per prompt, which the sampler's prefill materialises in one piece;
  the heads are split over `tensor` but so are the chips). The compile then checks."""
  per_chip_weights = _weight_bytes(cfg, fp8) / tensor
  slots = shape.prompt_len + shape.max_new
  per_row = cache_bytes_per_row(cfg, slots) + shape.max_new * 12 + cfg.vocab_size
  # fp32 logits, fp32 probabilities and a bf16 copy: ~10 bytes a score (measured on v5p: 15).
  scores = cfg.num_attention_heads * shape.prompt_len * slots * 10
  per_row += scores / group
  room = 0.75 * hbm * chips - per_chip_weights * chips
  rows = _largest_pow2(max(group, min(want, int(room // per_row)))) if room > 0 else group
  return max(group, rows - rows % group)


def plan(shape: RunShape, topo: Topology, programs=("train", "rollout", "teacher"),
         log=print) -> dict[str, Any]:
  """Compiles the step's programs for `topo`; returns {topology, shape, programs: [rows]}."""
  devices = topology_devices(topo)
  per_chip = len(devices) // topo.chips or 1
  hbm = topo.chip.hbm_gib * GIB / per_chip
  student_devices, teacher_devices = _split_devices(devices, shape.teacher_fraction)
  shared = student_devices is teacher_devices
  chip = topo.chip
  # What stays resident while another program runs (the trainer keeps all of it on device): the
  # learner's state (params + Adam moments) and the sampler's weight copy on the student's chips,
  # and the teacher's weights on the teacher's (on every chip when they share the slice).
  train_state = _weight_bytes(shape.student) * (1 + 2 * np.dtype(shape.opt_state_dtype).itemsize
                                                / np.dtype(shape.student.param_dtype).itemsize)
  train_state /= len(student_devices)
  sampler_weights = _weight_bytes(shape.student) / shape.tensor
  teacher_weights = _weight_bytes(shape.teacher, shape.teacher_fp8) / shape.teacher_tensor
  done: list[Program] = []
  if "train" in programs:
    p = compile_train(shape, student_devices, hbm)
    p.resident = sampler_weights + (teacher_weights if shared else 0.0)
    done.append(p)
    log(_format_row(p.row(chip)))
  if "rollout" in programs:
    n = shape.rollout_rows or auto_rows(shape.student, shape, len(student_devices), hbm,
                                        shape.prompts * shape.group, shape.group,
                                        tensor=shape.tensor)
    for p in compile_rollout("", shape.student, n, shape.group, shape, student_devices, hbm,
                             tensor=shape.tensor):
      p.resident = train_state + (teacher_weights if shared else 0.0)
      p.rows = n
      done.append(p)
      log(_format_row(p.row(chip)))
  if "teacher" in programs:
    n = shape.teacher_rows or auto_rows(shape.teacher, shape, len(teacher_devices), hbm,
                                        shape.prompts * shape.teacher_group, shape.teacher_group,
                                        shape.teacher_fp8, shape.teacher_tensor)
    for p in compile_rollout("t_", shape.teacher, n, shape.teacher_group, shape, teacher_devices,
                             hbm, fp8=shape.teacher_fp8, tensor=shape.teacher_tensor):
      p.resident = (train_state + sampler_weights) if shared else 0.0
      p.rows = n
      done.append(p)
      log(_format_row(p.row(chip)))
  rows = [p.row(chip) for p in done]
  step = step_seconds(shape, {p.name: p for p in done}, chip)
  if step:
    log(f"worst-case step (every response {shape.max_new} tokens, every prompt hard): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in step.items()))
  return dict(topology=topo.name, desc=topo.desc, chips=topo.chips, hbm_gib=chip.hbm_gib,
              fits=all(r["fits"] for r in rows), programs=rows, step_s=step)


def step_seconds(shape: RunShape, programs: dict[str, Program], chip: Chip) -> dict[str, float]:
  """Roofline seconds of one ZPPO step in the worst case: every plain prompt's G_S rollouts, G_T
  teacher rollouts and G_S BCQ + G_S NCQ rollouts for every prompt, all at max length, then the
  update over all those tokens. Sequential, as the trainer runs it."""
  out = {}
  plain = shape.prompts * shape.group
  total_rows = 3 * plain   # plain + BCQ + NCQ groups
  if "prefill" in programs and "decode" in programs and programs["decode"].rows:
    calls = math.ceil(total_rows / programs["decode"].rows)
    out["student rollout"] = calls * (programs["prefill"].seconds(chip)
                                      + shape.max_new * programs["decode"].seconds(chip))
  if "t_prefill" in programs and "t_decode" in programs and programs["t_decode"].rows:
    calls = math.ceil(shape.prompts * shape.teacher_group / programs["t_decode"].rows)
    out["teacher rollout"] = calls * (programs["t_prefill"].seconds(chip)
                                      + shape.max_new * programs["t_decode"].seconds(chip))
  if "train" in programs and programs["train"].tokens:
    tokens = total_rows * (shape.prompt_len + shape.max_new)
    out["update"] = tokens / programs["train"].tokens * programs["train"].seconds(chip)
  if out:
    out["total"] = sum(out.values())
  return out


HEADER = (f"{'program':<10} {'chips':>5} {'rows':>5} {'args':>7} {'temp':>7} {'out':>7} "
          f"{'resid':>7} "
          f"{'total':>7} {'HBM':>6} {'fits':>4} {'TFLOP':>9} {'est s':>8} {'tok/s':>10} "
          f"{'MFU':>5}")


def _format_row(r: dict[str, Any]) -> str:
  if r["error"]:
    return f"{r['program']:<10} {r['chips']:>5} {r['rows']:>5}  error: {r['error']}"
  return (f"{r['program']:<10} {r['chips']:>5} {r['rows']:>5} {r['args_gib']:>7.2f} "
          f"{r['temp_gib']:>7.2f} {r['out_gib']:>7.2f} {r['resident_gib']:>7.2f} "
          f"{r['total_gib']:>7.2f} "
          f"{r['hbm_gib']:>6.1f} {'yes' if r['fits'] else 'NO':>4} {r['tflop']:>9.1f} "
          f"{r['est_s']:>8.3f} {r['tokens_per_s']:>10.0f} {r['mfu']:>5.2f}")


def suggest(shape: RunShape, topo: Topology, max_factor: int = 16, log=print) -> dict | None:
  """The first of 2x, 4x, ... `topo`'s chips on which every program fits (None if none does)."""
  factor = 2
  while factor <= max_factor:
    bigger = scaled(topo, factor)
    log(f"-- trying {bigger.name} ({bigger.chips} chips)")
    result = plan(shape, bigger, log=log)
    if result["fits"]:
      return result
    factor *= 2
  return None


def main(argv: list[str]) -> int:
  from zppo_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="zppo plan", description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--topology", required=True, help="e.g. v5p-128, v6e-64, v5e-16, v4-32")
  parser.add_argument("--tensor", type=int, default=1, help="tensor-parallel size")
  parser.add_argument("--teacher-tensor", type=int, default=None,
                      help="tensor-parallel size of the teacher's mesh (default --tensor)")
  parser.add_argument("--remat", default="full", choices=("none", "dots", "full"))
  parser.add_argument("--rollout-rows", type=int, default=0, help="0 = the largest that fits")
  parser.add_argument("--teacher-rows", type=int, default=0, help="0 = the largest that fits")
  parser.add_argument("--train-rows", type=int, default=0,
                      help="packed rows per micro-batch (0 = one per batch shard)")
  parser.add_argument("--teacher-fp8", action=argparse.BooleanOptionalAction, default=None,
                      help="teacher weights in FP8 (default: when its checkpoint name says FP8)")
  parser.add_argument("--teacher-fraction", type=float, default=None,
                      help="share of the chips for the teacher (default: the config's; 0 = shared)")
  parser.add_argument("--programs", default="train,rollout,teacher")
  parser.add_argument("--no-suggest", action="store_true")
  parser.add_argument("--json", default="", help="also write the result here")
  parser.add_argument("--override", action="append", default=[],
                      help="config override, e.g. --override=--config.rl.pack_row_len=8192")
  args = parser.parse_args(argv)
  reason = libtpu_available()
  if reason:
    print(f"zppo plan: {reason}", file=sys.stderr)
    return 2
  config = config_lib.load_config(args.config, args.override)
  if args.teacher_fraction is not None:
    config.teacher.device_fraction = args.teacher_fraction
  shape = run_shape(config, tensor=args.tensor, teacher_tensor=args.teacher_tensor,
                    remat=args.remat, rollout_rows=args.rollout_rows,
                    teacher_rows=args.teacher_rows, train_rows=args.train_rows,
                    teacher_fp8=args.teacher_fp8)
  topo = parse_topology(args.topology)
  print(f"plan {config.name} on {topo.name} ({topo.chips} chips {topo.desc}, "
        f"{topo.chip.hbm_gib:g} GiB HBM each): student {config.student.checkpoint} remat "
        f"{args.remat}, teacher {config.teacher.checkpoint}{' fp8' if shape.teacher_fp8 else ''}, "
        f"tensor={shape.tensor}, teacher tensor={shape.teacher_tensor}, "
        f"teacher fraction {shape.teacher_fraction}")
  print(HEADER)
  result = plan(shape, topo, tuple(args.programs.split(",")))
  result["suggested"] = None
  if result["fits"]:
    print(f"fits on {topo.name}")
  else:
    print(f"does NOT fit on {topo.name}")
    if not args.no_suggest:
      found = suggest(shape, topo)
      result["suggested"] = found and found["topology"]
      print(f"smallest that fits: {found['topology']}" if found else
            "nothing up to 16x fits: lower --rollout-rows/--train-rows or raise --tensor")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1, default=str)
  return 0 if result["fits"] else 1
