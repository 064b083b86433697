"""`zppo train`: builds a run from its config (models, tokenizer, data, grader) and trains it.

  zppo train [--config=configs/demo.py] [--workdir=DIR] [--config.KEY=VALUE ...]

The default config is the CPU demo; the default workdir is `runs/<config name>`. Re-running the
same command on an existing workdir resumes from its latest checkpoint.

Several processes (one per host) run the same command; `zppo_jax.distributed.initialize` starts
JAX's distributed runtime from `--coordinator`, `--num_processes`, `--process_id` or the
environment (`ZPPO_DISTRIBUTED=1`, `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`). The workdir must be shared by all of them; only process 0 writes logs.
"""
from __future__ import annotations

import itertools
import os
import sys

from etils import epath

from zppo_jax import distributed, parallel
from zppo_jax.train.config_check import parse_checked
from zppo_jax.train.model_io import load_model, load_tokenizer
from zppo_jax.zppo import replay_buffer

DISTRIBUTED_FLAGS = {"coordinator": "", "num_processes": "", "process_id": ""}


def enable_compilation_cache(path: str) -> None:
  """Keeps compiled XLA programs on disk, so a second run skips most compilation."""
  if path:
    import jax
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def make_grader(config, teacher=None, tokenizer=None, judge=None):
  """`grader(responses, records) -> rewards`: the grading pool, with `judge` (default: the
  teacher) for free-form golds (`train.judges.make_judge` gives every method the same one).

  With several processes each grades its own contiguous block of the rollouts and the rewards are
  gathered; the judge (a collective teacher rollout) then runs on every process over the whole list.
  """
  from zppo_jax.rewards import GradingPool, RewardItem, grade_batch
  from zppo_jax.train.teacher import TeacherJudge
  pool = GradingPool(num_workers=max(1, min(4, (os.cpu_count() or 2) // 2)))
  if judge is None and teacher is not None:
    judge = TeacherJudge(teacher, tokenizer)

  def grader(responses, records):
    items = [RewardItem(resp, str(rec["answer"]), rec["question"], rec.get("choices"))
             for resp, rec in zip(responses, records)]
    if not items:
      return []
    scores = distributed.map_blocks(lambda part: grade_batch(part, pool), items)
    return grade_batch(items, _Graded(scores), judge) if judge is not None else scores

  grader.close = pool.close
  return grader


class _Graded:
  """A grading pool stand-in that returns grades computed already (the judge's input)."""

  def __init__(self, scores):
    self.scores = scores

  def grade_many(self, items):
    assert len(items) == len(self.scores)
    return list(self.scores)


def build_trainer(config, workdir: epath.PathLike, stream=None):
  """Everything a run needs, from the config; returns (trainer, closer)."""
  from zppo_jax.data import train_data
  from zppo_jax.sampling import SamplingParams
  from zppo_jax.train import augment, judges
  from zppo_jax.train.config import method_flags
  from zppo_jax.train.student import Student
  from zppo_jax.train.teacher import Teacher
  from zppo_jax.train.trainer import Trainer

  stream = stream or sys.stderr
  if not config.student.checkpoint:
    raise ValueError("config.student.checkpoint is empty: set it to an HF checkpoint directory")
  if not config.data.train_path:
    raise ValueError("config.data.train_path is empty: set it to a builder output directory "
                     "(zppo data build-zppo77k / build) or a JSONL or Parquet file")
  tokenizer = load_tokenizer(config.data.tokenizer or config.student.checkpoint,
                             "--config.data.tokenizer" if config.data.tokenizer
                             else "--config.student.checkpoint")
  stop_ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")
                   if t in tokenizer.get_vocab())
  student_devices, teacher_devices = distributed.split_devices(config.teacher.device_fraction)
  student_mesh = parallel.layout_mesh(config.mesh.student, student_devices, "mesh.student")
  model = load_model(config.student.checkpoint, config.student.compute_dtype,
                     config.student.param_dtype, mesh=student_mesh, remat=config.student.remat,
                     scan_layers=config.student.scan_layers, what="--config.student.checkpoint")
  student = Student(model, config, stop_ids, mesh=student_mesh)
  print(f"train: student on {len(student_devices)} devices, mesh {_describe(student_mesh)}",
        file=stream)
  flags = method_flags(config)
  sampling = SamplingParams(temperature=config.sampling.temperature,
                            top_p=config.sampling.top_p, top_k=config.sampling.top_k,
                            stop_token_ids=stop_ids)

  def load_teacher(checkpoint: str) -> Teacher:
    what = ("--config.teacher.checkpoint" if checkpoint == config.teacher.checkpoint
            else "--config.judge.checkpoint")
    teacher_mesh = parallel.layout_mesh(config.mesh.teacher, teacher_devices, "mesh.teacher")
    teacher_model = load_model(checkpoint, config.teacher.compute_dtype,
                               config.teacher.param_dtype, mesh=teacher_mesh,
                               fp8=config.teacher.fp8, what=what)
    print(f"train: teacher on {len(teacher_devices)} devices, mesh {_describe(teacher_mesh)}"
          f"{', fp8' if config.teacher.fp8 else ''}", file=stream)
    return Teacher(teacher_model, config.sampling.max_context, sampling, mesh=teacher_mesh,
                   rows_per_call=config.sampling.rows_per_call)

  teacher = None
  if config.teacher.checkpoint and (flags.reformulates or flags.distill):
    teacher = load_teacher(config.teacher.checkpoint)
  iterator = train_data.open_train_data(config, tokenizer, augment.user_text,
                                        vision=student.vision, workdir=workdir, stream=stream)
  eval_records = train_data.open_eval_records(config, tokenizer, augment.user_text,
                                              vision=student.vision, workdir=workdir,
                                              stream=stream)
  # One judge for every method (GRPO too); a run with free-form golds and none stops here.
  judge = judges.make_judge(config, teacher, load_teacher, tokenizer)
  judges.require(judge, itertools.chain(judges.shard_records(iterator.pipeline.source),
                                        eval_records))
  grader = make_grader(config, teacher, tokenizer, judge=judge)
  trainer = Trainer(config, workdir, student=student, teacher=teacher, tokenizer=tokenizer,
                    prompts=iterator, grader=grader, stop_ids=stop_ids,
                    eval_records=eval_records, stream=stream)
  trainer.rejects = iterator.rejects
  return trainer, grader.close


def _describe(mesh) -> str:
  return "none (one device)" if mesh is None else " x ".join(
      f"{name}={size}" for name, size in mesh.shape.items())


def print_summary(summary: dict, workdir: epath.PathLike, stream) -> None:
  """The end-of-run report: buffer dynamics, reformulations, held-out accuracy."""
  from zppo_jax.train.metrics import read_metrics
  rows = read_metrics(workdir)
  total = lambda key: int(sum(float(r.get(key, 0) or 0) for r in rows))  # noqa: E731
  lines = [f"summary of {workdir} ({summary.get('method')}, {summary.get('step')} steps):",
           f"  replay buffer: admitted {total('buffer/admitted')}, graduated "
           f"{total('buffer/graduated')}, evicted {total('buffer/evicted')}, final size "
           f"{rows[-1].get('buffer/size', 0) if rows else 0}"]
  for kind in ("bcq", "ncq", "hint", "prefix"):
    built = total(f"groups/{kind}")
    if built:
      signal = sum(round((1 - r.get(f"zero_adv/{kind}", 1.0)) * r.get(f"groups/{kind}", 0))
                   for r in rows)
      lines.append(f"  {kind.upper()}: built {built}, solved (>= 1 correct rollout) "
                   f"{total(f'solved/{kind}')}, with a learning signal (non-zero advantages) "
                   f"{signal}")
  hard_fail = sum(r.get("groups/plain", 0) - r.get("solved/plain", 0) for r in rows)
  lines.append(f"  plain groups where every rollout failed (no signal for GRPO): {hard_fail}")
  before, after, subsets = _heldout(summary)
  for key in ["eval/accuracy", *subsets]:
    if key in before and key in after:
      name = key.rsplit("/", 1)[-1] if key in subsets else "all"
      lines.append(f"  held-out accuracy ({name}): {before[key]:.3f} before -> "
                   f"{after[key]:.3f} after")
  print("\n".join(lines), file=stream)
  effect = effect_line(summary, rows[-1] if rows else {})
  if effect:
    print(effect, file=stream)


def _heldout(summary: dict) -> tuple[dict, dict, list[str]]:
  """The held-out metrics before and after, and the per-subset accuracy keys both have."""
  before, after = summary.get("eval_before", {}), summary.get("eval_after", {})
  return before, after, [k for k in before if k.startswith("eval/accuracy/") and k in after]


def effect_line(summary: dict, last: dict) -> str:
  """The run's effect in one line: the held-out accuracy of the subset that started lowest
  (the demo's hard level), and how many buffer entries admitted at 0% accuracy graduated."""
  before, after, subsets = _heldout(summary)
  parts = []
  key = min(subsets, key=lambda k: before[k]) if subsets else "eval/accuracy"
  if key in before and key in after:
    name = key.rsplit("/", 1)[-1] + " " if subsets else ""
    parts.append(f"{name}held-out {before[key]:.2f} -> {after[key]:.2f}")
  zero = replay_buffer.accuracy_bin(0.0)
  admitted = int(last.get(f"buffer/admitted_bin/{zero}", 0) or 0)
  if admitted:
    graduated = int(last.get(f"buffer/graduated_bin/{zero}", 0) or 0)
    parts.append(f"{graduated} of {admitted} questions that entered the buffer at 0% accuracy "
                 f"graduated")
  return f"effect ({summary.get('method')}): " + "; ".join(parts) if parts else ""


def main(argv: list[str]) -> int:
  """`zppo train`."""
  config, flags = parse_checked(argv, DISTRIBUTED_FLAGS)  # Before any work: one-line errors.
  distributed.initialize(flags.coordinator or None,
                         int(flags.num_processes) if flags.num_processes else None,
                         int(flags.process_id) if flags.process_id else None)
  enable_compilation_cache(config.compilation_cache_dir)
  # An epath, never resolved: a `gs://` workdir stays in the bucket (`train.workdir`).
  workdir = epath.Path(flags.workdir or os.path.join("runs", config.name))
  workdir.mkdir(parents=True, exist_ok=True)
  stream = sys.stderr
  if "demo" in config:   # The demo config (configs/demo.py) builds its models and data.
    from zppo_jax.train import demo
    if distributed.is_main():   # Builds the cache once; the other processes then find it.
      demo.prepare(config, stream=stream)
    distributed.barrier("demo")
    if not distributed.is_main():
      demo.prepare(config, stream=stream)
  trainer, close = build_trainer(config, workdir, stream)
  try:
    summary = trainer.train()
  finally:
    close()
  if summary.get("preempted") or not distributed.is_main():
    return 0
  print_summary(summary, workdir, stream)
  from zppo_jax.train.plots import write_plots
  for path in write_plots(workdir):
    print(f"plot: {path}", file=stream)
  return 0
