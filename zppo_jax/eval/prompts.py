"""The prompt a model sees for one item: one shared answer format for every benchmark.

Upstream format instructions are stripped (the training set's patterns in
`zppo_jax.zppo.templates`, plus the few benchmark-specific ones below), options are listed one per
line as ``A. text`` under the question, context (subtitles) comes first, and the RL closer is
appended, exactly as in training (shared/ZPPO_SPEC.md §4).
"""
import re

from zppo_jax.eval.items import EvalItem, EvalPrompt, format_choices
from zppo_jax.zppo import templates

# Answer-format requests of evaluation sets that the training patterns do not cover. Each is
# removed so that the RL closer is the only format instruction.
EVAL_FORMAT_PATTERNS = (
    # VLMs-are-Blind: "Answer with a number in curly brackets, e.g., {3}." keeps "Answer with a
    # number."
    r"\s*in curly brackets,?\s*(?:e\.g\.|for example),?\s*\{[^{}]*\}",
    # MMMU / Video-MME style trailers.
    r"answer with the option'?s letter from the given choices directly\.?",
    r"respond with only the letter \([A-Z](?:,\s*[A-Z])*(?:,?\s*or\s*[A-Z])?\) of the correct "
    r"option\.?",
)
_EVAL_RES = tuple(re.compile(p, re.IGNORECASE) for p in EVAL_FORMAT_PATTERNS)


def strip_instructions(text: str) -> str:
  """Removes upstream format instructions (training patterns and evaluation ones)."""
  for pattern in _EVAL_RES:
    text = pattern.sub("", text)
  return templates.strip_format_instructions(text)


def user_text(item: EvalItem) -> str:
  """The final user message of an item: context, question, options, then the closer."""
  parts = [item.context.strip()] if item.context.strip() else []
  question = strip_instructions(str(item.question))
  if item.choices:
    question = f"{question}\n{format_choices(item.choices)}"
  parts.append(question)
  text = "\n\n".join(parts)
  return templates.rl_prompt(text) if item.closer else text


def build_prompt(benchmark: str, item: EvalItem) -> EvalPrompt:
  """The `EvalPrompt` of one item; its uid is ``<benchmark>/<item uid>``."""
  messages = tuple({"role": role, "content": content} for role, content in item.history)
  messages += ({"role": "user", "content": user_text(item)},)
  return EvalPrompt(uid=f"{benchmark}/{item.uid}", messages=messages, images=item.images,
                    video=item.video)
