"""The trainer's side of the ZPPO core: prompts, reformulations, advantages and the buffer refresh.

The rules live in `zppo_jax.zppo` (templates, reformulation, replay buffer) and
`zppo_jax.rl.advantages`; this module turns the loop's `Group`s into their inputs and their
outputs back into rollout specs and metrics.

Images: a record's `images` go with every prompt made from it. With a multimodal student
(`vision` set), the plain prompt and each BCQ / NCQ / hint / prefix prompt of the question is an
`ImagePrompt` holding the question's images, so a reformulated prompt keeps its question's images.
"""
from __future__ import annotations

import functools
import random
from typing import Callable, Sequence

import jax
import numpy as np

from zppo_jax.data import packing
# The user turn of a plain prompt (format instructions stripped, RL closer appended): the same
# function the data pipelines encode records with.
from zppo_jax.data.generic_builder import default_user_text as user_text
from zppo_jax.data.prompts import encode_prompt
from zppo_jax.rl.advantages import compute_advantages
from zppo_jax.train.config import MethodFlags
from zppo_jax.train.groups import Group, RolloutSpec
from zppo_jax.zppo import reformulate, templates
from zppo_jax.zppo.diagnostics import step_diagnostics
from zppo_jax.zppo.replay_buffer import ReplayBuffer

def prompt_ids(tokenizer, question: str, images=(), vision=None, sample="?") -> list[int]:
  """The plain prompt's ids (an `ImagePrompt` when the question has images)."""
  return encode_prompt(tokenizer, user_text(question), images, vision, sample)


def record_prompt(tokenizer, record: dict, vision=None) -> list[int]:
  """The plain prompt of a record, with its images when the model has a vision tower.

  Raises:
    ValueError: naming the record, when it has images and the model has none, or an image is
      unusable (records read through `data.train_data` had those rejected already).
  """
  if "prompt" in record:   # made by the data pipeline (`data.train_data`)
    return record["prompt"]
  return prompt_ids(tokenizer, record["question"], record.get("images") or (), vision,
                    record["id"])


def strip_record(record: dict) -> dict:
  """The question as the buffer stores it: everything but the tokenised prompt."""
  return {k: v for k, v in record.items() if k not in ("prompt_ids", "prompt")}


def make_buffer(config) -> ReplayBuffer:
  """The replay buffer, partitioned over the JAX processes of a multi-host run."""
  return ReplayBuffer(config.rl.buffer_capacity, config.rl.tau,
                      num_processes=jax.process_count(), process_index=jax.process_index())


def question_groups(plain: Sequence[Group], teacher: Sequence[Group], num_new: int
                    ) -> list[reformulate.QuestionGroup]:
  """The core's view of the step: plain rollouts, and teacher rollouts for the hard ones."""
  by_qid = {g.qid: g for g in teacher}
  out = []
  for i, g in enumerate(plain):
    t = by_qid.get(g.qid)
    out.append(reformulate.QuestionGroup(
        qid=g.qid, question=g.record["question"], gold=g.record["answer"],
        plain_accuracy=g.accuracy,
        student_rollouts=tuple(reformulate.Rollout.of(x, r) for x, r in zip(g.texts, g.rewards)),
        teacher_rollouts=() if t is None else tuple(
            reformulate.Rollout.of(x, r, c.tokens)
            for x, r, c in zip(t.texts, t.rewards, t.completions)),
        images=tuple(g.record.get("images") or ()), replayed=i >= num_new,
        choices=g.record.get("choices")))
  return out


def build_specs(plain: Sequence[Group], teacher: Sequence[Group], num_new: int, config,
                flags: MethodFlags, rng: random.Random, tokenizer,
                teacher_text: Callable[[list[str], int], list[str]], vision=None
                ) -> tuple[list[RolloutSpec], dict[str, float], list[reformulate.Reformulation]]:
  """BCQ / NCQ, hint or prefix prompts of the step, as rollout specs, and their counts.

  Args:
    plain: the step's plain groups (new first, then replayed).
    teacher: teacher groups of the pre-capped hard questions.
    num_new: |X_new|.
    config, flags: the run config and its method flags.
    rng: the step's seeded RNG for the random picks.
    tokenizer: for prompts and for truncating raw candidates.
    teacher_text: ``(user prompts, max new tokens) -> outputs``, the teacher's text jobs.
    vision: the student's image preprocessing (None: text model); a reformulated prompt then
      carries its question's images.
  """
  rcfg = reformulate.ReformulationConfig.from_config(config.rl, bcq=flags.bcq, ncq=flags.ncq)
  groups = question_groups(plain, teacher, num_new)
  records = {g.qid: g.record for g in plain}
  metrics: dict[str, float] = {}
  if flags.bcq or flags.ncq:
    plan = reformulate.plan_reformulations(groups, num_new, rcfg, rng,
                                           truncate=_token_truncate(tokenizer))
    outputs = (teacher_text(plan.compression_prompts, rcfg.compress_max_tokens)
               if rcfg.compress and plan.compression_prompts else [])
    reforms = plan.finalize(outputs)
    metrics.update({"reform/dropped": plan.num_dropped,
                    "reform/compressions": len(plan.compression_prompts),
                    "reform/empty_candidates": sum(not templates.extract_summary(o)
                                                   for o in outputs)})
  elif flags.hint:
    plan = reformulate.plan_hints(groups, num_new, rcfg, rng)
    outputs = (teacher_text(plan.hint_prompts, rcfg.hint_max_tokens)
               if plan.hint_prompts else [])
    reforms = plan.finalize(outputs)
    metrics["reform/empty_candidates"] = sum(not r.meta["hint"] for r in reforms)
  else:
    reforms = reformulate.build_prefixes(groups, num_new, rcfg, rng)
  specs = []
  for r in reforms:
    ids = encode_prompt(tokenizer, r.prompt_text, r.images if vision is not None else (), vision,
                        sample=r.qid)
    specs.append(RolloutSpec(records[r.qid], r.kind, ids,
                             tuple(r.meta.get("prefix_token_ids", ())), dict(r.meta)))
  for kind in ("bcq", "ncq", "hint", "prefix"):
    metrics[f"reform/{kind}"] = sum(r.kind == kind for r in reforms)
  return specs, metrics, reforms


def _token_truncate(tokenizer) -> Callable[[str, int], str]:
  def truncate(text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])
  return truncate


def advantages(rewards: np.ndarray, group_ids: np.ndarray, norm: str) -> np.ndarray:
  """A per rollout (group baseline, then the batch normalisation), as float32[N] on the host.

  The arrays are padded to a power of two (padding masked out) so that a run compiles the
  advantage computation for a handful of sizes, not for every step's rollout count.
  """
  n = rewards.size
  if n == 0:
    return rewards
  size = packing.bucket(n)
  pad = lambda x: np.concatenate([x, np.zeros(size - n, x.dtype)])  # noqa: E731
  out = _advantages_jit(pad(rewards), pad(group_ids), pad(np.ones(n, bool)), norm)
  return np.asarray(out, np.float32)[:n]


@functools.partial(jax.jit, static_argnums=3)
def _advantages_jit(rewards, group_ids, mask, norm):
  return compute_advantages(rewards, group_ids, norm=norm, mask=mask,
                            num_groups=rewards.shape[0])


def diagnostics(plain: Sequence[Group], teacher: Sequence[Group], extra: Sequence[Group],
                reforms: Sequence[reformulate.Reformulation], num_new: int, tau: float
                ) -> dict[str, float]:
  """The paper's per-step diagnostics (`zppo.diagnostics`), prefixed `diag/`; NaN = nothing
  to count this step."""
  rollouts = {(g.qid, g.kind): [reformulate.Rollout.of(t, r) for t, r in zip(g.texts, g.rewards)]
              for g in extra}
  out = step_diagnostics(question_groups(plain, teacher, num_new), reforms, rollouts,
                         tau=tau)
  return {"diag/" + k: v for k, v in out.items()}


def refresh_buffer(buffer: ReplayBuffer, accuracy: dict[str, float], records: Sequence[dict],
                   totals: dict[str, float]) -> dict[str, float]:
  """Step 10: admit, graduate, evict; per-step and cumulative counts."""
  step = buffer.update(accuracy, questions={r["id"]: strip_record(r) for r in records})
  out = {"buffer/size": len(buffer)}
  for key, value in step.items():
    out[f"buffer/{key}"] = value
    totals[key] = totals.get(key, 0) + value
    out[f"buffer/{key}_total"] = totals[key]
  for name in ("admitted", "graduated"):
    for bin_key, count in buffer.counters[f"{name}_by_entry_accuracy"].items():
      out[f"buffer/{name}_bin/{bin_key}"] = count
  return out
