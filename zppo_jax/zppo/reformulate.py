"""Turning a step's hard questions into BCQ / NCQ prompts (shared/ZPPO_SPEC.md §2 steps 3-6).

The flow for one step, in the paper's symbols:
  * X_hard = {x : r̄_x < τ}, new and replayed questions together.
  * Pre-cap: rank X_hard by ascending r̄_x (hardest first; ties keep input order) and keep the first
    ρ_aug·|X_new| among the questions that admit a reformulation of the method (all with NCQ; a
    correct teacher rollout for BCQ only, Hint and Prefix).
  * Candidates: BCQ when there is a correct teacher rollout and a wrong student rollout (one of each
    picked uniformly at random, both compressed, order shuffled); NCQ always (every wrong student
    rollout compressed, their parsed answers listed). Teacher all wrong -> NCQ only.
  * Post-cap: BCQ and NCQ share one pool of ρ_aug·|X_new| prompts; walk the kept questions hardest
    first adding BCQ then NCQ and stop at the first instance that would overflow.

Compression is a teacher job, so building is two-phase (the post-cap is decided first, so only the
responses of surviving instances are compressed):

    plan = plan_reformulations(groups, num_new, config, random.Random(seed))
    outputs = teacher.generate(plan.compression_prompts)   # may be empty
    reformulations = plan.finalize(outputs)

or in one call with a callable: ``build_reformulations(groups, num_new, config, rng, compress)``.
"""
import dataclasses
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from zppo_jax.rewards.extract import extract_answer, strip_think
from zppo_jax.zppo import templates

Kind = Literal["bcq", "ncq", "hint", "prefix"]


@dataclasses.dataclass(frozen=True)
class Rollout:
  """One sampled response.

  Attributes:
    text: the response text.
    reward: its reward (1.0 correct, 0.0 wrong); correct means ``reward > 0.5``.
    answer: its parsed final answer (None when none parses); `Rollout.of` extracts it.
    token_ids: its token ids (needed only by the Prefix baseline).
  """
  text: str
  reward: float
  answer: str | None = None
  token_ids: tuple[int, ...] | None = None

  @property
  def correct(self) -> bool:
    return self.reward > 0.5

  @classmethod
  def of(cls, text: str, reward: float, token_ids: Sequence[int] | None = None) -> "Rollout":
    """A rollout with its answer extracted by `zppo_jax.rewards.extract_answer`."""
    return cls(text, float(reward), extract_answer(text),
               tuple(token_ids) if token_ids is not None else None)


@dataclasses.dataclass(frozen=True)
class QuestionGroup:
  """One question of the step with its plain rollouts.

  Attributes:
    qid: a stable question id.
    question: the question text (upstream format instructions are stripped here).
    gold: the gold answer.
    plain_accuracy: r̄_x, the mean reward of the plain student rollouts.
    student_rollouts: the G_S plain student rollouts.
    teacher_rollouts: the G_T teacher rollouts (sampled for hard questions only).
    images: the question's images (passed through untouched).
    replayed: whether the question came from the replay buffer.
    choices: multiple-choice options, passed through to the reformulations.
  """
  qid: str
  question: str
  gold: str
  plain_accuracy: float
  student_rollouts: tuple[Rollout, ...]
  teacher_rollouts: tuple[Rollout, ...] = ()
  images: tuple[Any, ...] = ()
  replayed: bool = False
  choices: Any = None


@dataclasses.dataclass(frozen=True)
class ReformulationConfig:
  """The reformulation rules; every paper "Decision" is a field with the spec's default.

  The fields carry the names of the run config's ``rl`` group (`from_config`), and ``bcq`` /
  ``ncq`` those of the method's flags (`zppo_jax.train.config.MethodFlags`).

  Attributes:
    tau: τ, a question is hard when r̄_x < τ.
    aug_ratio: ρ_aug; the pre-cap (questions) and the post-cap (prompts) are ⌊ρ_aug·|X_new|⌋.
    bcq: build BCQ prompts.
    ncq: build NCQ prompts.
    compress: compress candidates with the teacher (§4); off = the raw rollout without its
      ``<think>`` part, truncated to ``raw_candidate_max_tokens``.
    raw_candidate_max_tokens: the truncation length when compression is off.
    compress_max_tokens: the teacher's budget for one compression (for the trainer).
    hint_max_tokens: the teacher's budget for one Hint baseline hint (for the trainer).
    cache_teacher_rollouts: keep correct teacher rollouts per question across visits (an option
      beyond the paper, off). The teacher is sampled on every visit either way; when on, the
      trainer's `zppo_jax.zppo.teacher_cache.TeacherRolloutCache` adds the correct rollouts of
      earlier visits to the fresh ones (bounded per question and in questions).
    prefix_fraction: the Prefix baseline forces this fraction of a correct teacher rollout.
    strip_format_instructions: remove upstream format instructions from questions.
  """
  tau: float = 0.5
  aug_ratio: float = 0.25
  bcq: bool = True
  ncq: bool = True
  compress: bool = True
  raw_candidate_max_tokens: int = 512
  compress_max_tokens: int = templates.COMPRESSION_MAX_NEW_TOKENS
  hint_max_tokens: int = 512
  cache_teacher_rollouts: bool = False
  prefix_fraction: float = 0.4
  strip_format_instructions: bool = True

  def __post_init__(self):
    if not 0.0 <= self.aug_ratio:
      raise ValueError(f"aug_ratio must be >= 0, got {self.aug_ratio}")
    if not 0.0 < self.prefix_fraction <= 1.0:
      raise ValueError(f"prefix_fraction must be in (0, 1], got {self.prefix_fraction}")

  @classmethod
  def from_config(cls, rl: Mapping[str, Any], *, bcq: bool, ncq: bool) -> "ReformulationConfig":
    """The rules of a run: every field is the ``rl`` config field of the same name.

    Args:
      rl: the run config's ``rl`` group (`zppo_jax.train.config.base_config`).
      bcq, ncq: the method's flags (not ``rl`` fields); ``strip_format_instructions`` keeps
        its default (always on in a run).

    Raises:
      KeyError: a field missing from ``rl``.
    """
    own = {"bcq", "ncq", "strip_format_instructions"}
    return cls(bcq=bcq, ncq=ncq,
               **{f.name: rl[f.name] for f in dataclasses.fields(cls) if f.name not in own})

  def cap(self, num_new: int) -> int:
    """⌊ρ_aug·|X_new|⌋ (a tiny epsilon so 0.25·384 is 96, not 95 by rounding)."""
    return int(math.floor(self.aug_ratio * num_new + 1e-9))


@dataclasses.dataclass(frozen=True)
class Reformulation:
  """One reformulated prompt to roll the student out on, rewarded against the original gold.

  Attributes:
    qid: the question's id (groups are keyed by (qid, kind)).
    kind: "bcq", "ncq", "hint" or "prefix".
    prompt_text: the full user prompt, RL closer included.
    gold: the original gold answer.
    images: the question's images.
    choices: multiple-choice options, if any.
    plain_accuracy: r̄_x of the question.
    replayed: whether the question came from the replay buffer.
    meta: diagnostics. BCQ: ``correct_answer``, ``wrong_answer`` (parsed answers of the two
      picked rollouts), ``correct_first``. NCQ: ``wrong_answers`` (deduplicated). Prefix:
      ``prefix_token_ids`` (the forced tokens, masked out of the loss).
  """
  qid: str
  kind: Kind
  prompt_text: str
  gold: str
  images: tuple[Any, ...] = ()
  choices: Any = None
  plain_accuracy: float = 0.0
  replayed: bool = False
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def select_hard(groups: Sequence[QuestionGroup], num_new: int, config: ReformulationConfig,
                admits: Callable[[QuestionGroup], bool] = lambda g: True
                ) -> list[QuestionGroup]:
  """X_hard ranked hardest first (stable) and pre-capped to ⌊ρ_aug·|X_new|⌋ questions among
  those that `admits` (App. C: a question that admits no reformulation of the method takes no
  slot)."""
  hard = [g for g in groups if g.plain_accuracy < config.tau and admits(g)]
  hard.sort(key=lambda g: g.plain_accuracy)  # Stable: ties keep the input order.
  return hard[:config.cap(num_new)]


def _has_correct_teacher(g: QuestionGroup) -> bool:
  return any(r.correct for r in g.teacher_rollouts)


def admits_bcq_or_ncq(config: ReformulationConfig) -> Callable[[QuestionGroup], bool]:
  """Whether a hard question admits a reformulation: with NCQ on, every one does (it has a wrong
  rollout); with BCQ only, one with a correct teacher and a wrong student rollout."""
  if config.ncq:
    return lambda g: True
  return lambda g: _has_correct_teacher(g) and any(not r.correct for r in g.student_rollouts)


def _words_truncate(text: str, max_tokens: int) -> str:
  """Default truncation when compression is off: whitespace-separated words stand in for tokens."""
  words = text.split()
  return text if len(words) <= max_tokens else " ".join(words[:max_tokens])


@dataclasses.dataclass
class _Pending:
  """An instance that survived the post-cap, waiting for its candidates."""
  group: QuestionGroup
  kind: Kind
  rollouts: list[Rollout]  # The rollouts whose candidates the prompt shows, in display order.
  meta: dict[str, Any]


@dataclasses.dataclass
class ReformulationPlan:
  """The instances of one step, before their candidates are compressed.

  Attributes:
    compression_prompts: the teacher prompts to run (one per distinct response text, in order);
      empty when compression is off.
    num_hard: |X_hard| before the pre-cap.
    num_kept: questions after the pre-cap.
    num_dropped: instances dropped by the post-cap.
    num_skipped: kept questions with no wrong student rollout (inconsistent input: a hard
      question has one), which get no reformulation.
  """
  pending: list[_Pending]
  config: ReformulationConfig
  compression_prompts: list[str]
  num_hard: int
  num_kept: int
  num_dropped: int
  num_skipped: int = 0
  truncate: Callable[[str, int], str] = _words_truncate
  _texts: list[str] = dataclasses.field(default_factory=list)

  def finalize(self, compressed_outputs: Sequence[str] = ()) -> list[Reformulation]:
    """Builds the prompts from the teacher's compression outputs.

    Args:
      compressed_outputs: the teacher's raw outputs, one per `compression_prompts` entry (in that
        order); ignored when compression is off.

    Returns:
      The reformulations, hardest question first, BCQ before NCQ.

    Raises:
      ValueError: the number of outputs does not match the number of prompts.
    """
    if self.config.compress:
      if len(compressed_outputs) != len(self.compression_prompts):
        raise ValueError(f"expected {len(self.compression_prompts)} compression outputs, got "
                         f"{len(compressed_outputs)}")
      summary = {t: templates.extract_summary(o) for t, o in zip(self._texts, compressed_outputs)}
      candidate = lambda r: summary[r.text]  # noqa: E731
    else:
      max_tokens = self.config.raw_candidate_max_tokens
      candidate = lambda r: self.truncate(strip_think(r.text).strip(), max_tokens)  # noqa: E731
    out = []
    for item in self.pending:
      g = item.group
      question = _clean_question(g.question, self.config)
      candidates = [candidate(r) for r in item.rollouts]
      if item.kind == "bcq":
        body = templates.bcq_prompt(question, (candidates[0], candidates[1]))
      else:
        body = templates.ncq_prompt(question, [r.answer for r in item.rollouts], candidates)
      out.append(Reformulation(g.qid, item.kind, templates.rl_prompt(body), g.gold, g.images,
                               g.choices, g.plain_accuracy, g.replayed, item.meta))
    return out


def _clean_question(question: str, config: ReformulationConfig) -> str:
  if config.strip_format_instructions:
    return templates.strip_format_instructions(question)
  return question.strip()


def plan_reformulations(groups: Sequence[QuestionGroup], num_new: int,
                        config: ReformulationConfig, rng: random.Random,
                        truncate: Callable[[str, int], str] = _words_truncate
                        ) -> ReformulationPlan:
  """Phase one: pre-cap, candidate picks, post-cap, and the compression prompts to run.

  Args:
    groups: every question of the step (new and replayed), with plain rollouts and, for the
      hard ones, teacher rollouts.
    num_new: |X_new|, the number of new (dataset) prompts of the step; the caps are
      ⌊ρ_aug·|X_new|⌋.
    config: the rules.
    rng: the step's seeded RNG (BCQ picks and shuffles draw from it, in output order).
    truncate: ``(text, max_tokens) -> text`` used when compression is off (default: words; pass
      a tokenizer-based one).

  Returns:
    The plan; call `ReformulationPlan.finalize` with the teacher's outputs.
  """
  hard = [g for g in groups if g.plain_accuracy < config.tau]
  kept = select_hard(groups, num_new, config, admits_bcq_or_ncq(config))
  pool = config.cap(num_new)
  pending: list[_Pending] = []
  dropped = skipped = 0
  full = False
  for g in kept:
    wrong = [r for r in g.student_rollouts if not r.correct]
    skipped += not wrong
    right_teacher = [r for r in g.teacher_rollouts if r.correct]
    instances: list[Kind] = []
    if config.bcq and wrong and right_teacher:
      instances.append("bcq")
    if config.ncq and wrong:
      instances.append("ncq")
    for kind in instances:
      if full or len(pending) >= pool:
        full = True  # Stop at the first instance that would overflow; count the rest as dropped.
        dropped += 1
        continue
      if kind == "bcq":
        good, bad = rng.choice(right_teacher), rng.choice(wrong)
        pair = [good, bad]
        rng.shuffle(pair)
        meta = {"correct_answer": good.answer, "wrong_answer": bad.answer,
                "correct_first": pair[0] is good}
        pending.append(_Pending(g, "bcq", pair, meta))
      else:
        answers = []
        for r in wrong:
          if r.answer is not None and r.answer not in answers:
            answers.append(r.answer)
        pending.append(_Pending(g, "ncq", wrong, {"wrong_answers": answers}))
  texts: list[str] = []
  if config.compress:
    seen = set()
    for item in pending:
      for r in item.rollouts:
        if r.text not in seen:
          seen.add(r.text)
          texts.append(r.text)
  prompts = [templates.compression_prompt(t) for t in texts]
  return ReformulationPlan(pending, config, prompts, len(hard), len(kept), dropped, skipped,
                           truncate, texts)


def build_reformulations(groups: Sequence[QuestionGroup], num_new: int,
                         config: ReformulationConfig, rng: random.Random,
                         compress: Callable[[list[str]], list[str]] | None = None,
                         truncate: Callable[[str, int], str] = _words_truncate
                         ) -> list[Reformulation]:
  """Both phases in one call.

  Args:
    groups, num_new, config, rng, truncate: as in `plan_reformulations`.
    compress: the teacher, ``prompts -> outputs``; required when ``config.compress``.

  Returns:
    The ordered reformulations.
  """
  plan = plan_reformulations(groups, num_new, config, rng, truncate)
  if config.compress:
    if compress is None:
      raise ValueError("config.compress is on: pass the teacher as `compress`")
    return plan.finalize(list(compress(plan.compression_prompts)) if plan.compression_prompts
                         else [])
  return plan.finalize()


@dataclasses.dataclass
class HintPlan:
  """The Hint baseline's instances: one hint prompt per capped hard question with a correct
  teacher rollout.

  Attributes:
    hint_prompts: the teacher prompts to run, one per instance, in order.
  """
  groups: list[QuestionGroup]
  config: ReformulationConfig
  hint_prompts: list[str]

  def finalize(self, hint_outputs: Sequence[str]) -> list[Reformulation]:
    """Builds ``question + "\\n<hint> {hint} </hint>"`` prompts from the teacher's outputs (their
    ``<think>`` part removed)."""
    if len(hint_outputs) != len(self.hint_prompts):
      raise ValueError(f"expected {len(self.hint_prompts)} hint outputs, got "
                       f"{len(hint_outputs)}")
    out = []
    for g, output in zip(self.groups, hint_outputs):
      hint = strip_think(output).strip()
      body = templates.hinted_question(_clean_question(g.question, self.config), hint)
      out.append(Reformulation(g.qid, "hint", templates.rl_prompt(body), g.gold, g.images,
                               g.choices, g.plain_accuracy, g.replayed, {"hint": hint}))
    return out


def plan_hints(groups: Sequence[QuestionGroup], num_new: int, config: ReformulationConfig,
               rng: random.Random) -> HintPlan:
  """Phase one of the Hint baseline: on the hard set pre-capped among the questions with a correct
  teacher rollout (the others take no slot), pick one per question uniformly at random."""
  chosen, prompts = [], []
  for g in select_hard(groups, num_new, config, _has_correct_teacher):
    right = [r for r in g.teacher_rollouts if r.correct]
    if right:
      chosen.append(g)
      prompts.append(templates.hint_prompt(rng.choice(right).text))
  return HintPlan(chosen, config, prompts)


def prefix_length(num_tokens: int, fraction: float) -> int:
  """How many leading tokens the Prefix baseline forces: ⌊fraction·n⌋."""
  return int(math.floor(fraction * num_tokens + 1e-9))


def prefix_loss_mask(num_prefix: int, num_response: int) -> list[int]:
  """Loss mask over a response whose first ``num_prefix`` tokens are the forced teacher prefix.

  Args:
    num_prefix: forced tokens at the start of the response.
    num_response: total response tokens (prefix + the student's continuation).

  Returns:
    int[num_response]: 0 on the prefix (kept out of the loss), 1 on the student's tokens.
  """
  if not 0 <= num_prefix <= num_response:
    raise ValueError(f"prefix of {num_prefix} tokens does not fit a {num_response}-token response")
  return [0] * num_prefix + [1] * (num_response - num_prefix)


def build_prefixes(groups: Sequence[QuestionGroup], num_new: int, config: ReformulationConfig,
                   rng: random.Random) -> list[Reformulation]:
  """The Prefix baseline ("GRPO + teacher response"): on the hard set pre-capped among the
  questions with a correct teacher rollout, one correct
  teacher rollout per question (picked at random), whose first ⌊0.4·n⌋ tokens become a shared
  forced prefix of the student's G_S continuations. The prefix ids are in
  ``meta["prefix_token_ids"]``; mask them out of the loss with `prefix_loss_mask`.

  Raises:
    ValueError: a picked teacher rollout has no ``token_ids`` (naming the question).
  """
  out = []
  for g in select_hard(groups, num_new, config, _has_correct_teacher):
    pick = rng.choice([r for r in g.teacher_rollouts if r.correct])
    if pick.token_ids is None:
      raise ValueError(f"question {g.qid!r}: the Prefix baseline needs teacher token_ids")
    n = prefix_length(len(pick.token_ids), config.prefix_fraction)
    body = _clean_question(g.question, config)
    out.append(Reformulation(g.qid, "prefix", templates.rl_prompt(body), g.gold, g.images,
                             g.choices, g.plain_accuracy, g.replayed,
                             {"prefix_token_ids": tuple(pick.token_ids[:n])}))
  return out
