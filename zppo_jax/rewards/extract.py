"""Final-answer extraction: the last ``\\boxed{...}`` of a response, outside its ``<think>`` block.

ZPPO's reward (shared/ZPPO_SPEC.md §5) reads only the final answer: the content of the **last**
``\\boxed{...}`` (balanced braces, nested braces allowed) that is not inside the reasoning block.
``\\boxed {x}`` (space before the brace) and ``\\fbox{x}`` count as boxes too. Everything here is
linear-time string scanning, so it is safe on arbitrary model output.
"""
import re

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# `\boxed` or `\fbox`, not followed by another letter (so `\boxedx` is not a box), then optional
# spaces, then the opening brace.
_BOX = r"\\(?:boxed|fbox)(?![A-Za-z])\s*\{"
# The lexemes of the brace scan: a box opener, an escaped character (never a brace), a brace.
_TOKEN_RE = re.compile(_BOX + r"|\\.|[{}]", re.DOTALL)


# The think tags in any letter case (`<THINK>`, `</Think>`): a policy must not hide a box from
# the extractor, or show one to it, by changing the case of a tag.
_THINK_OPEN_RE = re.compile(re.escape(THINK_OPEN), re.IGNORECASE)
_THINK_CLOSE_RE = re.compile(re.escape(THINK_CLOSE), re.IGNORECASE)


def strip_think(text: str) -> str:
  """Removes the reasoning part of a response.

  Everything up to and including the last ``</think>`` is reasoning. A response that opens
  ``<think>`` and never closes it is all reasoning (it ran out of tokens while thinking), so
  nothing of it is left. Tags match in any letter case.

  Args:
    text: a model response.

  Returns:
    The text after the reasoning block (the whole text when there is no ``<think>`` at all).
  """
  close = None
  for close in _THINK_CLOSE_RE.finditer(text):
    pass
  if close is not None:
    return text[close.end():]
  open_ = _THINK_OPEN_RE.search(text)
  if open_ is not None:
    return text[:open_.start()]
  return text


def find_boxed(text: str) -> list[str]:
  """Returns the contents of every complete ``\\boxed{...}`` / ``\\fbox{...}`` in order.

  Braces are matched with a stack in one linear pass; an escaped brace (``\\{`` or ``\\}``)
  does not count, so ``\\boxed{\\{1, 2\\}}`` yields ``\\{1, 2\\}``. A box whose braces never
  balance is skipped (a complete box inside it still counts). A box nested inside a complete box
  is part of the outer box's content, not a separate entry.

  Args:
    text: any string.

  Returns:
    The stripped contents, first to last.
  """
  stack: list[tuple[int, int] | None] = []  # (opener start, content start) for boxes, else None.
  complete: list[tuple[int, int, int]] = []
  for token in _TOKEN_RE.finditer(text):
    lexeme = token.group()
    if lexeme == "}":
      if stack:
        opened = stack.pop()
        if opened is not None:
          complete.append((opened[0], opened[1], token.start()))
    elif lexeme == "{":
      stack.append(None)
    elif lexeme.endswith("{") and not lexeme.startswith("\\{"):
      stack.append((token.start(), token.end()))
  complete.sort()
  found = []
  outer_end = -1
  for opener, start, end in complete:
    if opener < outer_end:
      continue  # Inside the previous complete box.
    found.append(text[start:end].strip())
    outer_end = end
  return found


def extract_answer(response: str) -> str | None:
  """Returns the content of the last ``\\boxed{...}`` outside ``<think>``, or None if there is none.

  Args:
    response: a model response, possibly with a ``<think> ... </think>`` block.

  Returns:
    The stripped content of the last complete box after the reasoning block (may be the empty
    string for ``\\boxed{}``), or None when there is no complete box there.
  """
  if not isinstance(response, str):
    return None
  boxes = find_boxed(strip_think(response))
  return boxes[-1] if boxes else None
