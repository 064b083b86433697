"""The text demo's task: a letter code, where the hard level needs what only the teacher knows.

Each letter stands for a digit (1-9); a question asks for the number a word spells:

  In the letter code, what number is C A G?   ->   <think> C A G </think> C4 / A7 / G2 \\boxed{472}

Levels 1 and 2 spell two and three letters of the common alphabet (`COMMON`); a level-3 word has one
letter of the rare alphabet (`RARE`) among two common ones. The demo's teacher is warm-started on
every level with the code; the student learned the rare letters from an outdated code
(`outdated`: every rare letter a different digit), so on level 3 it is confidently wrong: its plain
rollouts almost never hit the right digit and GRPO's advantages are all zero. ZPPO's prompts give it
a way in: an NCQ prompt lists its own wrong answers, and the student (warm-started on such prompts
with made-up digits) tries the other digits, so the right one gets rewarded although nobody showed
it; a BCQ prompt shows the teacher's answer beside its own. Every rewarded token is the student's own
guess of a rare letter's digit, which is what carries over to the plain question.
"""
from __future__ import annotations

import itertools
import random
from typing import Iterable, Sequence

COMMON = "ABCDEFGHI"
RARE = "JKL"
QUESTION = "In the letter code, what number is {word}?"
PREFIX = "In the letter code, what number is "
WORD_LENGTH = {1: 2, 2: 3, 3: 3}


def make_code(seed: int) -> dict[str, int]:
  """The letter -> digit map: the common letters a permutation of 1-9, the rare ones drawn."""
  rng = random.Random(seed)
  digits = list(range(1, 10))
  rng.shuffle(digits)
  code = dict(zip(COMMON, digits))
  code.update({letter: rng.randint(1, 9) for letter in RARE})
  return code


def outdated(code: dict[str, int], seed: int) -> dict[str, int]:
  """The student's version of `code`: the same common letters, every rare letter another digit."""
  rng = random.Random(seed + 7919)
  old = dict(code)
  old.update({c: rng.choice([d for d in range(1, 10) if d != code[c]]) for c in RARE})
  return old


def alphabet(level: int) -> str:
  if level not in WORD_LENGTH:
    raise ValueError(f"the letter code has levels {sorted(WORD_LENGTH)}, got {level}")
  return COMMON + RARE if level == 3 else COMMON


def words(level: int) -> list[str]:
  """Every word of a level, in a fixed order (level 3: exactly one rare letter)."""
  if level == 3:
    return ["".join(w) for w in itertools.product(alphabet(level), repeat=WORD_LENGTH[level])
            if sum(c in RARE for c in w) == 1]
  letters = alphabet(level)
  return ["".join(w) for w in itertools.product(letters, repeat=WORD_LENGTH[level])]


def question(word: str) -> str:
  return QUESTION.format(word=" ".join(word))


def word_of(text: str) -> str:
  """The word of a question made by `question`."""
  if not text.startswith(PREFIX) or not text.endswith("?"):
    raise ValueError(f"not a letter-code question: {text!r}")
  return text[len(PREFIX):-1].replace(" ", "")


def spell(word: str, code: dict[str, int]) -> str:
  return "".join(str(code[c]) for c in word)


def solution(word: str, code: dict[str, int]) -> str:
  """The worked answer: the word's letters in the think block, then one ` <letter><digit>` line
  per letter and the number boxed. The lines come after the think block, so they are part of a
  candidate when a rollout is shown in a BCQ / NCQ prompt (candidates drop the think block). The
  space before a letter makes it the same token as in the question, and the digit right after it
  lets a tiny model read a candidate by copying the token that follows the letter."""
  lines = "\n".join(f" {c}{code[c]}" for c in word)
  return ("<think>\n " + " ".join(word) + "\n</think>\n" + lines + "\n\\boxed{"
          + spell(word, code) + "}")


def perturbed(word: str, code: dict[str, int], rng: random.Random,
              positions: Sequence[int] | None = None) -> dict[str, int]:
  """A copy of `code` with the digit of one letter of `word` (at one of `positions`) changed."""
  positions = range(len(word)) if positions is None else positions
  letter = word[rng.choice(list(positions))]
  wrong = dict(code)
  wrong[letter] = rng.choice([d for d in range(1, 10) if d != code[letter]])
  return wrong


def split_words(seed: int, held_out: int) -> dict[int, tuple[list[str], list[str]]]:
  """Per level, (training words, held-out words): disjoint, `held_out` per level at most half."""
  rng = random.Random(seed)
  out = {}
  for level in WORD_LENGTH:
    pool = words(level)
    rng.shuffle(pool)
    n = min(held_out, len(pool) // 2)
    out[level] = (pool[n:], pool[:n])
  return out


def records(levels: Iterable[int], count: int, seed: int, code: dict[str, int],
            pools: dict[int, list[str]], prefix: str = "q") -> list[dict]:
  """`count` prompt records spread evenly over `levels`, words drawn from `pools[level]`:
  `record`s."""
  rng = random.Random(seed)
  levels = list(levels)
  out = []
  for i in range(count):
    level = levels[i % len(levels)]
    word = rng.choice(pools[level])
    out.append(record(f"{prefix}{level}-{i}", word, level, code))
  return out


def record(rid: str, word: str, level: int, code: dict[str, int]) -> dict:
  """A prompt record; `subset` names the level (held-out accuracy is reported per subset)."""
  return {"id": rid, "question": question(word), "answer": spell(word, code), "level": level,
          "subset": f"level{level}"}


def practice_word(rng: random.Random) -> str:
  """A word shaped like level 3's: one rare letter among two common ones."""
  letters = [rng.choice(RARE), rng.choice(COMMON), rng.choice(COMMON)]
  rng.shuffle(letters)
  return "".join(letters)
