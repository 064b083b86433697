"""In-process grading rules (spec §5): math-verify equivalence, the degree/percent retry, multiple
choice, free-form golds, and "never raises"."""
import functools

import pytest

from zppo_jax.rewards import GradeConfig, grading, is_free_form, strip_degree_percent
from zppo_jax.rewards.grading import option_letter

# Generous soft timeouts: on a loaded CI machine a 5 s alarm could turn a right answer into a 0.
_CONFIG = GradeConfig(soft_timeout_s=60)
grade_answer = functools.partial(grading.grade_answer, config=_CONFIG)
grade_local = functools.partial(grading.grade_local, config=_CONFIG)

B = "\\boxed"


@pytest.mark.parametrize("answer, gold", [
    ("0.5", "\\frac{1}{2}"),
    ("\\dfrac12", "1/2"),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt2/2"),
    ("2", "2.0"),
    ("1,000", "1000"),
    ("(1, 2]", "(1,2]"),
    ("\\{2, 1\\}", "\\{1,2\\}"),
    ("x=3", "3"),
    ("3", "x = 3"),
    ("x^2+2x+1", "(x+1)^2"),
    ("\\pi", "\\pi"),
    ("-\\frac{3}{4}", "-0.75"),
])
def test_equivalent_forms(answer, gold):
  assert grade_answer(answer, gold) == 1.0


@pytest.mark.parametrize("answer, gold", [
    ("0.49", "\\frac{1}{2}"),
    ("2", "3"),
    ("(1, 2)", "(1,2]"),
    ("x^2", "x^3"),
    ("", "1"),
    ("1", ""),
])
def test_inequivalent_forms(answer, gold):
  assert grade_answer(answer, gold) == 0.0


def test_no_answer_scores_zero():
  assert grade_answer(None, "1") == 0.0
  assert grade_local("the answer is 1", "1") == 0.0  # No box, no reward.


def test_answer_inside_think_does_not_count():
  assert grade_local("<think>\\boxed{1}</think> I give up", "1") == 0.0
  assert grade_local("<think>\\boxed{2}</think> \\boxed{1}", "1") == 1.0


def test_last_box_is_graded():
  assert grade_local(f"{B}{{1}} no wait {B}{{2}}", "2") == 1.0
  assert grade_local(f"{B}{{2}} no wait {B}{{1}}", "2") == 0.0


@pytest.mark.parametrize("text, expected", [
    ("30°", "30"), ("30^\\circ", "30"), ("30^{\\circ}", "30"), ("30\\circ", "30"),
    ("30\\deg", "30"), ("50%", "50"), ("50\\%", "50"), ("45^{\\circ}C", "45C"),
    ("45 degrees", "45"), ("1 degree", "1"), ("45\\text{ degrees}", "45"), ("50 percent", "50"),
    ("degreesx", "degreesx"), ("xdegree", "xdegree"),  # Only whole words.
])
def test_strip_degree_percent(text, expected):
  assert strip_degree_percent(text) == expected


@pytest.mark.parametrize("answer, gold", [
    ("30.0°", "30"), ("60°", "60.0"), ("1/2\\deg", "0.5"),  # Equal only as numbers once stripped.
    ("30", "30^\\circ"), ("30^\\circ", "30"), ("30°", "30"), ("30", "30°"),
    ("30\\deg", "30"), ("25\\%", "25"), ("25", "25%"), ("25%", "25\\%"),
])
def test_degree_percent_retry(answer, gold):
  assert grade_answer(answer, gold) == 1.0


def test_retry_strips_marks_not_units():
  # The retry removes marks from both sides, it does not make 30° equal 31.
  assert grade_answer("31^\\circ", "30") == 0.0
  assert grade_answer("50%", "0.49") == 0.0


def test_degree_retry_is_needed(monkeypatch):
  """The stripped retry is what makes `30°` equal `30` (math-verify itself already reads `%` and
  `^\\circ`): without it, these fail."""
  monkeypatch.setattr(grading, "strip_degree_percent", lambda s: s)
  assert grade_answer("30°", "30") == 0.0
  assert grade_answer("30", "30°") == 0.0
  assert grade_answer("30\\deg", "30") == 0.0
  assert grade_answer("30.0°", "30") == 0.0


@pytest.mark.parametrize("answer", [
    "B", "(B)", "B.", "B. 12", "(B) twelve", "B) 12", "\\text{B}", "\\textbf{(B)}", "B: 12",
])
def test_multiple_choice_letter(answer):
  assert grade_answer(answer, "B") == 1.0
  assert grade_answer(answer, "(B)") == 1.0
  assert grade_answer(answer, "C") == 0.0


def test_multiple_choice_option_text():
  options = {"A": "10", "B": "\\frac{1}{2}", "C": "Paris"}
  assert grade_answer("\\frac{1}{2}", "B", options) == 1.0
  assert grade_answer("0.5", "B", options) == 1.0  # An equivalent form of the option text.
  assert grade_answer("10", "B", options) == 0.0
  assert grade_answer("paris", "C", options) == 1.0
  assert grade_answer("A", "B", options) == 0.0
  # Options as a list in letter order, and a gold written as option text answered by letter.
  assert grade_answer("B", "\\frac{1}{2}", ["10", "\\frac{1}{2}"]) == 1.0
  assert grade_answer("A", "\\frac{1}{2}", ["10", "\\frac{1}{2}"]) == 0.0


def test_lowercase_is_not_an_option():
  assert option_letter("x", allow_text=False) is None
  assert grade_answer("y", "x") == 0.0
  assert grade_answer("x", "x") == 1.0
  assert option_letter("Because it is", allow_text=True) is None


@pytest.mark.parametrize("gold, free", [
    ("Paris", True), ("the red car", True), ("x^2 + y", False), ("\\frac{\\pi}{2}", False),
    ("(1, 2]", False), ("B", False), ("\\text{cm}", False), ("\\sin x", False),
    ("ab + bc + ca", False), ("sin x cos x", False), ("5 cm", False), ("max(a, b)", False),
    ("red car", True), ("True", True),
])
def test_is_free_form(gold, free):
  assert is_free_form(gold) is free


def test_free_form_gold_skips_symbolic_algebra():
  # math-verify reads words as products of symbols, so `sirap` would equal `Paris`.
  assert grade_answer("sirap", "Paris") == 0.0
  assert grade_answer("paris", "Paris") == 1.0  # Normalised string equality still applies.
  assert grade_answer("Paris.", "Paris") == 1.0


@pytest.mark.parametrize("answer, gold", [
    ("\\frac{", "1"), ("}{", "1"), ("\\sqrt{}", "2"), ("1/0", "1"), ("\\infty", "\\infty-"),
    ("a" * 5000, "1"), ("\\begin{pmatrix}", "1"), (None, None), ("1", None), ("1", 1),
])
def test_never_raises(answer, gold):
  assert grade_answer(answer, gold) in (0.0, 1.0)  # type: ignore[arg-type]


def test_no_format_reward_and_no_length_penalty():
  """Spec §5: only the final answer counts, not the format or the length around it."""
  assert grade_local("\\boxed{7}", "7") == 1.0  # No <think> block: no penalty.
  long = "<think>" + "hmm " * 5000 + "</think>" + "filler " * 5000 + "\\boxed{7}"
  assert grade_local(long, "7") == 1.0
  assert grade_local("<think>neat</think> The answer is \\boxed{8}.", "7") == 0.0


@pytest.mark.parametrize("text, expected", [
    ("1.0e3", "1000"), ("2.5E-3", "0.0025"), ("5e+2", "500"), (".5e1", "5"),
    ("6.02\\times10^{23}", "602000000000000000000000"), ("1.5 \\cdot 10^{4}", "15000"),
    ("3\\times 10^2 + 1", "300 + 1"), ("(1e3, 2e3)", "(1000, 2000)"), ("10^{1e3}", "10^{1000}"),
    ("1e200", "1\\times10^{200}"),  # Beyond ±100 the power of ten stays.
    ("2e", "2e"), ("e^3", "e^3"), ("3e x", "3e x"), ("1e3x", "1e3x"), ("a1e3", "a1e3"),
    ("x_1e2", "x_1e2"), ("x^2.5\\times10^3", "x^2.5\\times10^3"),
    ("1.5\\times 10^2.5", "1.5\\times 10^2.5"),
])
def test_normalize_scientific(text, expected):
  assert grading.normalize_scientific(text) == expected


@pytest.mark.parametrize("answer, gold", [
    ("1.0e3", "1000"), ("45°", "\\frac{\\pi}{4}"), ("45^\\circ", "\\frac{\\pi}{4}"),
    ("\\frac{\\pi}{6}", "30^{\\circ}"), ("e^{i\\pi}", "-1"),
])
def test_the_new_rules_are_what_makes_these_match(monkeypatch, answer, gold):
  """Scientific notation, degrees vs radians and the imaginary unit: each pair needs its rule."""
  assert grade_answer(answer, gold) == 1.0
  monkeypatch.setattr(grading, "normalize_scientific", lambda s: s)
  monkeypatch.setattr(grading, "_radian_equal", lambda *a: False)
  monkeypatch.setattr(grading, "_imaginary", lambda parsed: None)
  assert grade_answer(answer, gold) == 0.0


@pytest.mark.parametrize("answer, gold", [
    ("45°", "\\frac{\\pi}{3}"), ("45", "\\frac{\\pi}{4}"), ("\\frac{\\pi}{4}", "45"),
    ("90^\\circ", "\\pi"), ("45°", "0.785398"),  # Radians only against an expression in pi.
    ("i", "1"), ("e^{i\\pi}", "1"), ("2e3", "2e-3"), ("2e", "2"),
])
def test_the_new_rules_keep_wrong_answers_wrong(answer, gold):
  assert grade_answer(answer, gold) == 0.0


def test_matrix_gold_is_math_not_prose():
  assert not is_free_form("\\begin{pmatrix}1 & 2\\\\ 3 & 4\\end{pmatrix}")
  assert grade_answer("\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}",
                      "\\begin{pmatrix}1 & 2\\\\ 3 & 4\\end{pmatrix}") == 1.0
