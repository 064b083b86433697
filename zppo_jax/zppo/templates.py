"""The prompt strings of ZPPO, exactly as shared/ZPPO_SPEC.md §4 gives them, and their helpers.

``{…}`` in a template is filled with `str.format`-free concatenation, so braces inside questions or
candidates (LaTeX is full of them) are never interpreted. Model text put into a template (a
candidate, a response to compress or to hint from, a hint) has its tags neutralised: the
template's own tags, and ``<think>``/``</think>``; the tokenizer's special tokens are neutralised in
every prompt when it is encoded (`zppo_jax.data.markup`).
"""
import re

from zppo_jax.data.markup import THINK_TAGS, neutralize
from zppo_jax.rewards.extract import strip_think

RL_CLOSER = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the "
    "final answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final "
    "answer MUST BE put in \\boxed{}.")
# Decision: the spec does not give the separator between the prompt and the closer. The closer is
# the format prompt of EasyR1 (whose `mathruler` grader the paper uses), which joins the trimmed
# content and the closer with one space.
CLOSER_SEPARATOR = " "

BCQ_INTRO = (
    "\n\nHere are two candidate responses in <candidate> </candidate> tags to the question above. "
    "One is correct and another is wrong. Use these as references to help you solve the problem.")
NCQ_INTRO_HEAD = "\n\nThe following answers are all WRONG: "
NCQ_INTRO_TAIL = (
    ". Below are the incorrect reasoning processes in <candidate> </candidate> tags.\n")
NO_ANSWERS = "(none)"

COMPRESSION_TEMPLATE_HEAD = (
    "Compress the response below into a summary (in 5 lines max). Rules:\n"
    "• Response is in <response>...</response> tags\n"
    "• Summary should be in <summary>...</summary> tags and should be in 5 lines max\n"
    "• Keep ONLY the essential reasoning steps and the final answer\n"
    "• Remove ALL exploratory text, self-corrections, retries, and filler\n"
    "• Do NOT re-derive or add new information\n"
    "• End with the final answer in \\boxed{} format\n"
    "<response>\n")
RESPONSE_TAIL = "\n</response>"
COMPRESSION_MAX_NEW_TOKENS = 512

HINT_TEMPLATE_HEAD = (
    "Read the solved response below and write a concise hint that helps solve the original "
    "question. Do NOT reveal the final answer, do NOT include any \\boxed{} expression, and do NOT "
    "copy the full solution. Keep only high-level guidance or the key intermediate idea.\n"
    "<response>\n")

# Upstream format instructions, each matching one whole sentence (spec §4: they are stripped so
# the RL closer is the only format instruction).
FORMAT_INSTRUCTION_PATTERNS = (
    # "Let's think step by step.", "Please reason step by step, and put ... \boxed{}."
    r"(?:please\s+)?(?:let'?s\s+|let us\s+)?(?:think|reason|solve[^.\n]*?)\s+step[\s-]by[\s-]step"
    r"[^.!\n]*[.!]?",
    # Any sentence asking for an (empty) box: "Put your final answer within \boxed{}."
    r"[^.!?\n]*\\boxed\{\}[^.!?\n]*[.!]?",
    # VQA answer-format lines: "Answer with the option's letter from the given choices directly."
    r"answer with the option'?s letter from the given choices directly\.?",
    r"answer the question using a single (?:word|number) or phrase\.?",
)
_FORMAT_RES = tuple(re.compile(p, re.IGNORECASE) for p in FORMAT_INSTRUCTION_PATTERNS)
_STEP_BY_STEP_RE, _BOX_REQUEST_RE, *_LITERAL_RES = _FORMAT_RES
_STEP_RE = re.compile(r"step[\s-]by[\s-]step", re.IGNORECASE)
# Pieces of text that end at a full stop or a newline (the mark kept), and at any sentence mark;
# the patterns above are run piece by piece, which keeps the whole scan linear. (A request that
# continues on the next line, "solve\nstep by step", is left alone.)
_CLAUSE_RE = re.compile(r"[^.\n]*[.\n]?")
_TAIL_RE = re.compile(r"[^.!\n]*[.!]?")
_SENTENCE_RE = re.compile(r"[^.!?\n]*[.!?\n]?")
_CANDIDATE_TAG_RE = re.compile(r"<\s*(/?)\s*candidate\s*>", re.IGNORECASE)
_RESPONSE_TAG_RE = re.compile(r"<\s*(/?)\s*response\s*>", re.IGNORECASE)
_HINT_TAG_RE = re.compile(r"<\s*(/?)\s*hint\s*>", re.IGNORECASE)
_SUMMARY_RE = re.compile(r"<summary>(.*?)</summary>", re.DOTALL | re.IGNORECASE)
_SUMMARY_OPEN_RE = re.compile(r"<summary>", re.IGNORECASE)


def _strip_step_by_step(text: str) -> str:
  """The first pattern, applied clause by clause and only up to a clause's last "step by step"
  (no match can start after it), so a long clause full of "solve" costs linear time."""
  out = []
  for clause in _CLAUSE_RE.findall(text):
    last = None
    for last in _STEP_RE.finditer(clause):
      pass
    if last is None:
      out.append(clause)
      continue
    head, kept, end = clause[:last.end()], [], 0
    for match in _STEP_BY_STEP_RE.finditer(head):
      kept.append(head[end:match.start()])
      end = match.end()
    kept.append(head[end:])
    tail = clause[last.end():]
    if end == len(head) and end > 0:  # The last match runs on to the end of its sentence.
      tail = tail[_TAIL_RE.match(tail).end():]
    out.append("".join(kept) + tail)
  return "".join(out)


def _strip_box_requests(text: str) -> str:
  """The second pattern, sentence by sentence: a sentence holding ``\\boxed{}`` goes, with its
  final ``.``/``!`` (a ``?`` or newline stays, as the pattern leaves them)."""
  return "".join(
      (sentence[-1] if sentence[-1:] in ("?", "\n") else "")
      if "\\boxed{}" in sentence.lower() else sentence
      for sentence in _SENTENCE_RE.findall(text))


def strip_format_instructions(question: str) -> str:
  """Removes upstream format instructions ("think step by step", "put the answer in \\boxed{}").

  Every step is linear in the length of the question (a long question without sentence marks
  must not stall the data loader).

  Args:
    question: a dataset prompt.

  Returns:
    The prompt without those sentences, with the blank space they leave trimmed.
  """
  question = _strip_box_requests(_strip_step_by_step(question))
  for pattern in _LITERAL_RES:
    question = pattern.sub("", question)
  question = "\n".join(line.rstrip(" \t") for line in question.split("\n"))
  question = re.sub(r"\n{3,}", "\n\n", question)
  return question.strip()


def rl_prompt(prompt: str, separator: str = CLOSER_SEPARATOR) -> str:
  """The user prompt of training and evaluation: the prompt, then the RL closer.

  Args:
    prompt: the question, possibly followed by candidates or a hint.
    separator: between the prompt and the closer (see `CLOSER_SEPARATOR`).
  """
  # The closer's think tags are the only ones: tags in the question or candidates become text.
  return neutralize(prompt.strip(), THINK_TAGS) + separator + RL_CLOSER


def neutralize_candidate(text: str) -> str:
  """Rewrites ``<candidate>``/``</candidate>`` inside a candidate as ``[candidate]``/``[/candidate]``
  so a candidate can never close its block early or open a new one (and the think tags as
  ``[think]``/``[/think]``)."""
  return neutralize(_CANDIDATE_TAG_RE.sub(lambda m: f"[{m.group(1)}candidate]", text), THINK_TAGS)


def _neutralize_response(text: str) -> str:
  return neutralize(_RESPONSE_TAG_RE.sub(lambda m: f"[{m.group(1)}response]", text), THINK_TAGS)


def candidate_block(candidate: str) -> str:
  """One ``<candidate>`` block (the candidate neutralised)."""
  return "<candidate>\n" + neutralize_candidate(candidate) + "\n</candidate>"


def bcq_prompt(question: str, candidates: tuple[str, str]) -> str:
  """Binary-choice question: the question, then one correct and one wrong candidate.

  Args:
    question: the question (format instructions already stripped).
    candidates: ``(c1, c2)`` in the order to show them (the caller shuffles).

  Returns:
    ``question + BCQ_INTRO + "\\n" + block(c1) + "\\n" + block(c2)`` (no closer).
  """
  c1, c2 = candidates
  return question + BCQ_INTRO + "\n" + candidate_block(c1) + "\n" + candidate_block(c2)


def format_wrong_answers(wrong_answers: list[str | None]) -> str:
  """The NCQ answer list: parsed answers deduplicated in order of first appearance, each written
  ``\\boxed{a}``, joined by ``", "``; unparseable (None) answers are skipped; ``(none)`` if empty."""
  seen = []
  for answer in wrong_answers:
    if answer is not None and answer not in seen:
      seen.append(answer)
  if not seen:
    return NO_ANSWERS
  return ", ".join("\\boxed{" + neutralize_candidate(a) + "}" for a in seen)


def ncq_prompt(question: str, wrong_answers: list[str | None], candidates: list[str]) -> str:
  """Negative-candidates question: the wrong answers, then every wrong rollout's candidate.

  Args:
    question: the question (format instructions already stripped).
    wrong_answers: the parsed final answer of each wrong rollout (None when none parses).
    candidates: one (compressed) candidate per wrong rollout.

  Returns:
    ``question + NCQ head + answers + NCQ tail`` then the blocks joined by newlines (no closer).
  """
  if not candidates:
    raise ValueError("an NCQ needs at least one wrong rollout")
  blocks = "\n".join(candidate_block(c) for c in candidates)
  return (question + NCQ_INTRO_HEAD + format_wrong_answers(wrong_answers) + NCQ_INTRO_TAIL
          + blocks)


def compression_prompt(response: str) -> str:
  """The teacher prompt that compresses one response (its own ``<response>`` tags neutralised)."""
  return COMPRESSION_TEMPLATE_HEAD + _neutralize_response(response) + RESPONSE_TAIL


def extract_summary(output: str) -> str:
  """The candidate text from a compression output.

  The content of the last complete ``<summary>...</summary>`` after any ``<think>`` part; if the
  output was cut inside an open ``<summary>``, the text after it; without tags (Decision), the
  output with its ``<think>`` part removed.
  """
  text = strip_think(output)
  summaries = _SUMMARY_RE.findall(text)
  if summaries:
    return summaries[-1].strip()
  opens = list(_SUMMARY_OPEN_RE.finditer(text))
  if opens:
    return text[opens[-1].end():].strip()
  return text.strip()


def hint_prompt(response: str) -> str:
  """The teacher prompt that turns one correct teacher rollout into an answer-free hint."""
  return HINT_TEMPLATE_HEAD + _neutralize_response(response) + RESPONSE_TAIL


def hinted_question(question: str, hint: str) -> str:
  """The Hint baseline's question: ``question + "\\n<hint> {hint} </hint>"``."""
  return question + "\n<hint> " + _HINT_TAG_RE.sub(lambda m: f"[{m.group(1)}hint]",
                                                    neutralize(hint, THINK_TAGS)) + " </hint>"
