"""Deterministic answer matchers: option letters, numbers, strings, ANLS, OCRBench-v2 metrics.

Each matcher takes the answer already extracted from a response (the last ``\\boxed{}``) and either
returns a score or None when it cannot read the answer at all, in which case the judge decides.
"""
import json
import math
import re
import unicodedata

from zppo_jax.eval.items import LETTERS
from zppo_jax.rewards.grading import option_letter

_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def unwrap_latex(text: str) -> str:
  """Removes ``\\text{}``-style wrappers, ``$`` and outer whitespace: ``\\text{(B)}`` -> ``(B)``."""
  prev = None
  while prev != text:
    prev, text = text, _LATEX_WRAPPERS.sub(r"\1", text)
  return text.replace("$", "").strip()


def normalize_text(text: str) -> str:
  """Case-folded, NFKC, whitespace-collapsed, without trailing punctuation; for string equality."""
  text = unicodedata.normalize("NFKC", unwrap_latex(text)).casefold()
  text = re.sub(r"\s+", " ", text).strip()
  return text.rstrip(".。").strip()


def match_choice(answer: str, choices: tuple[str, ...]) -> str | None:
  """The option letter an answer names, or None when it names none.

  Accepts what the reward's grader accepts (``B``, ``(B)``, ``B.``, ``B. text``, ``\\text{B}``),
  ``Option B``, or exactly one option's full text.

  Args:
    answer: the extracted answer.
    choices: option texts in letter order; with no options (they are inside the question text)
      any capital letter is accepted.
  """
  text = unwrap_latex(answer)
  text = re.sub(r"^(?:option|choice|answer)\s*:?\s*", "", text, flags=re.IGNORECASE)
  letter = option_letter(text, allow_text=True)
  if letter is not None:
    return letter if not choices or letter in LETTERS[:len(choices)] else None
  norm = normalize_text(text)
  hits = [LETTERS[i] for i, c in enumerate(choices) if normalize_text(c) == norm]
  return hits[0] if len(hits) == 1 else None


def parse_number(text: str) -> float | None:
  """The one number an answer states (``1,234.5``, ``$12``, ``45%``, ``\\frac{1}{4}``), or None."""
  text = unwrap_latex(text).replace(",", "").replace("\\%", "").replace("%", "")
  text = text.replace("\\!", "").replace("{,}", "")
  text = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree", "", text)
  frac = re.fullmatch(r"\s*(-?)\\[dt]?frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}\s*", text)
  if frac:
    denominator = float(frac.group(3))
    if denominator == 0:
      return None
    value = float(frac.group(2)) / denominator
    return -value if frac.group(1) else value
  # A number, optionally after a currency sign and before unit words ("8 cm", "12 apples").
  m = re.fullmatch(rf"\s*[$€£¥]?\s*({_NUMBER.pattern})\s*(?:[^\W\d_]+\.?\s*)*", text)
  if m is None:
    return None
  value = float(m.group(1))
  return value if math.isfinite(value) else None


def numbers_match(pred: float, gold: float, *, precision: int | None = None,
                  rel_tol: float = 1e-4, abs_tol: float = 1e-9) -> bool:
  """Equality up to ``precision`` decimals when given, else within the relative tolerance."""
  if precision is not None:
    return round(pred, precision) == round(gold, precision)
  return math.isclose(pred, gold, rel_tol=rel_tol, abs_tol=abs_tol)


def levenshtein(a: str, b: str) -> int:
  """Edit distance (insertions, deletions, substitutions all cost 1)."""
  if len(a) < len(b):
    a, b = b, a
  row = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, cb in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
  return row[-1]


def normalized_similarity(a: str, b: str) -> float:
  """1 - edit distance / length of the longer string; 1.0 for two empty strings."""
  longest = max(len(a), len(b))
  return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def anls(prediction: str, golds: list[str], threshold: float = 0.5) -> float:
  """Average Normalized Levenshtein Similarity of one answer (the DocVQA/InfoVQA metric).

  The best similarity over the accepted answers, each compared case-insensitively with collapsed
  whitespace; similarities below ``threshold`` count as 0.
  """
  pred = " ".join(prediction.lower().split())
  best = 0.0
  for gold in golds:
    sim = normalized_similarity(pred, " ".join(str(gold).lower().split()))
    best = max(best, sim if sim >= threshold else 0.0)
  return best


# ---------------------------------------------------------------------------------------------
# OCRBench-v2. Each item's `type` (e.g. "text recognition en") selects the metric. The official
# toolkit's TEDS (tables) and BLEU/METEOR (full pages) are replaced by normalised edit similarity;
# the rest follow the toolkit's rules.

_OCR_SIMILARITY_TYPES = ("full-page ocr", "table parsing", "chart parsing", "document parsing",
                         "formula recognition", "text spotting")
_OCR_BOX_TYPES = ("text grounding",)
_OCR_KIE_TYPES = ("key information extraction", "key information mapping")
_OCR_COUNT_TYPES = ("text counting",)


def _vqa_contains(prediction: str, golds: list[str], chinese: bool) -> float:
  """Short answers must appear in the prediction; long ones are scored by ANLS."""
  pred = " ".join(prediction.lower().split())
  best = 0.0
  for gold in golds:
    g = " ".join(str(gold).lower().split())
    short = len(g.replace(" ", "")) < 4 if chinese else len(g.split()) < 5
    if short:
      best = max(best, float(g in pred))
    else:
      best = max(best, anls(pred, [g]))
  return best


def _boxes(text: str) -> list[list[float]]:
  return [[float(v) for v in m] for m in re.findall(r"(-?\d+(?:\.\d+)?)\D+?(-?\d+(?:\.\d+)?)\D+?"
                                                   r"(-?\d+(?:\.\d+)?)\D+?(-?\d+(?:\.\d+)?)", text)]


def box_iou(a: list[float], b: list[float]) -> float:
  """Intersection over union of two ``[x1, y1, x2, y2]`` boxes."""
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
  return w * h / union if union > 0 else 0.0


def _kie_f1(prediction: str, gold: str) -> float | None:
  """F1 over exactly matching key/value pairs of two JSON objects; None if the answer is not one."""
  try:
    gold_pairs = {(normalize_text(k), normalize_text(str(v))) for k, v in json.loads(gold).items()}
  except (json.JSONDecodeError, AttributeError):
    return None
  m = re.search(r"\{.*\}", prediction, flags=re.DOTALL)
  try:
    pred = json.loads(m.group(0)) if m else None
  except json.JSONDecodeError:
    pred = None
  if not isinstance(pred, dict):
    return None
  pred_pairs = {(normalize_text(str(k)), normalize_text(str(v))) for k, v in pred.items()}
  hits = len(gold_pairs & pred_pairs)
  if hits == 0:
    return 0.0
  precision, recall = hits / len(pred_pairs), hits / len(gold_pairs)
  return 2 * precision * recall / (precision + recall)


def ocrbench_v2_score(prediction: str, golds: list[str], task_type: str,
                      bbox: list | None = None) -> tuple[float, str] | None:
  """Scores one OCRBench-v2 answer; returns ``(score, metric name)`` or None if unreadable."""
  kind = task_type.lower().rsplit(" ", 1)[0] if task_type.lower().endswith((" en", " cn")) \
      else task_type.lower()
  chinese = task_type.lower().endswith(" cn")
  if kind in _OCR_BOX_TYPES:
    if not bbox:
      return None
    boxes = _boxes(prediction)
    return (float(box_iou(boxes[0], [float(v) for v in bbox]) >= 0.5), "iou") if boxes else None
  if kind in _OCR_KIE_TYPES and golds:
    f1 = _kie_f1(prediction, golds[0])
    if f1 is not None:
      return f1, "kie_f1"
  if kind in _OCR_COUNT_TYPES:
    # A count may come inside a sentence ("There are 12 words"); it must be the only number.
    numbers = _NUMBER.findall(prediction.replace(",", ""))
    if len(numbers) != 1:
      return None
    value, targets = float(numbers[0]), [parse_number(g) for g in golds]
    return float(any(t is not None and value == t for t in targets)), "count"
  if kind in _OCR_SIMILARITY_TYPES:
    pred = " ".join(prediction.split())
    return max(normalized_similarity(pred, " ".join(str(g).split())) for g in golds), "edit_sim"
  return _vqa_contains(prediction, golds, chinese), "vqa"
