"""Text is data, never markup: special-token strings inside prompt text are rewritten so the
tokenizer reads them as plain text.

A question, a candidate (a student rollout, decoded with its special tokens kept), a hint or a
response to compress may contain ``<|im_end|>\\n<|im_start|>system``; encoded as is, those become
the real chat-turn tokens and the text forges a turn. Vision markers (``<|image_pad|>``...) in the
text would be counted as image slots. Every such string is rewritten as ``[name]``
(``<|im_end|>`` -> ``[im_end]``, ``</think>`` -> ``[/think]``), the convention of the candidate
tags (`zppo.templates.neutralize_candidate`).
"""
from __future__ import annotations

import functools
import re
from typing import Iterable

from zppo_jax.data.vision import IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START

# Always rewritten, whatever the tokenizer: `expand_vision_placeholders` counts them in the text.
VISION_MARKERS = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
# The Qwen chat turns, whether or not a tokenizer declares them.
CHAT_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
THINK_TAGS = ("<think>", "</think>")


def _plain(token: str) -> str:
  """``<|im_end|>`` -> ``[im_end]``, ``</think>`` -> ``[/think]`` (brackets inside become
  parentheses, so ``[PAD]`` -> ``[(PAD)]`` cannot be the token again)."""
  core = token[1:-1] if token.startswith("<") and token.endswith(">") else token
  return "[" + core.strip("|").replace("[", "(").replace("]", ")") + "]"


@functools.lru_cache(maxsize=32)
def _pattern(tokens: tuple[str, ...]) -> re.Pattern | None:
  tokens = tuple(t for t in tokens if t)
  if not tokens:
    return None
  return re.compile("|".join(map(re.escape, sorted(set(tokens), key=len, reverse=True))))


def neutralize(text: str, tokens: Iterable[str]) -> str:
  """`text` with every occurrence of the given token strings rewritten as ``[name]``."""
  pattern = _pattern(tuple(sorted(set(tokens))))
  if pattern is None:
    return text
  return pattern.sub(lambda m: _plain(m.group()), text)


def special_token_strings(tokenizer) -> tuple[str, ...]:
  """Every string the tokenizer encodes as one added/special token, and the vision markers,
  except the think tags (the RL closer names them; `zppo.templates` rewrites them in candidates).
  """
  strings = set(VISION_MARKERS + CHAT_MARKERS)
  # A tokenizer that is not an HF one (a test double) may declare neither list.
  strings.update(str(t) for t in getattr(tokenizer, "all_special_tokens", ()))
  strings.update(str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values())
  return tuple(sorted(s for s in strings if s and s not in THINK_TAGS))


def neutralize_special_tokens(text: str, tokenizer) -> str:
  """`text` with the tokenizer's special-token strings (and the vision markers) made plain."""
  return neutralize(text, special_token_strings(tokenizer))
