"""The reward entry points: `grade` for one response, `grade_batch` for a step's rollouts.

Both run in a `GradingPool`, so every item has a hard time bound. `grade` uses a shared default
pool (one worker, started on first use, stopped at exit); the trainer makes its own pool with as
many workers as it can spare and passes it to `grade_batch`.
"""
import atexit
import dataclasses
import logging
import threading
from collections.abc import Sequence

from zppo_jax.rewards.extract import extract_answer, strip_think
from zppo_jax.rewards.grading import Choices, is_free_form, option_letter
from zppo_jax.rewards.judge import Judge, JudgeItem
from zppo_jax.rewards.pool import GradeItem, GradingPool

_log = logging.getLogger(__name__)
_default_pool: GradingPool | None = None
_default_lock = threading.Lock()


def default_pool() -> GradingPool:
  """The shared one-worker pool behind `grade` (created on first use)."""
  global _default_pool
  with _default_lock:
    if _default_pool is None:
      _default_pool = GradingPool(num_workers=1)
      atexit.register(_default_pool.close)
    return _default_pool


def grade(response: str, gold: str, choices: Choices = None, *,
          pool: GradingPool | None = None) -> float:
  """Grades one response against its gold answer: 1.0 or 0.0, never raises, bounded time.

  Args:
    response: the full model response; its last ``\\boxed{}`` outside ``<think>`` is the answer.
    gold: the reference answer.
    choices: multiple-choice options (``{"A": text, ...}`` or a list in letter order), if any.
    pool: the pool to grade in (default: `default_pool()`).

  Returns:
    1.0 when the answer is equivalent to the gold answer; 0.0 otherwise, also when the grader
    timed out or failed.
  """
  try:
    return (pool or default_pool()).grade(response, gold, choices)
  except Exception:  # noqa: BLE001 - the contract is "never raises".
    _log.exception("grading failed; scored 0")
    return 0.0


@dataclasses.dataclass(frozen=True)
class RewardItem:
  """One rollout to reward.

  Attributes:
    response: the full model response.
    gold: the reference answer.
    question: the question text (for the judge).
    choices: multiple-choice options, if any.
  """
  response: str
  gold: str
  question: str = ""
  choices: Choices = None


def needs_judge(gold: str, choices: Choices = None) -> bool:
  """Whether a gold answer is free-form text that only a judge can compare (not an option)."""
  return not choices and option_letter(gold, allow_text=False) is None and is_free_form(gold)


def grade_batch(items: Sequence[RewardItem], pool: GradingPool,
                judge: Judge | None = None) -> list[float]:
  """Rewards a batch: deterministic grading first, then the judge for free-form golds it failed.

  Args:
    items: the rollouts.
    pool: where deterministic grading runs.
    judge: asked only about items that scored 0 and whose gold is free-form (`needs_judge`) and
      that have a final answer; None keeps the deterministic score.

  Returns:
    One reward (1.0 or 0.0) per item.
  """
  scores = pool.grade_many([GradeItem(i.response, i.gold, i.choices) for i in items])
  if judge is None:
    return scores
  ask = [k for k, item in enumerate(items)
         if scores[k] == 0.0 and needs_judge(item.gold, item.choices)
         and extract_answer(item.response) is not None]
  if ask:
    verdicts = judge.verdicts([JudgeItem(items[k].question, items[k].gold,
                                         strip_think(items[k].response).strip()) for k in ask])
    for k, verdict in zip(ask, verdicts):
      scores[k] = 1.0 if verdict else 0.0
  return scores
