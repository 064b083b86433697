"""Relations in answers: ``\\neq 42`` or ``< 42`` is a claim about a number, never the number.

math-verify drops a relation it cannot pair with a left-hand side (``\\neq 42`` parses as ``42``),
which would pay a policy for writing any relation in front of the gold answer. This module finds
the relation an answer starts with, and the "not equal to" kind of relation (``≈``, ``∼``,
``\\not``...) anywhere in it, so the grader can refuse them before math-verify sees the text.
Linear-time scans only.
"""
import re

# LaTeX relation commands (and negations) whose operand is not the value they name.
_RELATION_COMMANDS = (
    "not neg lnot ne neq lt gt le leq leqq leqslant ge geq geqq geqslant ll gg lll ggg approx "
    "approxeq sim simeq thicksim thickapprox backsim backsimeq cong equiv doteq doteqdot propto "
    "varpropto asymp lesssim gtrsim lessapprox gtrapprox lessgtr gtrless lesseqgtr gtreqless prec "
    "succ preceq succeq precsim succsim nless ngtr nleq ngeq nleqq ngeqq nleqslant ngeqslant nsim "
    "ncong nequiv lneq gneq lneqq gneqq lnsim gnsim lnapprox gnapprox eqsim risingdotseq "
    "fallingdotseq triangleq eqcirc circeq bumpeq Bumpeq subset supset subseteq supseteq "
    "subsetneq supsetneq sqsubset sqsupset sqsubseteq sqsupseteq in notin ni owns mid nmid "
    "parallel nparallel perp vdash models to rightarrow Rightarrow longrightarrow "
    "Longrightarrow implies iff impliedby leftarrow Leftarrow gets mapsto leftrightarrow "
    "Leftrightarrow nRightarrow between pitchfork smile frown").split()
# Unicode relations and arrows: the Mathematical Operators relations block (U+2241-U+22A5,
# ≁ ... ⊥, with ≠ ≤ ≥ ≈ ≡ ≅ ≃ ≲ ≪ ⊂ ...), ∼ ∽ ∝ ∈ ∉ ∋ ∌ ∣ ∤ ∥ ∦ ¬ ⩽ ⩾ ⪅ ⪆ ⪯ ⪰, the arrows
# block, and the ASCII forms < > and != (a lone `!` is a factorial, `~` a LaTeX space).
_RELATION_CHARS = ("\u2241-\u22a5\u223c\u223d\u221d\u2208\u2209\u220b\u220c\u2223-\u2226"
                   "\u00ac\u2a7d\u2a7e\u2a85\u2a86\u2aaf\u2ab0\u2190-\u21ff\u27f5-\u27ff<>")
_RELATION_RE = re.compile(r"\\(" + "|".join(sorted(_RELATION_COMMANDS, key=len, reverse=True))
                          + r")(?![A-Za-z])|([" + _RELATION_CHARS + r"]|!=)")
# What may precede a value without being part of it: spaces, braces, `$`, spacing commands,
# `\left.`, style commands and text wrappers (their braces count as braces).
_LEADING_FILLER_RE = re.compile(
    r"(?:\s|[{$]|\\[,;:! ]|\\(?:quad|qquad|displaystyle|textstyle|scriptstyle|left\s*\.?|right\s*\.?"
    r"|text|textrm|textbf|mathrm|mathbf|mbox|operatorname|mathit|mathsf|hbox)(?![A-Za-z]))*")
# Kinds of relation: one canonical name per meaning, so `\le`, `\leq`, `≤` and `<=` agree.
_CANONICAL = {
    "ne": "≠", "neq": "≠", "≠": "≠", "!=": "≠", "lt": "<", "<": "<", "gt": ">", ">": ">",
    "le": "≤", "leq": "≤", "leqq": "≤", "leqslant": "≤", "≤": "≤", "≦": "≤", "⩽": "≤",
    "ge": "≥", "geq": "≥", "geqq": "≥", "geqslant": "≥", "≥": "≥", "≧": "≥", "⩾": "≥",
    "approx": "≈", "≈": "≈", "sim": "∼", "∼": "∼",
}


def _relation_name(match: re.Match) -> str:
  name = match.group(1) or match.group(2)
  return _CANONICAL.get(name, name)


def leading_relation(text: str) -> str | None:
  """The relation an answer starts with (``≠`` for ``\\neq 42``, ``\\ne 42``, ``!= 42``), or None.

  Spaces, braces, ``$``, spacing and style commands and text wrappers before it are skipped, so
  ``{\\neq} 42``, ``$\\neq$ 42`` and ``\\text{≠} 42`` start with ``≠`` too. A plain ``=`` is not a
  relation here (``= 42`` states the value); ``=<`` and ``=>`` are.
  """
  rest = text[_LEADING_FILLER_RE.match(text).end():]
  if rest.startswith("=") and not rest.startswith(("=<", "=>")):
    return None
  if rest.startswith(("=<", "=>")):
    return "≤" if rest[1] == "<" else "≥"
  match = _RELATION_RE.match(rest)
  return _relation_name(match) if match else None


# Relations that say "close to", "not", "congruent", "proportional": never an equality.
_NOT_EQUAL = frozenset("≠ ≈ ∼ not neg lnot".split()) | frozenset(
    "approxeq simeq thicksim thickapprox backsim backsimeq cong equiv doteq doteqdot propto "
    "varpropto asymp nsim ncong nequiv eqsim risingdotseq fallingdotseq triangleq".split()) \
    | frozenset(chr(c) for c in (0x2241, 0x2242, 0x2243, 0x2244, 0x2245, 0x2246, 0x2247, 0x2249,
                                 0x224a, 0x224b, 0x224c, 0x224d, 0x2250, 0x2251, 0x2252, 0x2253,
                                 0x2256, 0x2257, 0x225c, 0x2261, 0x2262, 0x223d, 0x221d, 0xac))


def not_equal_relations(text: str) -> frozenset[str]:
  """The "not an equality" relations (``≠``, ``≈``, ``∼``, ``≡``, ``∝``, ``\\not``...) in a text."""
  return frozenset(n for n in map(_relation_name, _RELATION_RE.finditer(text)) if n in _NOT_EQUAL)
