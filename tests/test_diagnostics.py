"""Per-step diagnostics: zero-advantage fractions, BCQ match rates, NCQ repeats, teacher success."""
import math

from zppo_jax.zppo.diagnostics import same_answer, step_diagnostics, zero_advantage_fraction
from zppo_jax.zppo.reformulate import QuestionGroup, Reformulation, Rollout


def R(answer, reward):
  return Rollout(f"\\boxed{{{answer}}}", reward, answer)


def test_zero_advantage_fraction():
  assert zero_advantage_fraction({"a": [0, 0], "b": [1, 0], "c": [1, 1], "d": [1]}) == 0.75
  assert math.isnan(zero_advantage_fraction({}))


def test_same_answer():
  assert same_answer("\\text{B}", "b") and same_answer(" 3 ", "3")
  assert not same_answer(None, None) and not same_answer("3", "4")


def test_step_diagnostics():
  groups = [
      QuestionGroup("h1", "Q", "42", 0.0, (R("1", 0), R("2", 0)),
                    teacher_rollouts=(R("42", 1), R("7", 0), R("42", 1), R("8", 0))),
      QuestionGroup("h2", "Q", "42", 0.25, (R("42", 1), R("3", 0), R("3", 0), R("3", 0)),
                    teacher_rollouts=(R("9", 0), R("9", 0))),
      QuestionGroup("e", "Q", "42", 1.0, (R("42", 1), R("42", 1))),
  ]
  refs = [
      Reformulation("h1", "bcq", "p", "42", meta={"correct_answer": "42", "wrong_answer": "1",
                                                   "correct_first": True}),
      Reformulation("h1", "ncq", "p", "42", meta={"wrong_answers": ["1", "2"]}),
      Reformulation("h2", "ncq", "p", "42", meta={"wrong_answers": ["3"]}),
  ]
  rollouts = {
      ("h1", "bcq"): [R("42", 1), R("42", 1), R("1", 0), R("5", 0)],
      ("h1", "ncq"): [R("2", 0), R("1", 0), R("6", 0), R("6", 0)],
      ("h2", "ncq"): [R("42", 1), R("3", 0), R("42", 1), R("42", 1)],
  }
  d = step_diagnostics(groups, refs, rollouts)
  assert d["zero_adv_frac/plain"] == 2 / 3  # h1 all wrong, e all right.
  assert d["zero_adv_frac/bcq"] == 0.0 and d["zero_adv_frac/ncq"] == 0.5
  assert d["bcq/accuracy"] == 0.5
  assert d["bcq/match_positive"] == 1.0  # Both right rollouts answered 42.
  assert d["bcq/match_negative"] == 0.5  # One of two wrong rollouts copied the wrong candidate.
  assert d["ncq/accuracy"] == 3 / 8
  assert d["ncq/repeat_wrong"] == 3 / 8  # "2", "1" in h1; "3" in h2.
  assert d["teacher/success_rate"] == 2 / 6
  assert d["teacher/any_correct_rate"] == 0.5


def test_empty_step_is_nan_not_zero():
  d = step_diagnostics([], [], {})
  assert all(math.isnan(v) for k, v in d.items() if k != "zero_adv_frac/plain")
  assert math.isnan(d["bcq/match_positive"]) and math.isnan(d["teacher/success_rate"])
