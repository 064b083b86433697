"""The judge of free-form gold answers, the same for every method (shared/ZPPO_SPEC.md §5).

`config.judge` names it: an OpenAI-compatible endpoint (`judge.url`), or a checkpoint run in
process (`judge.checkpoint`, default `teacher.checkpoint`). When that checkpoint is the loaded
teacher, the teacher judges; otherwise (GRPO / GRPO† load no teacher) the checkpoint is loaded on
the first free-form answer the grader cannot decide, so a run whose golds are all deterministic
never loads it. A run with free-form golds and no judge at all stops at start-up (`require`).
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Sequence

from zppo_jax.errors import UserError
from zppo_jax.rewards import JudgeItem, OpenAICompatibleJudge, needs_judge

HOW_TO = ("set --config.judge.url=http://HOST:PORT/v1 (an OpenAI-compatible server; "
          "judge.model names its model) or --config.judge.checkpoint=DIR (an HF checkpoint "
          "judged in process; default teacher.checkpoint)")


class LazyJudge:
  """A judge built by `load()` when first asked (every process asks at the same time)."""

  def __init__(self, load: Callable[[], object]):
    self._load = load
    self._judge = None

  def verdicts(self, items: Sequence[JudgeItem]) -> list[bool]:
    if not items:
      return []
    if self._judge is None:
      self._judge = self._load()
    return self._judge.verdicts(items)


def make_judge(config, teacher=None, load_teacher: Callable[[str], object] | None = None,
               tokenizer=None):
  """The run's judge (a `rewards.Judge`), or None when the config names none.

  Args:
    config: the run config (`judge.*`, `teacher.checkpoint`).
    teacher: the loaded `train.teacher.Teacher`, if the method loads one.
    load_teacher: checkpoint -> `Teacher`, for a judge checkpoint that is not the loaded teacher.
    tokenizer: the judge's chat template and decoding (the run's tokenizer).
  """
  from zppo_jax.train.teacher import TeacherJudge  # JAX: only when a run is built.
  j = config.judge
  if j.url:
    key = os.environ.get(j.api_key_env) if j.api_key_env else None
    return OpenAICompatibleJudge(j.url, j.model, api_key=key or None)
  checkpoint = j.checkpoint or config.teacher.checkpoint
  if not checkpoint:
    return None
  if teacher is not None and checkpoint == config.teacher.checkpoint:
    return TeacherJudge(teacher, tokenizer)
  if load_teacher is None:
    raise ValueError(f"judge checkpoint {checkpoint} needs a loader")
  return LazyJudge(lambda: TeacherJudge(load_teacher(checkpoint), tokenizer))


def require(judge, records: Iterable[dict]) -> None:
  """Stops a run that has free-form gold answers and no judge, naming the first such record.

  Raises:
    UserError: one line saying how to give a judge.
  """
  if judge is not None:
    return
  for r in records:
    if needs_judge(str(r["answer"]), r.get("choices")):
      raise UserError(f"record {r['id']!r} has a free-form gold answer ({str(r['answer'])[:40]!r})"
                      f" and the run has no judge: {HOW_TO}")


def shard_records(source) -> Iterable[dict]:
  """The records of a built dataset's Grain source (`data.pipeline.Pipeline.source`), in order:
  read until `require` finds a free-form gold (most sets have one early)."""
  from zppo_jax.data import records  # pylint: disable=import-outside-toplevel
  for i in range(len(source)):
    record = records.deserialize(source[i])
    yield {"id": record["id"], "answer": record["answer"],
           "choices": record["meta"].get("choices")}
