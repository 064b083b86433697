"""The grading pool: results equal in-process grading, a hard per-item timeout, crash recovery,
the `grade` entry point, and a fuzz test through the pool (no exception, every item comes back)."""
import os
import string
import time

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from zppo_jax.rewards import GradeConfig, GradeItem, GradingPool, grade, grade_local


def hang_or_crash(response, gold, choices, config):
  """A grade_fn for the tests, imported by the workers: hangs or dies on request."""
  if gold == "HANG":
    time.sleep(3600)
  if gold == "CRASH":
    os._exit(3)
  return grade_local(response, gold, choices, config)


@pytest.fixture(scope="module")
def pool():
  # Generous timeouts: a loaded CI machine must not turn a slow ordinary item into a 0.
  with GradingPool(num_workers=2, timeout_s=60.0, config=GradeConfig(soft_timeout_s=20)) as p:
    yield p


@pytest.fixture(scope="module")
def quick_pool():
  """One-second soft timeouts keep the adversarial cases quick (their scores are not checked,
  except for cases that are 0 whatever the grader's speed)."""
  with GradingPool(num_workers=1, timeout_s=30.0, config=GradeConfig(soft_timeout_s=1)) as p:
    yield p


CASES = [
    ("\\boxed{0.5}", "\\frac{1}{2}", None),
    ("<think>\\boxed{1}</think>\\boxed{2}", "2", None),
    ("\\boxed{(B)}", "B", None),
    ("\\boxed{12}", "B", {"A": "10", "B": "12"}),
    ("\\boxed{30°}", "30", None),
    ("\\boxed{3}", "4", None),
    ("no box", "1", None),
    ("\\boxed{sirap}", "Paris", None),
]


def test_pool_matches_in_process(pool):
  items = [GradeItem(*c) for c in CASES] * 3
  config = GradeConfig(soft_timeout_s=60)
  expected = [grade_local(i.response, i.gold, i.choices, config) for i in items]
  assert pool.grade_many(items) == expected
  assert expected.count(1.0) == 15  # The cases are a mix of right and wrong.
  assert pool.stats.timeouts == 0 and pool.stats.crashes == 0


def test_empty_batch(pool):
  assert pool.grade_many([]) == []


def test_hard_timeout_and_crash_score_zero_and_are_counted():
  with GradingPool(num_workers=1, timeout_s=1.0,
                   grade_fn=f"{__name__}:hang_or_crash") as p:
    items = [GradeItem("\\boxed{1}", "1"), GradeItem("\\boxed{1}", "HANG"),
             GradeItem("\\boxed{2}", "2"), GradeItem("\\boxed{1}", "CRASH"),
             GradeItem("\\boxed{3}", "3")]
    assert p.grade_many(items) == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert (p.stats.timeouts, p.stats.crashes, p.stats.restarts) == (1, 1, 2)
    assert p.stats.graded == 3
    assert p.grade("\\boxed{4}", "4") == 1.0  # The replacement worker serves on.


def test_closed_pool_raises_and_grade_does_not():
  p = GradingPool(num_workers=1, grade_fn=f"{__name__}:hang_or_crash")
  p.close()
  p.close()  # Idempotent.
  with pytest.raises(RuntimeError, match="closed"):
    p.grade_many([GradeItem("\\boxed{1}", "1")])
  assert grade("\\boxed{1}", "1", pool=p) == 0.0  # `grade` never raises.


def test_invalid_arguments():
  with pytest.raises(ValueError, match="num_workers"):
    GradingPool(num_workers=0)
  with pytest.raises(ValueError, match="timeout_s"):
    GradingPool(timeout_s=0)


def test_grade_entry_point_uses_the_default_pool():
  assert grade("so \\boxed{\\frac{6}{8}}", "0.75") == 1.0
  assert grade("\\boxed{B. 7}", "B") == 1.0
  assert grade("\\boxed{7}", "8") == 0.0
  assert grade(None, "1") == 0.0  # type: ignore[arg-type]


_ADVERSARIAL = [
    "\\boxed{" * 5000,
    "\\boxed{" + "{" * 3000 + "}" * 3000 + "}",
    "\\boxed{\\frac{\\frac{\\frac{1}{2}}{3}}{4}^{\\sqrt{\\sqrt{\\sqrt{2}}}}}",
    "\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}}",
    "\\boxed{\\int_0^\\infty e^{-x^2} dx}",
    "\\boxed{1/0}", "\\boxed{0^0}", "\\boxed{\\infty - \\infty}", "\\boxed{x=}", "\\boxed{=}",
    "\\boxed{\\left(}", "\\boxed{\\text{}}", "\\boxed{\x00\x01}", "\\boxed{𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ½ √2}",
    "<think>" * 100 + "\\boxed{1}", "\\boxed{1}" + "</think>" * 100,
    "\\boxed{" + "1+" * 2000 + "1}",
    "\\boxed{10^{10^{10}}}",  # Sympy may try to evaluate this: a soft or hard timeout, a 0.
]


def test_adversarial_responses_come_back(quick_pool):
  items = [GradeItem(r, g) for r in _ADVERSARIAL for g in ("1", "\\frac{1}{2}")]
  scores = quick_pool.grade_many(items)
  assert len(scores) == len(items)
  assert set(scores) <= {0.0, 1.0}
  assert scores[_ADVERSARIAL.index("\\boxed{1}" + "</think>" * 100) * 2] == 0.0


_FUZZ_ALPHABET = string.printable + "°√½π∞"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(
    st.one_of(st.text(_FUZZ_ALPHABET, max_size=80),
              st.text(_FUZZ_ALPHABET, max_size=40).map(lambda s: f"\\boxed{{{s}}}")),
    st.one_of(st.text(_FUZZ_ALPHABET, max_size=20), st.sampled_from(["1", "B", "\\frac12"]))),
    min_size=1, max_size=20))
def test_grading_fuzz(quick_pool, pairs):
  scores = quick_pool.grade_many([GradeItem(r, g) for r, g in pairs])
  assert len(scores) == len(pairs) and set(scores) <= {0.0, 1.0}
