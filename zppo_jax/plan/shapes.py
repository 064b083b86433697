"""What a plan compiles (`RunShape`, from a run config) and the model's own cost formulas.

XLA's ``cost_analysis()`` counts the body of a scan or while-loop once, so it cannot count a scanned
model's FLOPs; `forward_flops` does (2 FLOPs per matmul weight per token, plus attention over the
context and the delta-rule state update). `cache_bytes_per_row` and `weight_bytes` give what a
decode step streams from HBM, and `auto_rows` sizes a rollout batch from them before the compiler
checks it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class RunShape:
  """What the plan compiles, from a run config plus the plan's choices.

  Attributes:
    student, teacher: `ModelConfig` presets with the run's dtypes and remat.
    prompt_len: prompt bucket L (data.max_prompt_tokens).
    max_new: max response tokens (sampling.max_new_tokens).
    row_len: packed training row (rl.pack_row_len).
    group: G_S; teacher_group: G_T.
    prompts: prompts per step (|X_new| + |X_replay|).
    rollout_rows / teacher_rows: rows of one compiled decode program (all chips together; 0 = the
      largest that `auto_rows` expects to fit).
    train_rows: rows of one update's micro-batch (all chips together; 0 = one per batch shard), and
      micro_batches of them per update.
    tensor: tensor-parallel size of the student's mesh; teacher_tensor: of the teacher's.
    teacher_fraction: share of the chips that run the teacher (0 = shares the student's).
    teacher_fp8: teacher weights in FP8 with block scales.
    opt_state_dtype: Adam moments' dtype.
    learner_weights: the learner's parameter bytes per byte of student weights: 2 with fp32
      masters of bf16 weights or with Kahan buffers (`optim.master_dtype`, `optim.kahan`), else 1.
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
  learner_weights: float = 1.0


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


def run_shape(config, *, tensor: int | None = None, teacher_tensor: int | None = None,
              remat: str | None = None, rollout_rows: int = 0, teacher_rows: int = 0,
              train_rows: int = 0, micro_batches: int = 2, teacher_fp8: bool | None = None,
              student_preset=None, teacher_preset=None) -> RunShape:
  """The shapes of one ZPPO step of `config` (an ml_collections run config).

  The layout is the one `zppo train` builds from the same config: `mesh.student` and
  `mesh.teacher` (their tensor sizes), `student.remat` and `teacher.fp8`; an argument given here
  replaces the config's value.

  Args:
    config: the run config (`zppo_jax.train.config.load_config`).
    tensor, teacher_tensor: tensor-parallel sizes (default: `config.mesh.*[2]`).
    remat: the student's rematerialisation policy for the update (default `student.remat`).
    rollout_rows, teacher_rows, train_rows, micro_batches: see `RunShape`.
    teacher_fp8: default: `teacher.fp8`, or when the teacher's checkpoint name says FP8.
    student_preset, teacher_preset: `ModelConfig` factories (default: from the checkpoint names).

  Returns:
    The `RunShape`.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  dt = lambda s: jnp.dtype(s)
  tensor = int(config.mesh.student[2]) if tensor is None else tensor
  teacher_tensor = int(config.mesh.teacher[2]) if teacher_tensor is None else teacher_tensor
  remat = config.student.remat if remat is None else remat
  student_preset = student_preset or _preset(config.student.checkpoint)
  teacher_preset = teacher_preset or _preset(config.teacher.checkpoint)
  student = student_preset(dtype=dt(config.student.compute_dtype),
                           param_dtype=dt(config.student.param_dtype), remat=remat)
  teacher = teacher_preset(dtype=dt(config.teacher.compute_dtype),
                           param_dtype=dt(config.teacher.param_dtype))
  if teacher_fp8 is None:
    teacher_fp8 = bool(config.teacher.fp8) or "fp8" in config.teacher.checkpoint.lower()
  prompts = int(config.rl.batch_prompts * (1 + config.rl.replay_ratio))
  return RunShape(
      student=student, teacher=teacher, prompt_len=int(config.data.max_prompt_tokens),
      max_new=int(config.sampling.max_new_tokens), row_len=int(config.rl.pack_row_len),
      group=int(config.rl.group_size), teacher_group=int(config.rl.teacher_group_size),
      prompts=prompts, rollout_rows=rollout_rows, teacher_rows=teacher_rows,
      train_rows=train_rows, micro_batches=micro_batches, tensor=tensor,
      teacher_tensor=teacher_tensor,
      teacher_fraction=float(config.teacher.device_fraction), teacher_fp8=bool(teacher_fp8),
      opt_state_dtype=str(config.optim.state_dtype),
      learner_weights=_learner_weights(config, student.param_dtype))


def _learner_weights(config, param_dtype) -> float:
  """What the learner keeps per byte of weights (`RunShape.learner_weights`)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if jnp.dtype(param_dtype).itemsize >= 4:
    return 1.0
  if config.optim.kahan:
    return 2.0
  return 4 / jnp.dtype(param_dtype).itemsize if config.optim.master_dtype == "float32" else 1.0


def _layer_counts(cfg) -> tuple[int, int]:
  n_attn = sum(t == "full_attention" for t in cfg.layer_types)
  return n_attn, cfg.num_hidden_layers - n_attn


def matmul_params(cfg) -> int:
  """Weights touched by a matmul per token (everything but the embedding lookup and norms)."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  attn = d * (cfg.num_attention_heads * 2 * cfg.head_dim) + 2 * d * cfg.num_key_value_heads * \
      cfg.head_dim + cfg.num_attention_heads * cfg.head_dim * d
  gdn = d * (cfg.gdn_conv_dim + cfg.linear_num_value_heads * cfg.linear_value_head_dim
             + 2 * cfg.linear_num_value_heads) + cfg.linear_num_value_heads * \
      cfg.linear_value_head_dim * d
  mlp = 3 * d * f
  n_attn, n_gdn = _layer_counts(cfg)
  return n_attn * attn + n_gdn * gdn + cfg.num_hidden_layers * mlp + d * cfg.vocab_size


def forward_flops(cfg, tokens: float, context: float) -> float:
  """Forward FLOPs of `tokens` tokens attending to `context` keys on average."""
  n_attn, n_gdn = _layer_counts(cfg)
  attn = 4 * context * cfg.num_attention_heads * cfg.head_dim * n_attn
  gdn = 6 * cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * n_gdn
  return tokens * (2 * matmul_params(cfg) + attn + gdn)


def cache_bytes_per_row(cfg, slots: int) -> int:
  """Decode cache of one row: attention k/v over `slots` plus the GDN conv and fp32 state."""
  n_attn, n_gdn = _layer_counts(cfg)
  item = np.dtype(cfg.dtype).itemsize
  kv = 2 * slots * cfg.num_key_value_heads * cfg.head_dim * item * n_attn
  gdn = (cfg.gdn_conv_dim * (cfg.linear_conv_kernel_dim - 1) * item
         + 4 * cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim)
  return kv + gdn * n_gdn


def weight_bytes(cfg, fp8: bool = False) -> float:
  """Parameter bytes (FP8: quantised matmul weights 1 byte, embedding and LM head kept)."""
  item = np.dtype(cfg.param_dtype).itemsize
  embed = cfg.vocab_size * cfg.hidden_size
  body = matmul_params(cfg) - embed
  head = embed if cfg.tie_word_embeddings else 2 * embed
  return body * (1 if fp8 else item) + head * item


def _largest_pow2(n: int) -> int:
  return 1 << max(0, int(n).bit_length() - 1)


def auto_rows(cfg, shape: RunShape, chips: int, hbm: float, want: int, group: int,
              fp8: bool = False, tensor: int = 1) -> int:
  """Largest power-of-two rollout batch (a multiple of `group`, at most `want`) that fits by the
  formula in 75% of the chips' HBM: weights, each row's decode cache and buffers, and the prefill's
  attention scores ([N, L, S] per prompt, which the sampler's prefill materialises in one piece;
  the heads are split over `tensor` but so are the chips). The compile then checks."""
  per_chip_weights = weight_bytes(cfg, fp8) / tensor
  slots = shape.prompt_len + shape.max_new
  per_row = cache_bytes_per_row(cfg, slots) + shape.max_new * 12 + cfg.vocab_size
  # fp32 logits, fp32 probabilities and a bf16 copy: ~10 bytes a score (measured on v5p: 15).
  scores = cfg.num_attention_heads * shape.prompt_len * slots * 10
  per_row += scores / group
  room = 0.75 * hbm * chips - per_chip_weights * chips
  rows = _largest_pow2(max(group, min(want, int(room // per_row)))) if room > 0 else group
  return max(group, rows - rows % group)
