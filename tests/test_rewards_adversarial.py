"""Reward holes: answers an RL policy could find that must score 0, a property test over generated
(gold, response) pairs with known verdicts, and the per-item time budget."""
import functools

from hypothesis import given, settings, strategies as st
import pytest

from zppo_jax.rewards import GradeConfig, extract_answer, grading, strip_think
from zppo_jax.rewards.judge import parse_verdict
from zppo_jax.rewards.relations import leading_relation, not_equal_relations

_CONFIG = GradeConfig(soft_timeout_s=60)  # Generous: a loaded CI machine must not time out.
grade_local = functools.partial(grading.grade_local, config=_CONFIG)
grade_answer = functools.partial(grading.grade_answer, config=_CONFIG)

# Each of these scored 1.0 against gold 42: math-verify drops a relation it cannot pair.
RELATIONS = [
    "\\neq", "\\ne", "\\not=", "\\not =", "<", ">", "\\lt", "\\gt", "\\leq", "\\le", "\\geq",
    "\\ge", "\\leqslant", "\\geqslant", "\\approx", "\\sim", "\\simeq", "\\cong", "\\equiv",
    "\\propto", "\\doteq", "\\neg", "\\not", "\\nless", "\\ngtr", "\\lesssim", "\\gtrsim",
    "\\lessapprox", "\\not\\approx", "\\not\\equiv", "\\in", "\\to", "\\Rightarrow",
    "≠", "<", ">", "≤", "≥", "≈", "∼", "≅", "≃", "≡", "≲", "≳", "≪", "≫", "∝", "¬", "⩽", "⩾",
    "!=", "<=", ">=", "=<", "=>",
]
ADVERSARIAL = [r + " 42" for r in RELATIONS] + [r + "42" for r in RELATIONS if r[-1] != "t"] + [
    "{\\neq} 42", "{\\ne 42}", "$\\neq$ 42", "\\text{≠} 42", "\\mathrm{\\neq} 42",
    "\\left. \\neq 42", "\\; \\neq 42", "\\, < 42", "\\displaystyle \\approx 42", "\\quad\\sim 42",
    "x \\approx 42", "x \\sim 42", "x \\neq 42", "x \\not= 42", "x \\equiv 42", "y ≈ 42",
]


@pytest.mark.parametrize("answer", ADVERSARIAL)
def test_a_relation_never_equals_the_number(answer):
  assert grade_local("\\boxed{" + answer + "}", "42") == 0.0
  assert grade_local("\\boxed{" + answer + "}", "42", ["41", "42"]) == 0.0


@pytest.mark.parametrize("answer, gold", [
    ("42", "42"), ("x = 42", "42"), ("= 42", "42"), ("42", "x=42"), ("x > 2", "(2, \\infty)"),
    ("(2,\\infty)", "x > 2"), ("x \\geq 2", "x \\ge 2"), ("\\le 5", "\\leq 5"), ("≤ 5", "\\le 5"),
    ("x \\approx 3.14", "x \\approx 3.14"), ("5!", "120"), ("x \\in \\{42\\}", "42"),
    ("X \\sim N(0, 1)", "X \\sim N(0, 1)"),
])
def test_relations_that_are_right_still_score(answer, gold):
  assert grade_local("\\boxed{" + answer + "}", gold) == 1.0


@pytest.mark.parametrize("answer, gold", [("< 5", "> 5"), ("\\le 5", "< 5"), ("\\neq 5", "= 5")])
def test_a_different_leading_relation_is_wrong(answer, gold):
  assert grade_local("\\boxed{" + answer + "}", gold) == 0.0


def test_leading_relation_names():
  assert leading_relation("\\ne 42") == leading_relation("!= 42") == leading_relation("≠42") == "≠"
  assert leading_relation("{\\le} 1") == leading_relation("=< 1") == "≤"
  assert leading_relation("= 42") is None and leading_relation("-42") is None
  assert leading_relation("\\frac{1}{2}") is None and leading_relation("\\sqrt{2}") is None
  assert not_equal_relations("5! + 3~\\text{cm}") == frozenset()


@pytest.mark.parametrize("tag_case", ["THINK", "Think", "tHiNk"])
def test_think_tags_in_any_case(tag_case):
  open_, close = f"<{tag_case}>", f"</{tag_case}>"
  assert grade_local(f"{open_}\\boxed{{42}}{close}", "42") == 0.0
  assert grade_local(f"{open_}\\boxed{{42}}", "42") == 0.0  # Never closed: all reasoning.
  assert grade_local(f"{open_}7{close} \\boxed{{42}}", "42") == 1.0
  assert strip_think(f"a{open_}b{close}c") == "c"
  assert parse_verdict(f'{open_}{{"verdict": "wrong"}}{close}{{"verdict": "correct"}}') is True


def test_the_time_budget_bounds_the_retries():
  spent = GradeConfig(soft_timeout_s=60, item_budget_s=0.0)
  assert grading.grade_answer("0.5", "\\frac{1}{2}", config=spent) == 0.0  # No math-verify.
  assert grading.grade_answer("42", "42", config=spent) == 1.0            # Strings still match.
  assert grading.grade_answer("B", "B", config=spent) == 1.0
  assert GradeConfig(soft_timeout_s=5).budget_s() == 10.0
  assert GradeConfig(soft_timeout_s=None).budget_s() is None


# --- property test: generated (gold, response) pairs whose verdict is known ---

def _right_forms(n):
  return st.sampled_from([str(n), f"{n}.0", f"x = {n}", f"\\frac{{{2 * n}}}{{2}}", f" {n} ",
                          f"{{{n}}}", f"\\text{{{n}}}", f"{n}."])


_WRONG_NUMBER = st.integers(-10**6, 10**6)
_THINK = st.sampled_from(["think", "THINK", "Think"])


@st.composite
def _graded_pairs(draw):
  """(gold, response, verdict): a right form (1), a relation before a right form (0), another
  number (0), or a right box hidden in the reasoning (0); with reasoning of any tag case."""
  n = draw(st.integers(-10**6, 10**6))
  kind = draw(st.sampled_from(["right", "relation", "other", "in_think"]))
  tag = draw(_THINK)
  think = draw(st.sampled_from(["", f"<{tag}>scratch \\boxed{{{n + 1}}}</{tag}>\n"]))
  form = draw(_right_forms(n))
  if kind == "right":
    return str(n), f"{think}The answer is \\boxed{{{form}}}.", 1.0
  if kind == "relation":
    relation = draw(st.sampled_from(RELATIONS))
    space = draw(st.sampled_from(["", " ", "\\,"]))
    return str(n), f"{think}\\boxed{{{relation}{space}{form}}}", 0.0
  if kind == "other":
    m = draw(_WRONG_NUMBER.filter(lambda m: m != n))
    return str(n), f"{think}\\boxed{{{m}}}", 0.0
  return str(n), f"<{tag}>\\boxed{{{form}}}</{tag}> no box here", 0.0


@settings(max_examples=150, deadline=None, derandomize=True)
@given(_graded_pairs())
def test_generated_pairs_have_their_known_verdict(pair):
  gold, response, verdict = pair
  assert grade_local(response, gold) == verdict, (gold, response)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.text(max_size=80), st.text(max_size=20))
def test_the_grader_never_raises_and_extraction_is_consistent(response, gold):
  score = grade_local(response, gold)
  assert score in (0.0, 1.0)
  if extract_answer(response) is None:
    assert score == 0.0
