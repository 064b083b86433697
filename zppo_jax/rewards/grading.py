"""Grading one answer against its gold answer (shared/ZPPO_SPEC.md §5), in process.

Order of the checks, first success wins:
  1. Multiple choice: when the gold answer is a single option letter (``B``, ``(B)``, ``B.``), the
     answer's letter (``B``, ``(B)``, ``B. text``, ``\\text{B}``) must equal it, or, when the
     options are given, the answer may be the gold option's text (and a gold option text may be
     answered by its letter).
  2. Normalised string equality (whitespace, ``\\text{}``, ``\\left``/``\\right``, a final period).
  3. LaTeX / numeric equivalence with ``math_verify.parse`` + ``math_verify.verify`` (an
     inequality equals the matching interval: ``x > 2`` is ``(2, \\infty)``).
  4. Once more, with degree (``°``, ``^\\circ``, ``\\circ``, ``\\deg``, ``degrees``) and percent
     (``%``, ``\\%``, ``percent``) marks stripped from both sides.
  5. When one side is an angle in degrees and the other an expression in pi, the degree side is
     also read in radians (``45°`` equals ``\\frac{\\pi}{4}``).
An answer that starts with a relation (``\\neq 42``, ``< 42``, ``\\approx 42``), or that holds a
"not equal" relation (``≈``, ``∼``, ``≡``, ``\\not``) the gold answer does not, never equals it by
math-verify: math-verify drops such a relation and would compare the bare number
(`zppo_jax.rewards.relations`). All math-verify calls of one item share a time budget
(`GradeConfig.item_budget_s`), so the retries cannot stack up.
Before parsing, a number in scientific notation (``1.0e3``, ``2.5\\times10^{-3}``) is written as
its exact decimal (`normalize_scientific`). A free symbol ``i`` left after parsing is read as the
imaginary unit on a second try (math-verify reads only ``I`` so): ``e^{i\\pi}`` equals ``-1``.
Free-form text gold answers (see `is_free_form`) skip math-verify, whose symbol algebra would call
``Paris`` and ``sirap`` equal; the caller sends them to a judge when one is configured.

math-verify bounds its own parse/verify calls with ``signal.alarm``, which only works on the main
thread; elsewhere these soft timeouts are off. The hard bound (a call stuck in C code) comes from
`zppo_jax.rewards.pool.GradingPool`, which runs this module in worker processes.
"""
import dataclasses
import decimal
import logging
import re
import math
import threading
import time
from collections.abc import Mapping, Sequence

from zppo_jax.rewards.extract import extract_answer
from zppo_jax.rewards.relations import leading_relation, not_equal_relations

_log = logging.getLogger(__name__)

Choices = Mapping[str, str] | Sequence[str] | None


@dataclasses.dataclass(frozen=True)
class GradeConfig:
  """Knobs of the in-process grader.

  Attributes:
    soft_timeout_s: math-verify's own per-call timeout (whole seconds, main thread only; None
      turns it off). Each of parse(gold), parse(answer), verify, the imaginary-unit retry and
      the degree/percent and radian retries gets this much.
    max_answer_chars: answers longer than this are compared as strings only (no sympy).
    float_rounding: decimal places math-verify rounds floats to before comparing.
    relation_as_set: compare an inequality with an interval as sets (``x > 2`` equals
      ``(2, \\infty)``; math-verify's ``allow_set_relation_comp``).
    item_budget_s: wall-clock seconds all math-verify calls of one item may take together (the
      retries stop when it is spent); None means twice ``soft_timeout_s`` (no budget when that
      is None too).
  """
  soft_timeout_s: int | None = 5
  max_answer_chars: int = 1000
  float_rounding: int = 6
  relation_as_set: bool = True
  item_budget_s: float | None = None

  def budget_s(self) -> float | None:
    """The total time of an item's math-verify calls."""
    if self.item_budget_s is not None:
      return self.item_budget_s
    return None if self.soft_timeout_s is None else 2.0 * self.soft_timeout_s


DEFAULT_CONFIG = GradeConfig()

_LETTER_RE = re.compile(r"^\(?\s*([A-Z])\s*\)?\s*[.:)]?$")
# An answer that starts with an option letter followed by its text: "B. 12", "(B) 12", "B) 12".
_LETTER_PREFIX_RE = re.compile(r"^\(?\s*([A-Z])\s*(?:\)|\.|:)(?:\s+.*)?$", re.DOTALL)
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
# Degree and percent marks, symbols or words (`45 degrees`, `\text{ percent}`).
_DEGREE_MARKS = (r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree|\\deg(?![A-Za-z])"
                 r"|\\text\s*\{\s*degrees?\s*\}|(?<![A-Za-z\\])degrees?(?![A-Za-z])")
_PERCENT_MARKS = r"\\%|%|\\text\s*\{\s*percent\s*\}|(?<![A-Za-z\\])percent(?![A-Za-z])"
_DEGREE_PERCENT_RE = re.compile(_DEGREE_MARKS + "|" + _PERCENT_MARKS)
_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_ENVIRONMENT_RE = re.compile(r"\\(?:begin|end)\s*\{[A-Za-z*]*\}")
_DEGREE_RE = re.compile(_DEGREE_MARKS)
_PI_RE = re.compile(r"\\pi(?![A-Za-z])|π")
# A decimal mantissa and an integer exponent, as `2.5e-3` or `2.5 \times 10^{-3}`; not part of a
# longer word, number, command or exponent.
_SCIENTIFIC_RE = re.compile(
    r"(?<![A-Za-z0-9.\\_^])(\d+(?:\.\d*)?|\.\d+)"
    r"(?:[eE]([+-]?\d+)(?![A-Za-z0-9.])"
    r"|\s*(?:\\times|\\cdot|\*|×)\s*10\s*\^\s*(?:\{\s*([+-]?\d+)\s*\}|(\d)(?![0-9.])))")
_MAX_EXPONENT = 100


def _unwrap(text: str) -> str:
  """Removes text-style wrappers (``\\text{B}`` -> ``B``) repeatedly, innermost first."""
  for _ in range(8):
    new = _WRAPPER_RE.sub(r"\1", text)
    if new == text:
      break
    text = new
  return text


def normalize_text(text: str) -> str:
  """A light, meaning-preserving normal form for string comparison."""
  text = _unwrap(text)
  text = text.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
  text = text.replace("$", "")
  text = re.sub(r"\s+", " ", text).strip()
  return text.rstrip(".").strip().lower()


def option_letter(text: str, *, allow_text: bool) -> str | None:
  """The option letter an answer names, or None.

  Args:
    text: a gold answer or an extracted answer.
    allow_text: accept a letter followed by option text (``B. 12``); used for answers, not golds.
  """
  # Case matters: a lower-case `x` or `a` is a variable or an article, not an option.
  text = re.sub(r"\s+", " ", _unwrap(text).replace("$", "")).strip() if text else ""
  match = _LETTER_RE.match(text)
  if match is None and allow_text:
    match = _LETTER_PREFIX_RE.match(text)
  return match.group(1) if match else None


def _choices_map(choices: Choices) -> dict[str, str]:
  if not choices:
    return {}
  if isinstance(choices, Mapping):
    return {str(k).strip().upper(): str(v) for k, v in choices.items()}
  return {chr(ord("A") + i): str(v) for i, v in enumerate(choices)}


# Letter runs that are math, not prose, when written without a backslash.
_MATH_WORDS = frozenset(
    "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln lg exp sqrt lim max min "
    "gcd lcm det mod deg dim ker inf sup arg degree degrees percent".split())


def is_free_form(gold: str) -> bool:
  """Whether a gold answer is prose rather than math (then only a judge can grade paraphrases).

  Prose means, once LaTeX commands and math words (``sin``, ``log``, ``max``...) are removed: a
  letter run of 4 or more (``Paris``), or two or more runs of 3 or more letters (``red car``).
  ``x^2 + y``, ``ab + bc + ca``, ``\\frac{\\pi}{2}``, ``(1, 2]``, ``sin x cos x``, ``5 cm``,
  matrices (``\\begin{pmatrix}...``) and option letters are math.
  """
  runs = re.findall(r"[A-Za-z]+", _COMMAND_RE.sub(" ", _ENVIRONMENT_RE.sub(" ", _unwrap(gold))))
  runs = [r for r in runs if r.lower() not in _MATH_WORDS]
  return any(len(r) >= 4 for r in runs) or sum(len(r) >= 3 for r in runs) >= 2


def strip_degree_percent(text: str) -> str:
  """Removes degree and percent marks (``°``, ``^\\circ``, ``^{\\circ}``, ``\\circ``, ``\\deg``,
  ``%``, ``\\%``, and the words ``degree(s)`` and ``percent``)."""
  return _DEGREE_PERCENT_RE.sub("", text).strip()


def _plain_decimal(match: re.Match) -> str:
  mantissa = match.group(1)
  exponent = next(e for e in match.group(2, 3, 4) if e is not None)
  if abs(int(exponent)) > _MAX_EXPONENT:
    return f"{mantissa}\\times10^{{{exponent}}}"
  return format(decimal.Decimal(f"{mantissa}e{exponent}"), "f")


def normalize_scientific(text: str) -> str:
  """Rewrites a number in scientific notation as its exact decimal (``2.5e-3`` -> ``0.0025``).

  Two reasons: math-verify reads the ``e`` of ``1.0e3`` as Euler's number, and it fails to equate
  a float mantissa times a power of ten (``2.5\\times10^{-3}``) with the decimal. Only a number
  directly followed by ``e``/``E`` and an integer, or by ``\\times``/``\\cdot`` and a power of
  ten, is rewritten, so ``2e``, ``e^3``, ``3e x`` and names like ``1e3x`` keep their meaning.
  Exponents beyond +-100 stay powers of ten.
  """
  return _SCIENTIFIC_RE.sub(_plain_decimal, text)


def has_degree_mark(text: str) -> bool:
  """Whether a text marks an angle in degrees (``°``, ``^\\circ``, ``\\circ``, ``\\degree``,
  ``\\deg``)."""
  return _DEGREE_RE.search(text) is not None


def _on_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


_PARSE_CACHE: dict[tuple[str, int | None], list] = {}
_PARSE_CACHE_SIZE = 4096
_warm = False


def _warm_up() -> None:
  """Imports sympy and builds math-verify's parser once, outside any timeout: the first parse
  of a process takes seconds, which must not be charged to (and time out) the first item."""
  global _warm
  if not _warm:
    from math_verify import parse, verify
    # math-verify warns once per process when called without its signal-based timeout; grading
    # here runs in worker processes that `rewards.pool` kills when they hang, which is the
    # interruption the notice asks for.
    for name in ("math_verify.grader", "math_verify.parser"):
      logging.getLogger(name).addFilter(
          lambda record: not record.getMessage().startswith("Timeout is disabled"))
    verify(parse("\\boxed{1}", parsing_timeout=None), parse("\\boxed{1}", parsing_timeout=None),
           timeout_seconds=None)
    _warm = True


def _parse(text: str, timeout: int | None) -> list:
  """math_verify.parse of ``\\boxed{text}``, cached: one gold answer is graded G_S times a step.

  Only successful parses are cached: math-verify returns ``[]`` on a timeout too, and a timeout
  under load must not make a gold answer unparseable for the rest of the run.
  """
  key = (text, timeout)
  if key in _PARSE_CACHE:
    return _PARSE_CACHE[key]
  from math_verify import parse  # Imported lazily: sympy takes ~0.5 s to import.
  parsed = parse("\\boxed{" + text + "}", parsing_timeout=timeout)
  if parsed:
    if len(_PARSE_CACHE) >= _PARSE_CACHE_SIZE:
      _PARSE_CACHE.clear()
    _PARSE_CACHE[key] = parsed
  return parsed


def _scaled(parsed: list, factor) -> list:
  """The parsed expressions times ``factor`` (the strings math-verify adds are dropped)."""
  import sympy
  return [x * factor for x in parsed if isinstance(x, sympy.Expr)]


def _imaginary(parsed: list) -> list | None:
  """The parsed expressions with a free symbol ``i`` read as the imaginary unit, or None when
  none has one. math-verify reads only ``I`` so; in a final answer ``i`` is the unit."""
  import sympy
  out, changed = [], False
  for x in parsed:
    if isinstance(x, (sympy.Basic, sympy.MatrixBase)):
      units = {s: sympy.I for s in x.free_symbols if getattr(s, "name", None) == "i"}
      if units:
        x, changed = x.subs(units), True
    out.append(x)
  return out if changed else None


def relation_mismatch(answer: str, gold: str) -> bool:
  """Whether the answer makes a claim the gold answer does not: a leading relation the gold does
  not start with (``\\neq 42`` against ``42``), or a "not equal" relation (``≈``, ``∼``, ``≡``,
  ``\\not``) the gold does not hold (``x \\approx 42`` against ``42``)."""
  lead = leading_relation(answer)
  if lead is not None and lead != leading_relation(gold):
    return True
  return not not_equal_relations(answer) <= not_equal_relations(gold)


def _timeout(config: GradeConfig, deadline: float | None) -> tuple[bool, int | None]:
  """(whether time is left, the soft timeout of the next call) for an item's deadline."""
  timeout = config.soft_timeout_s if _on_main_thread() else None
  if deadline is None:
    return True, timeout
  remaining = deadline - time.monotonic()
  if remaining <= 0:
    return False, timeout
  if timeout is not None:
    timeout = max(1, min(timeout, math.ceil(remaining)))
  return True, timeout


def _math_equal(answer: str, gold: str, config: GradeConfig, *, answer_in_degrees: bool = False,
                gold_in_degrees: bool = False, deadline: float | None = None) -> bool:
  """math-verify equivalence of two bare answers; any failure (error, timeout) is False.

  Args:
    answer: the extracted answer.
    gold: the reference answer.
    config: timeouts and limits.
    answer_in_degrees: the answer is an angle in degrees (its marks stripped) to compare in
      radians, times pi/180.
    gold_in_degrees: the same for the gold answer.
    deadline: `time.monotonic()` after which no further math-verify call starts (the item's
      budget); each call's soft timeout is cut to the time left.
  """
  from math_verify import verify
  from math_verify.errors import TimeoutException  # A BaseException, raised by soft timeouts.
  from math_verify.utils import timeout as with_timeout
  if relation_mismatch(answer, gold):
    return False
  left, timeout = _timeout(config, deadline)
  if not left:
    return False
  try:
    _warm_up()
    gold_parsed = _parse(normalize_scientific(gold), timeout)
    answer_parsed = _parse(normalize_scientific(answer), timeout)
    if not gold_parsed or not answer_parsed:
      return False
    if answer_in_degrees or gold_in_degrees:
      import sympy
      radian = sympy.pi / 180
      # Arithmetic on parsed input can evaluate, so it runs under the soft timeout too.
      answer_parsed, gold_parsed = with_timeout(timeout)(lambda: (
          _scaled(answer_parsed, radian) if answer_in_degrees else answer_parsed,
          _scaled(gold_parsed, radian) if gold_in_degrees else gold_parsed))()

    def equal(gold_exprs, answer_exprs):
      return bool(verify(gold_exprs, answer_exprs, float_rounding=config.float_rounding,
                         allow_set_relation_comp=config.relation_as_set,
                         timeout_seconds=timeout))
    if equal(gold_parsed, answer_parsed):
      return True
    # `subs` can evaluate (`i^{10^{10}}`): under the soft timeout as well.
    gold_complex, answer_complex = with_timeout(timeout)(
        lambda: (_imaginary(gold_parsed), _imaginary(answer_parsed)))()
    if gold_complex is None and answer_complex is None:
      return False
    left, timeout = _timeout(config, deadline)
    if not left:
      return False
    return equal(gold_complex or gold_parsed, answer_complex or answer_parsed)
  except Exception:  # noqa: BLE001 - sympy raises anything on odd input; a failure is a 0.
    return False
  except TimeoutException:
    return False


def _radian_equal(answer: str, gold: str, config: GradeConfig, deadline: float | None) -> bool:
  """Whether an angle in degrees on one side equals an expression in pi on the other."""
  answer_degrees, gold_degrees = has_degree_mark(answer), has_degree_mark(gold)
  if answer_degrees == gold_degrees:
    return False
  degree_side, other = (answer, gold) if answer_degrees else (gold, answer)
  if _PI_RE.search(other) is None:
    return False
  degree_side = strip_degree_percent(degree_side)
  if not degree_side:
    return False
  if answer_degrees:
    return _math_equal(degree_side, gold, config, answer_in_degrees=True, deadline=deadline)
  return _math_equal(answer, degree_side, config, gold_in_degrees=True, deadline=deadline)


def _multiple_choice(answer: str, gold: str, options: dict[str, str], config: GradeConfig,
                     deadline: float | None) -> bool | None:
  """Multiple-choice verdict, or None when the gold answer is not an option (letter or text)."""
  gold_letter = option_letter(gold, allow_text=False)
  if gold_letter is None and options:
    # A gold answer written as an option's text: find its letter.
    for letter, text in options.items():
      if normalize_text(text) == normalize_text(gold):
        gold_letter = letter
        break
  if gold_letter is None:
    return None
  answer_letter = option_letter(answer, allow_text=True)
  if answer_letter is not None and (not options or answer_letter in options
                                    or answer_letter == gold_letter):
    return answer_letter == gold_letter
  gold_text = options.get(gold_letter)
  if gold_text is None:
    return False
  if normalize_text(answer) == normalize_text(gold_text):
    return True
  # The answer may be an equivalent form of the option's text (`0.5` for `1/2`), but must not be
  # a form of another option's text too.
  if is_free_form(gold_text) or len(answer) > config.max_answer_chars:
    return False
  return _math_equal(answer, gold_text, config, deadline=deadline)


def grade_answer(answer: str | None, gold: str, choices: Choices = None,
                 config: GradeConfig = DEFAULT_CONFIG) -> float:
  """Grades an extracted answer against the gold answer (no judge).

  Args:
    answer: the extracted final answer, or None when the response had no box.
    gold: the reference answer (LaTeX, a number, an option letter or text).
    choices: the options of a multiple-choice question, as ``{"A": text, ...}`` or a list in
      letter order; None for open questions.
    config: timeouts and limits.

  Returns:
    1.0 when the answer is equivalent to the gold answer, else 0.0. Never raises.
  """
  try:
    if answer is None or not isinstance(gold, str):
      return 0.0
    answer = answer.strip()
    gold = gold.strip()
    if not answer or not gold:
      return 0.0
    _warm_up()  # The first parse of a process takes seconds: not charged to this item's budget.
    budget = config.budget_s()
    deadline = None if budget is None else time.monotonic() + budget
    verdict = _multiple_choice(answer, gold, _choices_map(choices), config, deadline)
    if verdict is not None:
      return float(verdict)
    if normalize_text(answer) == normalize_text(gold):
      return 1.0
    if is_free_form(gold) or len(answer) > config.max_answer_chars:
      return 0.0
    if _math_equal(answer, gold, config, deadline=deadline):
      return 1.0
    answer_bare, gold_bare = strip_degree_percent(answer), strip_degree_percent(gold)
    if (answer_bare, gold_bare) != (answer, gold) and answer_bare and gold_bare:
      if normalize_text(answer_bare) == normalize_text(gold_bare):
        return 1.0
      if _math_equal(answer_bare, gold_bare, config, deadline=deadline):
        return 1.0
    return float(_radian_equal(answer, gold, config, deadline))
  except Exception:  # noqa: BLE001 - grading never raises; a failure is a 0.
    _log.debug("grading failed for %r vs %r", answer, gold, exc_info=True)
    return 0.0


def grade_local(response: str, gold: str, choices: Choices = None,
                config: GradeConfig = DEFAULT_CONFIG) -> float:
  """Extracts the final answer of a response and grades it, in this process (soft timeouts only).

  Args:
    response: a full model response.
    gold: the reference answer.
    choices: multiple-choice options, if any.
    config: timeouts and limits.

  Returns:
    1.0 or 0.0.
  """
  try:
    return grade_answer(extract_answer(response), gold, choices, config)
  except Exception:  # noqa: BLE001
    return 0.0
