"""Deterministic matchers of `zppo_jax.eval.metrics`: letters, numbers, ANLS, OCRBench-v2."""
import pytest
from hypothesis import given, settings, strategies as st

from zppo_jax.eval import metrics

OPTIONS = ("dog", "cat", "fish", "cow")


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B. cat", "B"), ("\\text{B}", "B"), ("Option C", "C"),
    ("cat", "B"), ("  Cat. ", "B"), ("$D$", "D"),
    ("E", None),      # not among four options
    ("b", None),      # lower case is a variable, not an option
    ("horse", None),  # names no option
    ("A or B", None),
])
def test_match_choice(answer, letter):
  assert metrics.match_choice(answer, OPTIONS) == letter


def test_match_choice_without_listed_options_accepts_any_capital():
  assert metrics.match_choice("(G)", ()) == "G"
  assert metrics.match_choice("seven", ()) is None


def test_match_choice_ambiguous_option_text_is_undecided():
  assert metrics.match_choice("same", ("same", "Same", "x")) is None


@pytest.mark.parametrize("text, value", [
    ("12", 12.0), ("-3.5", -3.5), ("1,234.5", 1234.5), ("45%", 45.0), ("45\\%", 45.0),
    ("\\frac{1}{4}", 0.25), ("-\\dfrac{3}{2}", -1.5), ("$7$", 7.0), ("\\text{8 cm}", 8.0),
    ("1e3", 1000.0), ("1 and 2", None), ("x", None), ("\\frac{1}{0}", None), ("x+1", None),
    ("about 5", None), ("2^3", None), ("30°", 30.0), ("45^{\\circ}", 45.0), ("12 apples.", 12.0),
    ("$12", 12.0),
])
def test_parse_number(text, value):
  assert metrics.parse_number(text) == value


def test_numbers_match_precision_and_tolerance():
  assert metrics.numbers_match(3.14159, 3.14, precision=2)
  assert not metrics.numbers_match(3.149, 3.14, precision=2)
  assert metrics.numbers_match(100.005, 100.0, rel_tol=1e-4)
  assert not metrics.numbers_match(100.02, 100.0, rel_tol=1e-4)
  assert metrics.numbers_match(1.0004, 1.0, abs_tol=1e-3, rel_tol=0.0)


@pytest.mark.parametrize("a, b, d", [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3),
                                     ("flaw", "lawn", 2), ("你好", "你们好", 1)])
def test_levenshtein(a, b, d):
  assert metrics.levenshtein(a, b) == d == metrics.levenshtein(b, a)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=12), st.text(max_size=12), st.text(max_size=12))
def test_levenshtein_is_a_metric(a, b, c):
  ab, bc, ac = (metrics.levenshtein(a, b), metrics.levenshtein(b, c), metrics.levenshtein(a, c))
  assert (ab == 0) == (a == b)
  assert ac <= ab + bc
  assert abs(len(a) - len(b)) <= ab <= max(len(a), len(b))


def test_anls_values():
  assert metrics.anls("Hello  World", ["hello world", "x"]) == 1.0
  assert metrics.anls("hellx world", ["hello world"]) == pytest.approx(10 / 11)
  # Similarity 1 - 3/5 = 0.4 is under the 0.5 threshold: 0.
  assert metrics.anls("abxyz", ["abcde"]) == 0.0
  # Best over golds: "1990" vs "1991" -> 0.75.
  assert metrics.anls("1990", ["2005", "1991"]) == pytest.approx(0.75)


@pytest.mark.parametrize("prediction, golds, kind, bbox, expected", [
    ("the sign says STOP here", ["stop"], "text recognition en", None, (1.0, "vqa")),
    ("the sign says GO", ["stop"], "text recognition en", None, (0.0, "vqa")),
    ("答案是你好", ["你好"], "cognition VQA cn", None, (1.0, "vqa")),
    # A gold of five or more words is scored by ANLS: one substitution in 24 characters.
    ("the quick brown fox jumpz", ["the quick brown fox jumps"], "reasoning VQA en", None,
     (pytest.approx(24 / 25), "vqa")),
    ("[10, 10, 20, 20]", [], "text grounding en", [10, 10, 20, 20], (1.0, "iou")),
    ("(15, 10), (25, 20)", [], "text grounding en", [10, 10, 20, 20], (0.0, "iou")),
    ('{"name":"bob","total":"3.00","x":"1"}', ['{"name": "Bob", "total": "3.00"}'],
     "key information extraction en", None, (pytest.approx(0.8), "kie_f1")),
    ("There are 12 words", ["12"], "text counting en", None, (1.0, "count")),
    ("There are 13 words", ["12"], "text counting en", None, (0.0, "count")),
    ("12", ["12"], "text counting en", None, (1.0, "count")),
    ("abcd", ["abce"], "full-page OCR en", None, (0.75, "edit_sim")),
])
def test_ocrbench_v2_metrics(prediction, golds, kind, bbox, expected):
  assert metrics.ocrbench_v2_score(prediction, golds, kind, bbox) == expected


def test_ocrbench_v2_unreadable_answers_are_undecided():
  assert metrics.ocrbench_v2_score("no box here", [], "text grounding en", [0, 0, 1, 1]) is None
  assert metrics.ocrbench_v2_score("many", ["3"], "text counting en") is None


def test_box_iou():
  assert metrics.box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
  assert metrics.box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
