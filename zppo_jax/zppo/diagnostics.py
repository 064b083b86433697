"""Per-step diagnostics the paper reports (no JAX).

  * ``zero_adv_frac/<kind>``: fraction of groups of a kind whose rewards are all equal (every
    advantage is zero, nothing is learned from them).
  * ``bcq/accuracy``; ``bcq/match_positive``: among correct BCQ rollouts, the fraction whose answer
    equals the correct candidate's; ``bcq/match_negative``: among wrong BCQ rollouts, the fraction
    whose answer equals the wrong candidate's.
  * ``ncq/accuracy``; ``ncq/repeat_wrong``: the fraction of NCQ rollouts whose answer is one of the
    listed wrong answers.
  * ``teacher/success_rate``: correct teacher rollouts / teacher rollouts on hard questions;
    ``teacher/any_correct_rate``: hard questions with at least one correct teacher rollout.
A rate with no rollouts to count is NaN (not 0), so an empty step does not read as a failure.
"""
import math
from collections.abc import Callable, Mapping, Sequence, Hashable

from zppo_jax.rewards.grading import normalize_text
from zppo_jax.zppo.reformulate import QuestionGroup, Reformulation, Rollout


def same_answer(a: str | None, b: str | None) -> bool:
  """Default answer match: both parsed and equal after light normalisation."""
  return a is not None and b is not None and normalize_text(a) == normalize_text(b)


def _rate(hits: int, total: int) -> float:
  return hits / total if total else math.nan


def zero_advantage_fraction(groups: Mapping[Hashable, Sequence[float]]) -> float:
  """Fraction of groups (``{key: rewards}``) whose rewards are all equal."""
  trivial = sum(1 for rewards in groups.values() if len(set(rewards)) <= 1)
  return _rate(trivial, len(groups))


def step_diagnostics(groups: Sequence[QuestionGroup], reformulations: Sequence[Reformulation],
                     rollouts: Mapping[tuple[Hashable, str], Sequence[Rollout]],
                     tau: float = 0.5,
                     match: Callable[[str | None, str | None], bool] = same_answer
                     ) -> dict[str, float]:
  """Computes the step's diagnostics.

  Args:
    groups: the step's questions with plain (and, when hard, teacher) rollouts.
    reformulations: the step's BCQ/NCQ/hint/prefix prompts (their ``meta`` carries candidates).
    rollouts: the student rollouts on each reformulation, keyed ``(qid, kind)``.
    tau: τ, to find the hard questions.
    match: answer equality used by the match and repeat rates.

  Returns:
    ``{name: value}`` (see the module docstring).
  """
  out: dict[str, float] = {}
  by_kind: dict[str, dict[Hashable, list[float]]] = {"plain": {}}
  for g in groups:
    by_kind["plain"][g.qid] = [r.reward for r in g.student_rollouts]
  for ref in reformulations:
    group = rollouts.get((ref.qid, ref.kind), ())
    by_kind.setdefault(ref.kind, {})[ref.qid] = [r.reward for r in group]
  for kind, kind_groups in by_kind.items():
    out[f"zero_adv_frac/{kind}"] = zero_advantage_fraction(kind_groups)

  counts = {"bcq_n": 0, "bcq_right": 0, "pos": 0, "neg": 0, "ncq_n": 0, "ncq_right": 0,
            "repeat": 0}
  for ref in reformulations:
    group = rollouts.get((ref.qid, ref.kind), ())
    if ref.kind == "bcq":
      for r in group:
        counts["bcq_n"] += 1
        if r.correct:
          counts["bcq_right"] += 1
          counts["pos"] += match(r.answer, ref.meta.get("correct_answer"))
        else:
          counts["neg"] += match(r.answer, ref.meta.get("wrong_answer"))
    elif ref.kind == "ncq":
      listed = ref.meta.get("wrong_answers", [])
      for r in group:
        counts["ncq_n"] += 1
        counts["ncq_right"] += r.correct
        counts["repeat"] += any(match(r.answer, a) for a in listed)
  out["bcq/accuracy"] = _rate(counts["bcq_right"], counts["bcq_n"])
  out["bcq/match_positive"] = _rate(counts["pos"], counts["bcq_right"])
  out["bcq/match_negative"] = _rate(counts["neg"], counts["bcq_n"] - counts["bcq_right"])
  out["ncq/accuracy"] = _rate(counts["ncq_right"], counts["ncq_n"])
  out["ncq/repeat_wrong"] = _rate(counts["repeat"], counts["ncq_n"])

  hard = [g for g in groups if g.plain_accuracy < tau and g.teacher_rollouts]
  teacher = [r for g in hard for r in g.teacher_rollouts]
  out["teacher/success_rate"] = _rate(sum(r.correct for r in teacher), len(teacher))
  out["teacher/any_correct_rate"] = _rate(
      sum(any(r.correct for r in g.teacher_rollouts) for g in hard), len(hard))
  return out
