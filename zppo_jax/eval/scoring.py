"""Scores responses: each mode's deterministic parser first, the judge only when it cannot decide.

The final answer is the last ``\\boxed{}`` outside ``<think>`` (`zppo_jax.rewards.extract_answer`).
Per mode (see `items.Mode`):
  * CHOICE: the answer must name one option (letter or full text); wrong letter = wrong.
  * MATH: graded with the reward's grader (math-verify equivalence, degree/percent retry) in a
    process pool with a hard per-item timeout; a free-form gold that does not match goes to the
    judge.
  * NUMERIC: one number, equal up to the item's decimals or a relative tolerance.
  * EXACT: normalised string equality.
  * ANLS, OCR: the benchmarks' own similarity metrics; without a box, the text after the reasoning
    block is the answer (whole-page transcriptions are rarely boxed).
  * JUDGE: equivalence first (a match is correct), then the judge.
  * RUBRIC: the judge only.
When the parser cannot read an answer (no box, not an option, not a number), the judge decides;
with no judge configured the item is wrong and its path says ``no_judge``. Every `Verdict` records
the path that decided it.
"""
from collections.abc import Sequence

from zppo_jax.eval import metrics
from zppo_jax.eval.items import EvalItem, EvalPrompt, Mode, Verdict, format_choices
from zppo_jax.rewards import (GradeItem, GradingPool, Judge, JudgeItem, extract_answer,
                              judge_prompt, needs_judge, parse_verdict, strip_think)


class GeneratorJudge:
  """A `Judge` backed by a generator, e.g. the teacher loaded in process (`SamplerGenerator` with
  temperature 0 and 512 new tokens): the shared judge prompt, the strict-JSON verdict contract.

  Args:
    generator: anything with ``generate(list[EvalPrompt]) -> list[str]``.
  """

  def __init__(self, generator):
    self.generator = generator
    self.malformed = 0

  def verdicts(self, items: Sequence[JudgeItem]) -> list[bool]:
    if not items:
      return []
    prompts = [EvalPrompt(f"judge/{k}", ({"role": "user", "content": judge_prompt(item)},))
               for k, item in enumerate(items)]
    replies = self.generator.generate(prompts)
    verdicts = [parse_verdict(r) for r in replies]
    self.malformed += sum(not v and not _says_wrong(r) for v, r in zip(verdicts, replies))
    return verdicts


def _says_wrong(reply: str) -> bool:
  """Whether a reply is the well-formed "wrong" verdict (to count malformed replies apart)."""
  return parse_verdict(reply.replace('"wrong"', '"correct"', 1)) if '"wrong"' in reply else False


class Scorer:
  """Turns (item, response) pairs into verdicts.

  Args:
    judge: asked about items the parsers cannot decide; None scores those 0 (path ``no_judge``).
    pool: where math grading runs (hard per-item timeouts); made on first use when None.
    rel_tol: relative tolerance of NUMERIC items without a fixed number of decimals.
  """

  def __init__(self, judge: Judge | None = None, pool: GradingPool | None = None,
               rel_tol: float = 1e-4):
    self.judge = judge
    self._pool = pool
    self._own_pool = pool is None
    self.rel_tol = rel_tol

  @property
  def pool(self) -> GradingPool:
    if self._pool is None:
      self._pool = GradingPool(num_workers=1)
    return self._pool

  def close(self) -> None:
    """Stops the grading pool if this scorer made it."""
    if self._own_pool and self._pool is not None:
      self._pool.close()
      self._pool = None

  def score(self, items: Sequence[EvalItem], responses: Sequence[str]) -> list[Verdict]:
    """Scores a batch; one judge call covers every undecided item of it.

    Args:
      items: the questions.
      responses: one full model response per item.

    Returns:
      One verdict per item, in order.
    """
    if len(items) != len(responses):
      raise ValueError(f"{len(items)} items but {len(responses)} responses")
    answers = [extract_answer(r) for r in responses]
    verdicts: list[Verdict | None] = [None] * len(items)
    math_rows = [k for k, it in enumerate(items)
                 if it.mode in (Mode.MATH, Mode.JUDGE) and answers[k] is not None]
    math_scores = dict(zip(math_rows, self.pool.grade_many(
        [GradeItem(responses[k], str(items[k].gold)) for k in math_rows]))) if math_rows else {}
    ask: list[int] = []
    for k, (item, response, answer) in enumerate(zip(items, responses, answers)):
      decided = self._parse(item, response, answer, math_scores.get(k))
      if decided is None:
        ask.append(k)
      else:
        score, path, extracted = decided
        verdicts[k] = Verdict(item.uid, score, path, extracted, item.gold, response)
    if ask and self.judge is not None:
      judged = self.judge.verdicts([_judge_item(items[k], responses[k]) for k in ask])
      if len(judged) != len(ask):
        raise RuntimeError(f"judge returned {len(judged)} verdicts for {len(ask)} items")
      for k, ok in zip(ask, judged):
        verdicts[k] = Verdict(items[k].uid, 1.0 if ok else 0.0, "judge", answers[k], items[k].gold,
                              responses[k])
    for k in ask:
      if verdicts[k] is None:
        verdicts[k] = Verdict(items[k].uid, 0.0, "no_judge", answers[k], items[k].gold,
                              responses[k])
    return verdicts

  def _parse(self, item: EvalItem, response: str, answer: str | None,
             math_score: float | None) -> tuple[float, str, str | None] | None:
    """The deterministic verdict ``(score, path, extracted)``, or None to ask the judge."""
    mode = item.mode
    if mode is Mode.RUBRIC:
      return None
    if mode in (Mode.ANLS, Mode.OCR):
      unboxed = answer is None
      text = metrics.unwrap_latex(strip_think(response) if unboxed else answer)
      suffix = "_unboxed" if unboxed else ""
      if mode is Mode.ANLS:
        return metrics.anls(text, list(item.gold)), f"parser:anls{suffix}", text
      scored = metrics.ocrbench_v2_score(text, list(item.gold), item.meta.get("type", ""),
                                         item.meta.get("bbox"))
      return None if scored is None else (scored[0], f"parser:ocr_{scored[1]}{suffix}", text)
    if answer is None:
      return None
    if mode is Mode.CHOICE:
      letter = metrics.match_choice(answer, item.choices)
      return None if letter is None else (float(letter == item.gold), "parser:choice", letter)
    if mode is Mode.MATH:
      if math_score == 0.0 and needs_judge(str(item.gold)):
        return None
      return math_score, "parser:math", answer
    if mode is Mode.JUDGE:
      return (1.0, "parser:match", answer) if math_score == 1.0 else None
    if mode is Mode.NUMERIC:
      value, gold = metrics.parse_number(answer), metrics.parse_number(str(item.gold))
      if gold is None:
        raise ValueError(f"item {item.uid}: numeric gold {item.gold!r} is not a number")
      if value is None:
        return None  # Not a plain number (an expression, words): the judge reads it.
      ok = metrics.numbers_match(value, gold, precision=item.meta.get("precision"),
                                 rel_tol=self.rel_tol, abs_tol=item.meta.get("abs_tol", 1e-9))
      return float(ok), "parser:numeric", answer
    if mode is Mode.EXACT:
      ok = metrics.normalize_text(answer) == metrics.normalize_text(str(item.gold))
      return float(ok), "parser:exact", answer
    raise ValueError(f"item {item.uid}: unknown mode {mode}")


def _judge_item(item: EvalItem, response: str) -> JudgeItem:
  """What the judge sees: the question (with its options), the gold answer, the final text."""
  final = strip_think(response).strip()
  question = item.context + "\n\n" + item.question if item.context else item.question
  if item.choices:
    question = f"{question}\n{format_choices(item.choices)}"
  gold = item.gold
  if item.mode is Mode.CHOICE and item.choices:
    gold = f"{item.gold}. {item.choices[ord(item.gold) - ord('A')]}"
  elif item.mode is Mode.RUBRIC:
    turns = "\n".join(f"[{role}] {text}" for role, text in item.history)
    question = (f"{turns}\n[user] {item.question}\n\nAbout the assistant's response to this "
                f"conversation: {item.meta['target_question']}")
    gold = f"The answer to that question is {item.gold}."
  elif isinstance(gold, (list, tuple)):
    gold = " OR ".join(str(g) for g in gold)
  return JudgeItem(question=question, gold=str(gold), response=final)
