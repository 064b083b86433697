"""The run configuration: every field declared once, with the paper's values as defaults.

Config files under `configs/` start from `base_config()` and change what their setting needs;
`load_config` reads such a file (with its `:arg`) and applies `--config.a.b=v` overrides. Symbols in
the comments are those of the paper (shared/ZPPO_SPEC.md).
"""
from __future__ import annotations

import dataclasses
import pathlib

from absl import flags
import ml_collections
from ml_collections import config_flags

@dataclasses.dataclass(frozen=True)
class MethodFlags:
  """The parts of the step a method switches on.

  Attributes:
    replay: the prompt replay buffer (X_replay, step 10).
    bcq: BCQ prompts (candidate answers from teacher rollouts).
    ncq: NCQ prompts (no candidate).
    hint: the Hint baseline (a teacher-written hint in the prompt).
    prefix: the Prefix baseline (a forced prefix of a correct teacher rollout).
    distill: "" (policy gradient), "off" (JSD on correct teacher rollouts) or "on" (JSD on the
      student's rollouts).
  """
  replay: bool = False
  bcq: bool = False
  ncq: bool = False
  hint: bool = False
  prefix: bool = False
  distill: str = ""

  @property
  def reformulates(self) -> bool:
    """Whether the step builds extra prompts (BCQ / NCQ, hint or prefix)."""
    return self.bcq or self.ncq or self.hint or self.prefix

  def needs_teacher(self, compress: bool) -> bool:
    """Whether the teacher is asked (NCQ alone asks it only to compress candidates)."""
    return self.bcq or self.hint or self.prefix or bool(self.distill) or (self.ncq and compress)


# One loop runs all of them.
METHODS: dict[str, MethodFlags] = {
    "grpo": MethodFlags(),
    "grpo_replay": MethodFlags(replay=True),
    "grpo_both": MethodFlags(bcq=True, ncq=True),
    "grpo_replay_bcq": MethodFlags(replay=True, bcq=True),
    "grpo_replay_ncq": MethodFlags(replay=True, ncq=True),
    "zppo": MethodFlags(replay=True, bcq=True, ncq=True),
    "hint": MethodFlags(replay=True, hint=True),
    "prefix": MethodFlags(replay=True, prefix=True),
    "off_distill": MethodFlags(replay=True, distill="off"),
    "on_distill": MethodFlags(replay=True, distill="on"),
}

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "configs/demo.py"


def base_config() -> ml_collections.ConfigDict:
  """All fields of a run, set to the paper's values (shared/ZPPO_SPEC.md §2-4)."""
  c = ml_collections.ConfigDict()
  c.name = "zppo"
  c.method = "zppo"
  c.seed = 0
  c.total_steps = 200             # one pass over ZPPO-77K: 200 steps x 384 prompts.
  c.checkpoint_every = 10
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.log_every = 1
  c.eval_every = 0                # held-out evaluation every N steps (0 = only before and after).

  c.student = ml_collections.ConfigDict()
  c.student.checkpoint = ""       # HF checkpoint directory of the student.
  c.student.param_dtype = "bfloat16"
  c.student.compute_dtype = "bfloat16"
  c.student.remat = "none"        # rematerialisation per layer cycle in the update: none|dots|full
  c.student.scan_layers = True    # scan the layer cycles in the update (compile time, memory);
                                  # False unrolls them (faster on CPU, bench/RESULTS.md)

  c.teacher = ml_collections.ConfigDict()
  c.teacher.checkpoint = ""       # HF checkpoint directory of the frozen teacher.
  c.teacher.param_dtype = "bfloat16"
  c.teacher.compute_dtype = "bfloat16"
  c.teacher.device_fraction = 0.25  # the paper's 6:2 split; 0 = share the student's devices.
  c.teacher.fp8 = False           # matmul weights in FP8 with block scales (an FP8 checkpoint is
                                  # read as it is; a bf16 one is quantised when loaded)
  c.teacher.enable_thinking = False  # compression and hint calls: the chat template's thinking

  # Device layout: (data, fsdp, tensor) sizes over the student's and the teacher's devices (the
  # same devices when teacher.device_fraction is 0); -1 takes the devices left over.
  # `zppo plan --config C` reads these and prints the overrides of a layout that fits.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.student = (1, -1, 1)
  c.mesh.teacher = (1, -1, 1)

  # The judge of free-form gold answers, the same for every method (GRPO baselines too, §5):
  # an OpenAI-compatible endpoint, or a checkpoint judged in process ("" = teacher.checkpoint).
  c.judge = ml_collections.ConfigDict()
  c.judge.url = ""                # e.g. http://127.0.0.1:8000/v1
  c.judge.model = "judge"         # the model name the endpoint expects
  c.judge.api_key_env = ""        # environment variable holding the endpoint's key, if any
  c.judge.checkpoint = ""

  c.data = ml_collections.ConfigDict()
  # A builder's output directory (`zppo data build-zppo77k` / `build`), or a JSONL or Parquet
  # prompt file (id, question, answer, images), built into the same shards under the workdir.
  c.data.train_path = ""
  c.data.eval_path = ""           # held-out prompt records for before/after accuracy.
  c.data.tokenizer = ""           # HF tokenizer directory (defaults to the student checkpoint).
  c.data.max_prompt_tokens = 4096
  c.data.shuffle = True
  c.data.num_epochs = 0           # 0 = repeat forever.
  c.data.num_workers = 0          # Grain processes decoding and tokenising prompts (0: threads)
  # Images of multimodal records (`images`: paths), for a student with a vision tower.
  c.data.image_min_pixels = 256 * 32 * 32   # the paper's pixel budget after resizing
  c.data.image_max_pixels = 1280 * 32 * 32
  c.data.min_image_side = 32      # records with a smaller image are skipped and counted

  c.rl = ml_collections.ConfigDict()
  c.rl.batch_prompts = 384        # |X_new|
  c.rl.group_size = 8             # G_S
  c.rl.teacher_group_size = 4     # G_T
  c.rl.tau = 0.5                  # hard threshold on plain group accuracy
  c.rl.replay_ratio = 0.25        # rho_replay
  c.rl.aug_ratio = 0.25           # rho_aug
  c.rl.buffer_capacity = 10_000   # |B|max
  c.rl.inner_updates = 4          # I
  c.rl.adv_norm = "without_zero"  # without_zero | with_zero | none
  c.rl.clip_low = 0.2
  c.rl.clip_high = 0.28
  c.rl.dual_clip = 10.0
  c.rl.loss_agg = "token_mean"
  c.rl.kl_coef = 0.0
  c.rl.kl_estimator = "k3"
  c.rl.policy_loss = "ppo"         # by name in rl.losses.POLICY_LOSSES
  c.rl.cache_teacher_rollouts = False
  c.rl.compress = True
  # Token budgets of the candidates and the teacher's text jobs (shared/ZPPO_SPEC.md §4).
  c.rl.compress_max_tokens = 512       # §4: a compression call's max new tokens
  c.rl.raw_candidate_max_tokens = 512  # §4: compression off, a raw candidate is cut to 512 tokens
  c.rl.hint_max_tokens = 512           # a Hint baseline call's max new tokens (512, issue 17)
  c.rl.prefix_fraction = 0.4
  c.rl.jsd_beta = 0.5
  c.rl.pack_row_len = 16_384      # tokens per packed training row (prompt + response fit one row)
  c.rl.micro_batch_rows = 0       # rows per gradient-accumulation micro-batch (0 = whole batch)
  c.rl.min_rows_per_update = 1    # packed rows per update are a power of two, at least this
  c.compilation_cache_dir = "~/.cache/zppo-jax/xla"  # persistent XLA cache ("" = off)
  c.rl.distill_with_buffer = True  # Off/On-Distill with the buffer (the paper's dagger variants)

  c.sampling = ml_collections.ConfigDict()
  c.sampling.temperature = 1.0
  c.sampling.top_p = 1.0
  c.sampling.top_k = 0
  c.sampling.max_new_tokens = 12_288
  c.sampling.teacher_max_new_tokens = 12_288
  # The model's context (Qwen3.5: 262,144): prompts (BCQ / NCQ / hint ones may be long) are
  # bucketed by their length up to it; one whose prompt + response budget exceeds it is skipped
  # and counted (reform/skipped_too_long).
  c.sampling.max_context = 262_144
  c.sampling.rows_per_call = 512  # rollouts (prompts x G) per sampler call; `zppo plan` sizes it

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-6
  c.optim.warmup_steps = 0        # linear warm-up over this many optimizer updates (paper: none)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1
  c.optim.clip_norm = 1.0
  c.optim.state_dtype = "bfloat16"
  # bf16 weights: fp32 master copies take the updates ("none": plain bf16 updates, which round
  # away at lr 1e-6); or kahan=True for compensated bf16 updates without masters (§3).
  c.optim.master_dtype = "float32"
  c.optim.kahan = False

  return c


def method_flags(config: ml_collections.ConfigDict) -> MethodFlags:
  """What `config.method` switches on; raises naming the method when it is unknown."""
  if config.method not in METHODS:
    raise ValueError(f"unknown method {config.method!r}; choose one of {sorted(METHODS)}")
  flags_ = METHODS[config.method]
  if flags_.distill:
    flags_ = dataclasses.replace(flags_, replay=bool(config.rl.distill_with_buffer))
  return flags_


def resolve_config_path(path: str) -> str:
  """A config path as given, or relative to the repository when it does not exist here."""
  spec, _, arg = path.partition(":")
  if not pathlib.Path(spec).exists() and (REPO_ROOT / spec).exists():
    spec = str(REPO_ROOT / spec)
  return spec + (":" + arg if arg else "")


def parse_args(argv: list[str], extra_flags: dict[str, str] | None = None):
  """Parses `[--config=FILE[:ARG]] [--workdir=DIR] [--config.a.b=v ...]` (also `--config FILE`).

  Args:
    argv: command-line arguments without the program name.
    extra_flags: further string flags of the sub-command, name -> default.

  Returns:
    (config, flag values); the config file defaults to `configs/demo.py`.
  """
  args, i = [], 0
  while i < len(argv):  # Accept `--flag value` as well as `--flag=value`.
    if argv[i].startswith("--") and "=" not in argv[i] and i + 1 < len(argv) \
        and not argv[i + 1].startswith("--"):
      args.append(argv[i] + "=" + argv[i + 1])
      i += 2
    else:
      args.append(argv[i])
      i += 1
  if not any(a.startswith("--config=") for a in args):
    args.insert(0, "--config=" + DEFAULT_CONFIG)
  args = ["--config=" + resolve_config_path(a[len("--config="):]) if a.startswith("--config=")
          else a for a in args]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "run configuration file", flag_values=fv,
                                 sys_argv=["zppo"] + args)
  flags.DEFINE_string("workdir", "", "run directory (default runs/<config name>)", flag_values=fv)
  for name, value in (extra_flags or {}).items():
    flags.DEFINE_string(name, value, name, flag_values=fv)
  fv(["zppo"] + args)
  return fv.config, fv


def load_config(path: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
  """Loads a config file with `--config.x=v` style overrides (used by tests and sweeps)."""
  config, _ = parse_args(["--config=" + path, *overrides])
  return config


PAPER_TEACHER = "Qwen/Qwen3.5-27B"


def paper_config(size: str) -> ml_collections.ConfigDict:
  """The paper's run (Table 8): ZPPO on ZPPO-77K, student `Qwen/Qwen3.5-{size}`, 27B teacher."""
  c = base_config()
  c.name = f"qwen3_5_{size.lower().replace('.', '_')}_zppo"
  c.student.checkpoint = f"Qwen/Qwen3.5-{size}"
  c.teacher.checkpoint = PAPER_TEACHER
  c.data.train_path = "data/zppo77k"   # the output of `zppo data build-zppo77k --out data/zppo77k`
  c.student.remat = "full"        # the paper's sequences (16K-token rows) need it
  c.data.num_workers = 8
  return c


def paper_hyper(h):
  """The paper's ablations: every method, inner updates I, and the advantage normalisation."""
  return h.chainit([
      h.product([h.sweep("config.method", list(METHODS))]),
      h.product([h.sweep("config.rl.inner_updates", [1, 4, 8, 16])]),
      h.product([h.sweep("config.rl.adv_norm", ["without_zero", "with_zero", "none"])]),
  ])
