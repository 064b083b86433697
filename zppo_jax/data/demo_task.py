"""A procedurally generated task with verifiable answers and difficulty levels: column addition.

Level n adds two n-digit numbers. A worked solution writes the column sums, units first, inside
`<think>` and the result in `\\boxed{}`, so a small model can learn the procedure and the reward is
exact. The student of the demo is warm-started on the easy levels only, so the hard levels are the
questions on which all of its rollouts fail, which is where ZPPO differs from GRPO.

The visual variant asks for the sum of the digits drawn in an image (level n draws n digits), so
the multimodal path (images in prompts, reformulations and training rows) runs on a laptop.
"""
from __future__ import annotations

import json
import pathlib
import random
from typing import Iterable, Sequence

QUESTION = "What is {a} + {b}?"


def make_question(level: int, rng: random.Random) -> tuple[int, int]:
  """Two operands with exactly `level` digits each."""
  if level < 1:
    raise ValueError(f"level must be >= 1, got {level}")
  low, high = (0 if level == 1 else 10 ** (level - 1)), 10 ** level - 1
  return rng.randint(low, high), rng.randint(low, high)


def solution(a: int, b: int) -> str:
  """The worked solution: one line per column, units first, carry added explicitly."""
  da, db = str(a)[::-1], str(b)[::-1]
  lines, carry = [], 0
  for i in range(max(len(da), len(db))):
    x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
    total = x + y + carry
    lines.append(f"{x}+{y}+{carry}={total}" if carry else f"{x}+{y}={total}")
    carry = total // 10
  return "<think>\n" + "\n".join(lines) + "\n</think>\n\\boxed{" + str(a + b) + "}"


def wrong_solution(a: int, b: int, rng: random.Random) -> tuple[str, int]:
  """A plausible wrong solution (a dropped carry or a slipped digit) and its wrong answer."""
  text = solution(a, b)
  right = a + b
  wrong = right
  while wrong == right or wrong < 0:
    digits = list(str(right))
    i = rng.randrange(len(digits))
    digits[i] = str((int(digits[i]) + rng.choice((-1, 1))) % 10)
    wrong = int("".join(digits))
  return text.replace("\\boxed{" + str(right) + "}", "\\boxed{" + str(wrong) + "}"), wrong


def records(levels: Iterable[int], count: int, seed: int, prefix: str = "q") -> list[dict]:
  """`count` prompt records spread evenly over `levels`: {id, question, answer, level}."""
  rng = random.Random(seed)
  levels = list(levels)
  out = []
  for i in range(count):
    level = levels[i % len(levels)]
    a, b = make_question(level, rng)
    out.append({"id": f"{prefix}{level}-{i}", "question": QUESTION.format(a=a, b=b),
                "answer": str(a + b), "level": level})
  return out


def operands(question: str) -> tuple[int, int]:
  """The two operands of a question made by `records`."""
  body = question.split("What is ", 1)[1].split("?", 1)[0]
  a, b = body.split(" + ")
  return int(a), int(b)


def write_jsonl(rows: list[dict], path: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  return path


# --- The visual variant: the sum of the digits drawn in an image. ---

VISUAL_QUESTION = "What is the sum of the digits in the image?"


def render_digits(digits: Sequence[int], size: int, rng: random.Random):
  """A `size` x `size` RGB PIL image with the digits drawn left to right at jittered heights."""
  from PIL import Image, ImageDraw  # Only the visual variant draws.
  image = Image.new("RGB", (size, size), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  step = size // (len(digits) + 1)
  for i, d in enumerate(digits):
    x = step * (i + 1) - 3 + rng.randint(-2, 2)
    y = rng.randint(2, max(2, size - 14))
    draw.text((x, y), str(d), fill=(0, 0, 0))
  return image


def visual_records(levels: Iterable[int], count: int, seed: int, image_dir: str | pathlib.Path,
                   size: int, prefix: str = "v") -> list[dict]:
  """`count` records over `levels` (level n draws n digits): {id, question, answer, level,
  images: [absolute PNG path]}, the PNGs written to `image_dir`."""
  rng = random.Random(seed)
  image_dir = pathlib.Path(image_dir).resolve()
  image_dir.mkdir(parents=True, exist_ok=True)
  levels = list(levels)
  out = []
  for i in range(count):
    level = levels[i % len(levels)]
    digits = [rng.randint(0, 9) for _ in range(level)]
    rid = f"{prefix}{level}-{i}"
    path = image_dir / f"{rid}.png"
    render_digits(digits, size, rng).save(path)
    out.append({"id": rid, "question": VISUAL_QUESTION, "answer": str(sum(digits)),
                "level": level, "images": [str(path)]})
  return out
