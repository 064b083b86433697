"""The step time of a ZPPO run, per phase, from the compiled programs: worst case and typical.

One ZPPO step (shared/ZPPO_SPEC.md §2) runs its phases one after the other:

  student rollout      G_S rollouts of every prompt (|X_new| + |X_replay|);
  teacher rollout      G_T rollouts of every hard prompt (r̄_x < τ);
  teacher compression  one 512-token summary per candidate of a kept question (BCQ: one teacher and
                       one student rollout; NCQ: every wrong student rollout);
  BCQ/NCQ rollout      G_S rollouts of each reformulated prompt (at most ρ_aug·|X_new| of them);
  update               forward + backward + AdamW over every rollout's tokens.

Each sampling phase is priced with the roofline of `Program.seconds`: a prefill is compute-bound
(the model's FLOPs at peak), a decode step memory-bound (the chip's weights plus its rows' caches
at HBM bandwidth). Its rows are split into as few calls as fit in HBM: the per-row and per-prompt
bytes come from the compiled prefill and decode programs (what is not weights or resident state,
scaled linearly to other rows, prompt buckets and cache lengths), so a call may be larger than the
compiled one. Two things of the sampler set the decode cost, whatever the mean response length:
a call's `while_loop` runs until its *longest* row is done (rows that finished still take their
step), and attention reads every slot of the cache each step (static shapes), so a step streams
`cache_bytes_per_row(cfg, cache_len)` per row. The update is the compiled `train` program's
seconds per token times the step's tokens.

`Assumptions` holds what a step's data decide (response lengths, hard fraction, ...): `worst` is
the bound (every prompt hard, every response at the budget), `typical` the defaults of `zppo plan`.
The KV cache is in the compute dtype: the sampler has no FP8 KV cache.
"""
from __future__ import annotations

import argparse
import dataclasses
import math

from zppo_jax.plan import shapes
from zppo_jax.plan.programs import Program
from zppo_jax.plan.shapes import RunShape
from zppo_jax.plan.topology import Chip

# Tokens of the compression template around a response (shared/ZPPO_SPEC.md §4), rounded up.
COMPRESS_TEMPLATE_TOKENS = 256


@dataclasses.dataclass(frozen=True)
class Assumptions:
  """What a step's data decide, and the method's caps.

  Attributes:
    mean_response: new tokens of an average rollout (student and teacher).
    longest_response: decode steps of one sampling call: the loop runs until every row is done, so
      one long row holds the call.
    mean_prompt: tokens of an average plain prompt (image tokens included), for the update.
    hard_fraction: share of the step's prompts with r̄_x < τ (each gets G_T teacher rollouts).
    wrong_per_kept: wrong student rollouts of a kept hard question (NCQ compresses all of them).
    aug_prompts: ρ_aug·|X_new|, the BCQ + NCQ pool (both reformulations of a question take two).
    compress_tokens: tokens of a candidate: a compression's max new tokens (rl.compress_max_tokens).
    compress: whether the teacher compresses candidates (rl.compress).
  """
  mean_response: float
  longest_response: int
  mean_prompt: float
  hard_fraction: float
  wrong_per_kept: float
  aug_prompts: int
  compress_tokens: int
  compress: bool = True

  def describe(self) -> str:
    return (f"mean response {self.mean_response:,.0f}, longest per call "
            f"{self.longest_response:,}, mean prompt {self.mean_prompt:,.0f}, hard fraction "
            f"{self.hard_fraction:g}, wrong rollouts per kept question {self.wrong_per_kept:g}, "
            f"BCQ+NCQ pool {self.aug_prompts}, candidates of {self.compress_tokens} tokens"
            + ("" if self.compress else " (not compressed)"))


# The typical step's defaults. The spec (shared/ZPPO_SPEC.md §2, §9) gives the caps and the budget
# but no average length or hard fraction: these are this project's assumptions, each a flag.
TYPICAL = dict(
    # A third of the response budget, 4,096 of 12,288 tokens (assumption: the spec reports no mean
    # length); 0 stands for it.
    mean_response=0,
    # A quarter of the prompt bucket, 1,024 of 4,096 tokens: 256-1,280 image tokens (the paper's
    # pixel budget, one token per 32x32 block) and the question; 0 stands for it.
    mean_prompt=0,
    # ZPPO-77K keeps only MMFineReason questions a 4B model solves at most half the time, and the
    # 96 replayed questions were hard when buffered: half the step's prompts below τ (assumption).
    hard_fraction=0.5,
    # The pre-cap keeps the hardest first (ascending r̄): mostly 0 or 1 correct of G_S, so G_S - 1
    # wrong (7 of the paper's 8); 0 stands for it.
    wrong_per_kept=0.0,
)


def add_flags(parser: argparse.ArgumentParser) -> None:
  """`zppo plan`'s flags for the typical step (defaults `TYPICAL`)."""
  parser.add_argument("--mean-response", type=float, default=TYPICAL["mean_response"],
                      help="typical step: new tokens of an average rollout (0 = a third of the "
                           "budget)")
  parser.add_argument("--longest-response", type=int, default=0,
                      help="typical step: decode steps of a sampling call, i.e. its longest row "
                           "(0 = the budget: with hundreds of rows a call, one reaches it)")
  parser.add_argument("--mean-prompt", type=float, default=TYPICAL["mean_prompt"],
                      help="typical step: tokens of an average plain prompt (0 = a quarter of "
                           "the prompt bucket)")
  parser.add_argument("--hard-fraction", type=float, default=TYPICAL["hard_fraction"],
                      help="typical step: share of the prompts with group accuracy below tau")
  parser.add_argument("--wrong-per-kept", type=float, default=TYPICAL["wrong_per_kept"],
                      help="typical step: wrong student rollouts of a kept hard question "
                           "(0 = G_S - 1)")


def from_flags(args: argparse.Namespace, shape: RunShape, config) -> dict[str, Assumptions]:
  """{"worst-case": ..., "typical": ...} from `add_flags`' flags and the run config's caps."""
  aug = int(config.rl.aug_ratio * config.rl.batch_prompts)
  compress = int(config.rl.compress_max_tokens)
  if not 0 <= args.hard_fraction <= 1:
    raise ValueError(f"--hard-fraction {args.hard_fraction}: expected a share in [0, 1]")
  wrong = args.wrong_per_kept or shape.group - 1
  if not 0 < wrong <= shape.group:
    raise ValueError(f"--wrong-per-kept {wrong:g}: expected 0 < wrong <= G_S={shape.group}")
  longest = args.longest_response or shape.max_new
  mean = args.mean_response or shape.max_new / 3
  if not 0 < mean <= longest <= shape.max_new:
    raise ValueError(f"--mean-response {mean:g} / --longest-response {longest}: expected "
                     f"0 < mean <= longest <= max_new_tokens {shape.max_new}")
  prompt = args.mean_prompt or shape.prompt_len / 4
  if not 0 < prompt <= shape.prompt_len:
    raise ValueError(f"--mean-prompt {prompt:g}: expected 0 < mean <= the prompt bucket "
                     f"{shape.prompt_len}")
  typical = Assumptions(mean_response=mean, longest_response=longest, mean_prompt=prompt,
                        hard_fraction=args.hard_fraction, wrong_per_kept=wrong,
                        aug_prompts=aug, compress_tokens=compress,
                        compress=bool(config.rl.compress))
  return {"worst-case": worst(shape, aug, compress, typical.compress), "typical": typical}


def worst(shape: RunShape, aug_prompts: int, compress_tokens: int,
          compress: bool = True) -> Assumptions:
  """Every prompt hard and wrong on all G_S rollouts, every response and prompt at its bound."""
  return Assumptions(mean_response=shape.max_new, longest_response=shape.max_new,
                     mean_prompt=shape.prompt_len, hard_fraction=1.0,
                     wrong_per_kept=shape.group, aug_prompts=aug_prompts,
                     compress_tokens=compress_tokens, compress=compress)


@dataclasses.dataclass(frozen=True)
class Phase:
  """One phase's estimate: `rollouts` rows sampled in `calls` calls of `rows` rows (0: update)."""
  name: str
  seconds: float
  calls: int = 0
  rows: int = 0
  rollouts: int = 0


def _bytes_per_row(compiled: Program, weights: float) -> float:
  """Per-chip bytes one of its rows adds to a compiled sampling program (besides weights and
  what stays resident): the program's own memory shared over its rows."""
  return max(0.0, compiled.total - compiled.resident - weights) * compiled.chips / compiled.rows


def sampling(name: str, cfg, pre: Program, dec: Program, chip: Chip, *, rows: int, group: int,
             prompt_len: int, steps: int, compiled_prompt_len: int,
             compiled_cache_len: int) -> Phase:
  """`rows` rollouts (`rows / group` prompts of `prompt_len` tokens, `steps` decode steps a call)
  in as few calls as fit in HBM, priced with `Program.seconds`.

  Args:
    name: the phase's name.
    cfg: the sampled model's `ModelConfig`.
    pre, dec: its compiled prefill and decode programs (with their rows and resident bytes).
    chip: the TPU generation.
    rows: rollouts of the phase (all chips); group: samples per prompt.
    prompt_len: the calls' prompt bucket; steps: decode steps of one call.
    compiled_prompt_len, compiled_cache_len: the bucket and cache slots `pre`/`dec` were
      compiled for (their per-row bytes are scaled from those).

  Returns:
    The `Phase` (0 s when `rows` is 0).
  """
  if rows <= 0:
    return Phase(name, 0.0)
  chips, weights = dec.chips, pre.hbm_bytes   # a prefill streams the chip's weight copy once
  cache_len = prompt_len + steps
  cache_row = shapes.cache_bytes_per_row(cfg, cache_len)
  # Decode: per-row buffers and cache grow with the slots. Prefill: its per-prompt attention
  # scores [heads, L, S] grow with L * S, its rows' caches with S.
  dec_row = _bytes_per_row(dec, weights) * cache_len / compiled_cache_len
  compiled_row_cache = shapes.cache_bytes_per_row(cfg, compiled_cache_len)
  pre_prompt = max(0.0, _bytes_per_row(pre, weights) - compiled_row_cache) * group
  pre_row = pre_prompt * (prompt_len * cache_len) / (compiled_prompt_len * compiled_cache_len) \
      / group + cache_row
  room = dec.hbm - max(pre.resident, dec.resident) - weights
  fit = int(room // max(dec_row, pre_row)) * chips if room > 0 else 0
  fit -= fit % group
  if fit < group:
    return Phase(name, math.inf, 0, group, rows)
  calls = math.ceil(rows / fit)
  per_call = math.ceil(rows / calls / group) * group
  prompts = per_call // group
  prefill = dataclasses.replace(pre, hw_flops=shapes.forward_flops(cfg, prompts * prompt_len,
                                                                   prompt_len / 2),
                                hbm_bytes=weights)
  step = dataclasses.replace(dec, hw_flops=shapes.forward_flops(cfg, per_call, cache_len),
                             hbm_bytes=weights + per_call * cache_row / chips)
  return Phase(name, calls * (prefill.seconds(chip) + steps * step.seconds(chip)), calls,
               per_call, rows)


def step_phases(shape: RunShape, programs: dict[str, Program], chip: Chip,
                a: Assumptions) -> list[Phase]:
  """The phases of one step under `a`, from whichever programs were compiled.

  Args:
    shape: the run's shapes.
    programs: compiled programs by name ("train", "prefill", "decode", "t_prefill", "t_decode").
    chip: the TPU generation.
    a: the step's assumptions.

  Returns:
    One `Phase` per phase whose programs are present, in the trainer's order.
  """
  compiled_cache = shape.prompt_len + shape.max_new
  hard = round(a.hard_fraction * shape.prompts)
  both = min(hard, a.aug_prompts // 2)            # kept questions with BCQ and NCQ
  reformulated = min(a.aug_prompts, 2 * hard)
  compressions = round(both * (2 + a.wrong_per_kept)) if a.compress else 0
  # A BCQ prompt carries 2 compressed candidates, an NCQ prompt one per wrong rollout.
  candidates = (2 + a.wrong_per_kept) / 2 * a.compress_tokens
  student = "prefill" in programs and "decode" in programs and programs["decode"].rows
  teacher = "t_prefill" in programs and "t_decode" in programs and programs["t_decode"].rows
  phases = []

  def sample(name, cfg, prefix, rows, group, prompt_len, steps):
    phases.append(sampling(name, cfg, programs[f"{prefix}prefill"], programs[f"{prefix}decode"],
                           chip, rows=rows, group=group, prompt_len=prompt_len, steps=steps,
                           compiled_prompt_len=shape.prompt_len,
                           compiled_cache_len=compiled_cache))

  if student:
    sample("student rollout", shape.student, "", shape.prompts * shape.group, shape.group,
           shape.prompt_len, a.longest_response)
  if teacher:
    sample("teacher rollout", shape.teacher, "t_", hard * shape.teacher_group,
           shape.teacher_group, shape.prompt_len, a.longest_response)
    # A call's bucket is its longest prompt: the longest response plus the template.
    sample("teacher compression", shape.teacher, "t_", compressions, 1,
           a.longest_response + COMPRESS_TEMPLATE_TOKENS, a.compress_tokens)
  if student:
    sample("BCQ/NCQ rollout", shape.student, "", reformulated * shape.group, shape.group,
           shape.prompt_len + shape.group * a.compress_tokens, a.longest_response)
  train = programs.get("train")
  if train is not None and train.tokens:
    tokens = (shape.prompts * shape.group * (a.mean_prompt + a.mean_response)
              + reformulated * shape.group * (a.mean_prompt + candidates + a.mean_response))
    phases.append(Phase("update", tokens / train.tokens * train.seconds(chip)))
  return phases


def step_seconds(shape: RunShape, programs: dict[str, Program], chip: Chip,
                 a: Assumptions) -> dict[str, float]:
  """{phase: seconds, ..., "total": their sum} (empty when no program was compiled)."""
  out = {p.name: p.seconds for p in step_phases(shape, programs, chip, a)}
  if out:
    out["total"] = sum(out.values())
  return out


def format_step(label: str, phases: list[Phase]) -> str:
  """One line: each phase's seconds (and calls x rows of a sampling phase), then the total."""
  parts = [f"{p.name} does not fit" if math.isinf(p.seconds) else
           f"{p.name} {p.seconds:,.0f} s" + (f" ({p.calls} x {p.rows} rows)" if p.calls else "")
           for p in phases]
  total = sum(p.seconds for p in phases)
  head = "does not fit" if math.isinf(total) else f"{total:,.0f} s ({total / 60:.1f} min)"
  return f"{label} step {head}: " + ", ".join(parts)
