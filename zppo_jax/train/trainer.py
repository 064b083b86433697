"""The step loop of every method of the paper (shared/ZPPO_SPEC.md §2, Algorithm 1).

One step: fresh prompts ∪ replayed prompts → G_S student rollouts each → grading → hard set →
teacher rollouts on every hard question → pre-cap → BCQ / NCQ (or hint, or prefix) prompts →
G_S student rollouts on those → advantages per group → I disjoint mini-batch updates → buffer
refresh. `config.method` switches the parts on (`zppo_jax.train.config.METHODS`); the distillation
baselines replace the policy-gradient update with one JSD update on teacher or student tokens.

All randomness of a step is derived from (seed, step), so a run resumed from a checkpoint takes
exactly the steps the uninterrupted run would have taken.
"""
from __future__ import annotations

import enum
import json
import random
import sys
import time
from typing import Protocol, Sequence

from etils import epath
import numpy as np

from zppo_jax import distributed
from zppo_jax.data.prompts import encode_prompt, join_prompt
from zppo_jax.train import augment
from zppo_jax.train.checkpointing import PreemptionFlag, RunCheckpointer, host_fields
from zppo_jax.train.config import method_flags
from zppo_jax.train.groups import (Completion, Group, RolloutSpec, TextPolicy, TrainSequence,
                                   flatten, kind_metrics)
from zppo_jax.train.metrics import MetricsWriter
from zppo_jax.zppo.reformulate import Rollout
from zppo_jax.zppo.teacher_cache import TeacherRolloutCache


class Stream(enum.IntEnum):
  """The random streams of a step: each is seeded by (seed, step, stream) alone, so a resumed
  run draws exactly what the uninterrupted run drew."""
  STUDENT_ROLLOUTS = 2     # sampling the plain prompts
  TEACHER_ROLLOUTS = 3     # sampling the teacher on the hard questions
  REFORMULATION = 4        # the random picks of BCQ / NCQ, hint and prefix building
  EXTRA_ROLLOUTS = 5       # sampling the BCQ / NCQ / hint / prefix prompts
  MINIBATCHES = 6          # the shuffle into I disjoint mini-batches
  TEACHER_TEXT = 7         # the teacher's text jobs (compression, hints)


class StudentPolicy(TextPolicy, Protocol):
  """The student: samples, updates, and has a checkpointable state (`student.Student`)."""

  def train_step(self, parts: Sequence[Sequence[TrainSequence]]) -> list[dict[str, float]]:
    """One optimizer update on the policy loss per mini-batch (skipped when not finite)."""

  def distill_step(self, sequences: Sequence[TrainSequence], teacher) -> dict[str, float]:
    """One optimizer update on the per-token JSD to the teacher over the response tokens."""

  def state(self):
    """The pytree to checkpoint (parameters and optimizer state)."""

  def load_state(self, state) -> None:
    """Continues from a restored `state()`."""


# What `host_state` writes; a checkpoint whose host metadata lacks one is damaged.
HOST_FIELDS = host_fields(step=int, buffer=(dict, list), data=dict, totals=dict,
                          teacher_cache=list)


class Trainer:
  """Runs the steps of one method and keeps the run's state.

  Args:
    config: the run config (`zppo_jax.train.config.base_config()` fields).
    workdir: run directory (metrics, checkpoints, rejects, plots), local or `gs://`.
    student: the student (`student.Student`).
    teacher: the frozen teacher's sampler, or None for methods that never ask it.
    tokenizer: the HF tokenizer shared by student and teacher.
    prompts: the step batches of prompt records (`data.train_data.TrainData`).
    grader: rewards a list of (response, record) pairs: `grader(responses, records) -> list[float]`.
    stop_ids: token ids that end a response (dropped before decoding).
    eval_records: held-out questions for the before/after accuracy (may be empty).
    stream: where progress and messages go (default stderr).
  """

  def __init__(self, config, workdir, *, student: StudentPolicy, teacher: TextPolicy | None,
               tokenizer, prompts, grader, stop_ids: Sequence[int],
               eval_records: Sequence[dict] = (), stream=None):
    self.config = config
    self.workdir = epath.Path(workdir)
    self.flags = method_flags(config)
    if self._needs_teacher() and teacher is None:
      raise ValueError(f"method {config.method!r} needs a teacher (config.teacher.checkpoint)")
    self.student, self.teacher, self.tokenizer = student, teacher, tokenizer
    self.prompts, self.grader = prompts, grader
    self.eval_records = list(eval_records)
    self.stream = stream or sys.stderr
    self.buffer = augment.make_buffer(config)
    self.teacher_cache = TeacherRolloutCache(enabled=config.rl.cache_teacher_rollouts)
    # A multimodal student's image preprocessing; learners without a vision tower have none.
    self.vision = getattr(student, "vision", None)
    self.stop_ids = set(stop_ids)
    self.totals: dict[str, float] = {}
    self.step = 0

  def _needs_teacher(self) -> bool:
    return self.flags.needs_teacher(self.config.rl.compress)

  # --- one step ---

  def _rng(self, step: int, stream: Stream) -> np.random.Generator:
    return np.random.default_rng([self.config.seed, step, int(stream)])

  def _seed(self, step: int, stream: Stream) -> int:
    return int(self._rng(step, stream).integers(2**31 - 1))

  def run_step(self, step: int) -> dict[str, float]:
    """Runs step `step` (1-based) and returns its metrics."""
    cfg, rl = self.config, self.config.rl
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    new = next(self.prompts)
    replay = []
    if self.flags.replay:
      # Drawn from every process's partition with per-question keys: the same for any process
      # count (`distributed.draw_replay`).
      replay = distributed.draw_replay(self.buffer.records(),
                                       int(round(rl.replay_ratio * rl.batch_prompts)),
                                       (cfg.seed, step))
    # A fresh record brings its prompt from the data pipeline; a replayed one is encoded here.
    plain_prompts = [augment.record_prompt(self.tokenizer, r, self.vision)
                     for r in [*new, *replay]]
    records = [augment.strip_record(r) for r in new] + [dict(r) for r in replay]
    plain = self._rollouts([RolloutSpec(r, "plain", p) for r, p in zip(records, plain_prompts)],
                           self._seed(step, Stream.STUDENT_ROLLOUTS), times)
    metrics: dict[str, float] = {"batch/new": len(new), "batch/replay": len(replay)}
    accuracy = {g.qid: g.accuracy for g in plain}
    hard = [g for g in plain if g.accuracy < rl.tau]
    metrics["batch/hard"] = len(hard)

    extra_groups: list[Group] = []
    teacher_groups: list[Group] = []
    reforms = []
    if self.flags.reformulates:
      if self.flags.bcq or self.flags.hint or self.flags.prefix:
        teacher_groups = self._teacher_rollouts(hard, step, times)
      t = time.perf_counter()
      specs, reform_metrics, reforms = augment.build_specs(
          plain, teacher_groups, len(new), cfg, self.flags,
          random.Random(self._seed(step, Stream.REFORMULATION)), self.tokenizer,
          self._teacher_text, vision=self.vision)
      times["time_teacher"] = times.get("time_teacher", 0.0) + time.perf_counter() - t
      metrics.update(reform_metrics)
      specs, metrics["reform/skipped_too_long"] = self._fitting(specs)
      extra_groups = self._rollouts(specs, self._seed(step, Stream.EXTRA_ROLLOUTS), times)
    groups = plain + extra_groups

    rewards, group_ids = flatten(groups)
    advantages = augment.advantages(rewards, group_ids, rl.adv_norm)
    metrics.update(kind_metrics(groups, advantages))
    metrics.update(augment.diagnostics(plain, teacher_groups, extra_groups, reforms, len(new),
                                       rl.tau))

    t = time.perf_counter()
    if self.flags.distill:
      metrics.update(self._distill(plain, step, times))
    else:
      metrics.update(self._policy_updates(groups, advantages,
                                          self._rng(step, Stream.MINIBATCHES)))
    times["time_update"] = time.perf_counter() - t

    metrics.update(self._refresh_buffer(accuracy, records))
    times["time_step"] = time.perf_counter() - t0
    tokens = sum(len(c.tokens) for g in groups for c in g.completions)
    times["time_tokens_per_s"] = tokens / max(times["time_step"], 1e-9)
    metrics.update(distributed.reduce_metrics(times))
    return metrics

  def _refresh_buffer(self, accuracy: dict[str, float], records) -> dict[str, float]:
    """Step 10 on this process's buffer partition; counts summed over the processes."""
    local = augment.refresh_buffer(self.buffer, accuracy, records, {})
    out = distributed.sum_counts({k: v for k, v in local.items() if not k.endswith("_total")})
    for key in ("admitted", "graduated", "evicted"):
      self.totals[key] = self.totals.get(key, 0) + out.get(f"buffer/{key}", 0)
      out[f"buffer/{key}_total"] = self.totals[key]
    return out

  def _plain_specs(self, records: Sequence[dict]) -> list[RolloutSpec]:
    return [RolloutSpec(r, "plain", augment.record_prompt(self.tokenizer, r, self.vision))
            for r in records]

  def _fitting(self, specs: Sequence[RolloutSpec]) -> tuple[list[RolloutSpec], int]:
    """The specs whose prompt, forced prefix and response budget fit the context
    (`sampling.max_context`), and how many were skipped (the prefix must leave room for a
    continuation within the budget)."""
    budget, context = self.config.sampling.max_new_tokens, self.config.sampling.max_context
    fits = [s for s in specs if len(s.prefix) < budget
            and len(s.prompt_ids) + len(s.prefix) + budget <= context]
    return fits, len(specs) - len(fits)

  def _rollouts(self, specs: Sequence[RolloutSpec], seed: int, times: dict) -> list[Group]:
    """Samples G_S student rollouts for each spec (after its forced prefix) and grades them.

    The response budget `sampling.max_new_tokens` holds the forced prefix too (Prefix baseline):
    a continuation has at most budget - len(prefix) tokens.
    """
    if not specs:
      return []
    t = time.perf_counter()
    budget = self.config.sampling.max_new_tokens
    prompts = [join_prompt(s.prompt_ids, s.prefix) for s in specs]
    outs = self.student.generate(prompts, num_samples=self.config.rl.group_size,
                                 max_new_tokens=budget - min(len(s.prefix) for s in specs),
                                 seed=seed)
    times["time_rollout"] = times.get("time_rollout", 0.0) + time.perf_counter() - t
    groups = []
    for s, completions in zip(specs, outs):
      prefix, keep = list(s.prefix), budget - len(s.prefix)
      full = [Completion(prefix + c.tokens[:keep], [0.0] * len(prefix) + list(c.logprobs[:keep]))
              for c in completions]
      groups.append(Group(s.record["id"], s.kind, s.record, join_prompt(s.prompt_ids, []), full,
                          loss_start=len(prefix), extra=s.extra))
    self._grade(groups, times)
    return groups

  def _grade(self, groups: Sequence[Group], times: dict) -> None:
    t = time.perf_counter()
    texts = [[self.decode(c.tokens) for c in g.completions] for g in groups]
    flat = self.grader([x for ts in texts for x in ts],
                       [g.record for g, ts in zip(groups, texts) for _ in ts])
    k = 0
    for g, ts in zip(groups, texts):
      g.texts = ts
      g.rewards = [float(r) for r in flat[k:k + len(ts)]]
      k += len(ts)
    times["time_grading"] = times.get("time_grading", 0.0) + time.perf_counter() - t

  def decode(self, tokens: Sequence[int]) -> str:
    """Response text with special tokens such as `<think>` kept and the stop token dropped."""
    tokens = list(tokens)
    while tokens and tokens[-1] in self.stop_ids:
      tokens.pop()
    return self.tokenizer.decode(tokens, skip_special_tokens=False)

  def _teacher_text(self, prompts: list[str], max_new_tokens: int) -> list[str]:
    """One teacher completion per user prompt (compression, hints), decoded, `<think>` kept.

    The chat template sets the teacher's thinking mode (`teacher.enable_thinking`, off: a
    thinking teacher would spend the 512-token budget inside `<think>` and write no summary)."""
    ids = [encode_prompt(self.tokenizer, p, enable_thinking=self.config.teacher.enable_thinking)
           for p in prompts]
    seed = self._seed(self.step + 1, Stream.TEACHER_TEXT)
    outs = self.teacher.generate(ids, num_samples=1, max_new_tokens=max_new_tokens, seed=seed)
    return [self.decode(o[0].tokens) for o in outs]

  def _teacher_rollouts(self, kept: Sequence[Group], step: int, times: dict) -> list[Group]:
    """G_T fresh teacher rollouts per kept hard question, graded against the same gold."""
    if not kept:
      return []
    t = time.perf_counter()
    outs = self.teacher.generate([g.prompt_ids for g in kept],
                                 num_samples=self.config.rl.teacher_group_size,
                                 max_new_tokens=self.config.sampling.teacher_max_new_tokens,
                                 seed=self._seed(step, Stream.TEACHER_ROLLOUTS))
    groups = [Group(g.qid, "plain", g.record, g.prompt_ids, list(out))
              for g, out in zip(kept, outs)]
    times["time_teacher"] = times.get("time_teacher", 0.0) + time.perf_counter() - t
    self._grade(groups, times)
    if self.teacher_cache.enabled:
      for g in groups:
        self._add_cached(g)
    return groups

  def _add_cached(self, group: Group) -> None:
    """Stores a teacher group's correct rollouts and appends those of earlier visits."""
    fresh = [Rollout.of(x, r, c.tokens)
             for x, r, c in zip(group.texts, group.rewards, group.completions)]
    for r in self.teacher_cache.merge(group.qid, fresh)[len(fresh):]:
      group.completions.append(Completion(list(r.token_ids), []))
      group.texts.append(r.text)
      group.rewards.append(r.reward)

  def _policy_updates(self, groups: Sequence[Group], advantages: np.ndarray,
                      rng: np.random.Generator) -> dict[str, float]:
    """I optimizer updates on disjoint mini-batches of the step's rollouts."""
    sequences = [TrainSequence(g.prompt_ids, c.tokens, c.logprobs, 0.0, g.loss_start)
                 for g in groups for c in g.completions]
    for seq, adv in zip(sequences, advantages):
      seq.advantage = float(adv)
    order = rng.permutation(len(sequences))
    parts = [[sequences[i] for i in part]
             for part in np.array_split(order, self.config.rl.inner_updates) if len(part)]
    return _mean_metrics(self.student.train_step(parts), prefix="update/")

  def _distill(self, plain: Sequence[Group], step: int, times: dict) -> dict[str, float]:
    """One JSD update: on correct teacher rollouts (off) or on the student's rollouts (on)."""
    if self.flags.distill == "on":
      batch = [TrainSequence(g.prompt_ids, c.tokens, c.logprobs, 0.0)
               for g in plain for c in g.completions]
    else:
      teacher = self._teacher_rollouts(plain, step, times)
      batch = [TrainSequence(g.prompt_ids, c.tokens, [], 0.0)
               for g in teacher for c, r in zip(g.completions, g.rewards) if r > 0]
    out = {"distill/sequences": len(batch)}
    if batch:
      out.update(_mean_metrics([self.student.distill_step(batch, self.teacher)],
                               prefix="update/"))
    return out

  # --- checkpoints ---

  def host_state(self) -> dict:
    # Every process's buffer partition, so that the host state is the same on every process.
    parts = distributed.allgather_objects(self.buffer.state_dict())
    return {"step": self.step, "buffer": parts[0] if len(parts) == 1 else parts,
            "data": self.prompts.state(), "totals": self.totals, "seed": self.config.seed,
            "teacher_cache": self.teacher_cache.state_dict()}

  def load_host_state(self, host: dict) -> None:
    self.step = int(host["step"])
    buffer = host["buffer"]  # One partition per process of the saving run, whatever their count.
    self.buffer.load_partitions(buffer if isinstance(buffer, list) else [buffer])
    self.prompts.restore(host["data"])
    self.totals = {k: float(v) for k, v in host["totals"].items()}
    # Checkpoints written before the bounded cache hold an empty dict here.
    self.teacher_cache.load_state_dict(host["teacher_cache"] or [])

  # --- the loop ---

  def evaluate(self, step: int) -> dict[str, float]:
    """Accuracy of the student on the held-out questions (G_S samples each, training sampling)."""
    if not self.eval_records:
      return {}
    groups = self._rollouts(self._plain_specs(self.eval_records), 10**6 + step, {})
    out = {"eval/accuracy": float(np.mean([g.accuracy for g in groups])),
           "eval/solved": int(sum(g.accuracy > 0 for g in groups))}
    by_subset: dict[str, list[float]] = {}
    for record, g in zip(self.eval_records, groups):
      by_subset.setdefault(str(record.get("subset", "")), []).append(g.accuracy)
    if len(by_subset) > 1:    # Held-out accuracy per subset (the demo's levels, ZPPO-77K's sets).
      out.update({f"eval/accuracy/{name}": float(np.mean(values))
                  for name, values in sorted(by_subset.items())})
    return out

  def train(self) -> dict:
    """Resumes from the workdir if possible, runs to `total_steps`, and returns a summary."""
    cfg = self.config
    ckpt = RunCheckpointer(self.workdir, keep=cfg.keep_checkpoints,
                           async_save=cfg.async_checkpointing)
    restored = ckpt.restore(self.student.state(), check_host=HOST_FIELDS,
                            run_config=json.loads(cfg.to_json_best_effort()))
    if distributed.is_main():  # After the restore: a mismatching run keeps its config.json.
      (self.workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2, sort_keys=True))
    summary_path = self.workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if restored is not None:
      self.student.load_state(restored.state)
      self.load_host_state(restored.host)
      print(f"train: resumed from step {self.step} in {ckpt.directory}", file=self.stream)
    elif self.eval_records:
      summary["eval_before"] = self.evaluate(0)
      if distributed.is_main():
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True))
    # Every process computes the same metrics; only the main process writes them.
    writer = MetricsWriter(self.workdir, cfg.total_steps, start_step=self.step,
                           stream=self.stream) if distributed.is_main() else None
    preempted = False
    try:
      with PreemptionFlag() as flag:
        while self.step < cfg.total_steps:
          step = self.step + 1
          distributed.barrier(f"step{step}")   # Host work (logs, checkpoints) may drift.
          metrics = self.run_step(step)
          self.step = step
          if cfg.eval_every and step % cfg.eval_every == 0:
            metrics.update(self.evaluate(step))
          # Every process stops after the same step when any of them has seen SIGTERM.
          stop = distributed.any_process(flag.requested)
          if step % cfg.checkpoint_every == 0 or step == cfg.total_steps or stop:
            t = time.perf_counter()
            ckpt.save(step, self.student.state(), self.host_state(), force=True)
            if stop:
              ckpt.wait()
              preempted = True
            metrics["time_checkpoint"] = time.perf_counter() - t
          if writer is not None:
            writer.write(step, metrics)
          if preempted:
            who = "this process" if flag.requested else "another process"
            print(f"train: SIGTERM received (by {who}); saved step {step} and stopped",
                  file=self.stream)
            break
    finally:
      ckpt.close()
      if writer is not None:
        writer.close()
    if not preempted and self.step >= cfg.total_steps:
      if self.eval_records and "eval_after" not in summary:
        summary["eval_after"] = self.evaluate(self.step)
      summary.update({"step": self.step, "method": cfg.method, **self.totals})
      if distributed.is_main():
        summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True))
    summary["preempted"] = preempted
    return summary


def _mean_metrics(results: Sequence[dict], prefix: str) -> dict[str, float]:
  keys = sorted({k for r in results for k in r})
  out = {}
  for key in keys:
    values = [float(r[key]) for r in results if key in r]
    out[prefix + key] = float(np.sum(values)) if key.startswith("skipped") else float(
        np.mean(values))
  return out
