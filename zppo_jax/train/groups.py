"""Rollout groups: the unit the step loop samples, grades, reformulates and turns into advantages.

A rollout has two forms: sampled (a `Completion` in the `Group` of its `RolloutSpec`) and trained
(a `TrainSequence` with its advantage, which the student packs).

A group is G rollouts of one prompt; its kind says which prompt it was (the plain question, its BCQ
or NCQ reformulation, a hinted question, or a forced teacher prefix). Plain, BCQ and NCQ rollouts of
one question are separate groups with separate baselines (shared/ZPPO_SPEC.md §2.8).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Protocol, Sequence

import numpy as np

KINDS = ("plain", "bcq", "ncq", "hint", "prefix")


class Completion(NamedTuple):
  """One sampled response: token ids (stop token included if hit) and their log-probabilities."""
  tokens: list[int]
  logprobs: list[float]


class TextPolicy(Protocol):
  """What the loop needs from a model that samples (the student, the teacher)."""

  def generate(self, prompts: Sequence[Sequence[int]], *, num_samples: int, max_new_tokens: int,
               seed: int) -> list[list[Completion]]:
    """`num_samples` completions per prompt, reproducible for a fixed seed and parameters."""


def sample(sampler, sampling, prompts: Sequence[Sequence[int]], *, num_samples: int,
           max_new_tokens: int, seed: int, rows_per_call: int = 0) -> list[list[Completion]]:
  """`TextPolicy.generate` for a `sampling.Sampler` with its `SamplingParams` (student, teacher).

  The prompts are sampled in calls of at most `rows_per_call` rows (prompts × num_samples; at
  least one prompt per call; 0 = one call), so that a step's thousands of rollouts need the memory
  of one call's rows. The first call takes `seed`, call k > 0 a seed derived from (seed, k).
  """
  params = dataclasses.replace(sampling, num_samples=num_samples, max_new_tokens=max_new_tokens)
  per_call = max(1, rows_per_call // num_samples) if rows_per_call else max(1, len(prompts))
  completions = []
  for k, start in enumerate(range(0, len(prompts), per_call)):
    call_seed = seed if k == 0 else int(np.random.default_rng([seed, k]).integers(2**31 - 1))
    out = sampler.generate(prompts[start:start + per_call], params, seed=call_seed)
    completions += [[Completion(t, lp) for t, lp in zip(ts, lps)]
                    for ts, lps in zip(out.tokens, out.logprobs)]
  return completions


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
  """A prompt the loop rolls out G_S times.

  Attributes:
    record: the original question record (question, answer, ...), graded against.
    kind: one of KINDS.
    prompt_ids: the prompt's token ids (an `ImagePrompt` when the question has images).
    prefix: forced response prefix (Prefix baseline: a correct teacher rollout's first tokens),
      sampled from but kept out of the loss.
    extra: what the reformulation used (candidate answers, ...), for the diagnostics.
  """
  record: dict
  kind: str
  prompt_ids: list[int]
  prefix: tuple[int, ...] = ()
  extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrainSequence:
  """One rollout as the learner sees it (packed by `train.student.Student.pack`).

  Attributes:
    prompt_ids: the prompt.
    tokens: the response (for Prefix, forced prefix first).
    old_logprobs: log-probabilities of `tokens` under the sampling policy (temperature 1).
    advantage: its advantage A.
    loss_start: leading response tokens kept out of the loss.
  """
  prompt_ids: list[int]
  tokens: list[int]
  old_logprobs: list[float]
  advantage: float
  loss_start: int = 0


@dataclasses.dataclass
class Group:
  """G rollouts of one prompt.

  Attributes:
    qid: the id of the original question.
    kind: one of KINDS.
    record: the original question record (question, answer, ...).
    prompt_ids: the prompt's token ids (for `prefix`, the plain prompt without the prefix).
    completions: the rollouts; for `prefix` each starts with the forced prefix tokens.
    texts: decoded responses (prefix included).
    rewards: one 0/1 reward per rollout.
    loss_start: tokens at the start of each completion kept out of the loss (the forced prefix).
    extra: what the reformulation used (candidate answers, ...) for the diagnostics.
  """
  qid: str
  kind: str
  record: dict
  prompt_ids: list[int]
  completions: list[Completion]
  texts: list[str] = dataclasses.field(default_factory=list)
  rewards: list[float] = dataclasses.field(default_factory=list)
  loss_start: int = 0
  extra: dict = dataclasses.field(default_factory=dict)

  @property
  def accuracy(self) -> float:
    return float(np.mean(self.rewards)) if self.rewards else 0.0


def flatten(groups: Sequence[Group]) -> tuple[np.ndarray, np.ndarray]:
  """Rewards float32[N] and group ids int32[N] of every rollout, in group order."""
  rewards = np.asarray([r for g in groups for r in g.rewards], np.float32)
  ids = np.asarray([i for i, g in enumerate(groups) for _ in g.rewards], np.int32)
  return rewards, ids


def kind_metrics(groups: Sequence[Group], advantages: np.ndarray) -> dict[str, float]:
  """Mean reward, group count, zero-advantage fraction and response length per kind."""
  out, offset = {}, 0
  zero = {k: [] for k in KINDS}
  lengths = {k: [] for k in KINDS}
  rewards = {k: [] for k in KINDS}
  for g in groups:
    n = len(g.completions)
    zero[g.kind].append(bool(np.all(advantages[offset:offset + n] == 0.0)))
    lengths[g.kind].extend(len(c.tokens) for c in g.completions)
    rewards[g.kind].extend(g.rewards)
    offset += n
  for kind in KINDS:
    if zero[kind]:
      out[f"reward/{kind}"] = float(np.mean(rewards[kind]))
      out[f"groups/{kind}"] = len(zero[kind])
      out[f"zero_adv/{kind}"] = float(np.mean(zero[kind]))
      out[f"len/{kind}"] = float(np.mean(lengths[kind]))
      out[f"solved/{kind}"] = int(sum(any(g.rewards) for g in groups if g.kind == kind))
  return out
