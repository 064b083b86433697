"""The records evaluation passes around: a benchmark item, the prompt the model sees, the verdict.

An adapter (``benchmarks.py``) turns one row of a published benchmark into an `EvalItem`; the runner
turns the item into an `EvalPrompt` (format instructions stripped, options listed, the RL closer
appended, see shared/ZPPO_SPEC.md §4) and a `Verdict` records how its response was scored.
"""
import dataclasses
import enum
from typing import Any

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Mode(str, enum.Enum):
  """How an item is scored; the deterministic parser of each mode runs before any judge."""
  CHOICE = "choice"     # gold is a letter; the response's answer is matched to a letter.
  MATH = "math"         # gold is a math answer; boxed answer graded with LaTeX/numeric equivalence.
  NUMERIC = "numeric"   # gold is a number; relative tolerance (or a fixed number of decimals).
  EXACT = "exact"       # gold is a short string; normalised string equality.
  ANLS = "anls"         # gold is a list of strings; average normalised Levenshtein similarity.
  OCR = "ocr"           # OCRBench-v2: the metric depends on the item's task type.
  JUDGE = "judge"       # free-form gold; equivalence first, then the judge decides.
  RUBRIC = "rubric"     # MultiChallenge: only the judge decides (the gold is a pass criterion).


@dataclasses.dataclass(frozen=True)
class Media:
  """An image or a video: encoded bytes or a file path (absolute, or relative to the data dir)."""
  data: bytes | None = None
  path: str | None = None

  def __post_init__(self):
    if (self.data is None) == (self.path is None):
      raise ValueError("Media needs exactly one of data or path")


@dataclasses.dataclass(frozen=True)
class EvalItem:
  """One benchmark question in the shared format.

  Attributes:
    uid: unique within its benchmark; the resume key.
    question: the question text as published (format instructions are stripped later).
    gold: the reference answer: a letter for CHOICE, a list of accepted strings for ANLS/OCR.
    mode: how the response is scored.
    choices: option texts in letter order (CHOICE); listed under the question in the prompt.
    images: images in the order the question refers to them.
    video: the video of a video benchmark.
    context: text placed before the question (e.g. Video-MME subtitles).
    history: earlier chat turns ``(role, content)`` for multi-turn benchmarks (MultiChallenge).
    closer: whether the RL closer is appended (every benchmark of the paper's single format does).
    meta: mode-specific details (numeric precision, OCR task type, answer type, ...).
  """
  uid: str
  question: str
  gold: Any
  mode: Mode
  choices: tuple[str, ...] = ()
  images: tuple[Media, ...] = ()
  video: Media | None = None
  context: str = ""
  history: tuple[tuple[str, str], ...] = ()
  closer: bool = True
  meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
  """What a `Generator` receives: a chat (the last message is the user turn to answer) and media.

  Attributes:
    uid: the item's uid, prefixed with its benchmark (``"mmlu/123"``).
    messages: ``({"role": ..., "content": ...}, ...)``; images/videos belong to the first user turn.
    images: images in order.
    video: the video, if any.
  """
  uid: str
  messages: tuple[dict, ...]
  images: tuple[Media, ...] = ()
  video: Media | None = None

  @property
  def text(self) -> str:
    """The final user message."""
    return self.messages[-1]["content"]


@dataclasses.dataclass
class Verdict:
  """How one response was scored.

  Attributes:
    uid: the item's uid within its benchmark.
    score: in [0, 1]; 0/1 for every mode but ANLS and the OCR similarity metrics.
    path: what decided it: ``parser:<how>`` for deterministic parsers, ``judge``,
      ``judge:malformed`` (the judge's reply was not the strict JSON: wrong), ``no_judge`` (the
      parser could not decide and no judge was configured: wrong), ``error`` (the prompt could
      not be generated, e.g. an unreadable image: wrong).
    extracted: the answer the parser read from the response, if any.
    gold: the reference answer.
    response: the model's full response.
    error: why no response could be generated (path ``error``; the sample counts as wrong).
  """
  uid: str
  score: float
  path: str
  extracted: str | None
  gold: Any
  response: str
  error: str | None = None

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "Verdict":
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)
                  if f.name in d or f.default is dataclasses.MISSING})


def format_choices(choices: tuple[str, ...]) -> str:
  """Lists options one per line as ``A. text``."""
  if len(choices) > len(LETTERS):
    raise ValueError(f"{len(choices)} options is more than {len(LETTERS)} letters")
  return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
