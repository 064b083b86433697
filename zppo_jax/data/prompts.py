"""The prompt pipeline of RL training: records from JSONL or Parquet to tokenised prompts.

Records are validated and tokenised once when the pipeline is built (a prompt set is small next to
its rollouts); rows that cannot be used are skipped, counted by reason and written to
`rejects.jsonl`, and the run goes on. The valid rows then go through a Grain pipeline: a per-process
shard, a seeded shuffle that changes every epoch, repetition, and an iterator whose state is a small
dict saved with each checkpoint.

A prompt is the tokenizer's chat template applied to one user turn, `build_user_text(question)`
(the trainer passes the ZPPO template: upstream format instructions stripped, RL closer appended),
with the generation prompt opened.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
from typing import Callable, Iterator

import grain

REJECT_REASONS = ("bad_record", "no_id", "duplicate_id", "empty_question", "no_answer",
                  "too_long", "broken_image")


@dataclasses.dataclass
class PromptSet:
  """The usable records of one file and what was rejected.

  Attributes:
    records: usable records, each the input row plus `prompt_ids` (list[int]).
    rejects: reason -> count.
  """
  records: list[dict]
  rejects: collections.Counter


def read_rows(path: str | pathlib.Path) -> Iterator[tuple[int, object]]:
  """(line or row number, row) of a JSONL or Parquet file; an unparseable line yields its text."""
  path = pathlib.Path(path)
  if path.suffix == ".parquet":
    import pyarrow.parquet as pq  # Only needed for Parquet input.
    for i, row in enumerate(pq.read_table(path).to_pylist()):
      yield i, row
    return
  with path.open() as f:
    for i, line in enumerate(f):
      if not line.strip():
        continue
      try:
        yield i, json.loads(line)
      except json.JSONDecodeError:
        yield i, line.rstrip("\n")


def encode_prompt(tokenizer, user_text: str) -> list[int]:
  """Token ids of one user turn under the tokenizer's chat template, assistant turn opened."""
  text = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                       add_generation_prompt=True)
  return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def load_prompts(path: str | pathlib.Path, tokenizer, build_user_text: Callable[[str], str], *,
                 max_prompt_tokens: int, rejects_path: str | pathlib.Path | None = None
                 ) -> PromptSet:
  """Validates, formats and tokenises every row of `path`.

  Args:
    path: JSONL (one JSON object per line) or Parquet; fields `id`, `question`, `answer`, optional
      `images` (paths).
    tokenizer: an HF tokenizer with a chat template.
    build_user_text: question -> the user turn's text.
    max_prompt_tokens: longer prompts are rejected as `too_long`.
    rejects_path: where to write one JSON line per rejected row ({line, reason, id}).

  Returns:
    The usable records and the reject counts.
  """
  records, rejects, seen, lines = [], collections.Counter(), set(), []
  for line, row in read_rows(path):
    reason = _reject_reason(row, seen)
    if reason is None:
      ids = encode_prompt(tokenizer, build_user_text(row["question"]))
      if len(ids) > max_prompt_tokens:
        reason = "too_long"
      else:
        seen.add(str(row["id"]))
        records.append({**row, "id": str(row["id"]), "answer": str(row["answer"]),
                        "prompt_ids": ids})
        continue
    rejects[reason] += 1
    lines.append({"line": line, "reason": reason,
                  "id": row.get("id") if isinstance(row, dict) else None})
  if rejects_path is not None:
    rejects_path = pathlib.Path(rejects_path)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    with rejects_path.open("w") as f:
      for item in lines:
        f.write(json.dumps(item, default=str) + "\n")
  return PromptSet(records, rejects)


def _reject_reason(row: object, seen: set[str]) -> str | None:
  if not isinstance(row, dict):
    return "bad_record"
  if row.get("id") is None or str(row["id"]) == "":
    return "no_id"
  if str(row["id"]) in seen:
    return "duplicate_id"
  question = row.get("question")
  if not isinstance(question, str) or not question.strip():
    return "empty_question"
  answer = row.get("answer")
  if answer is None or (isinstance(answer, str) and not answer.strip()):
    return "no_answer"
  for image in row.get("images") or ():
    if not _image_ok(image):
      return "broken_image"
  return None


def _image_ok(image: object) -> bool:
  try:
    from PIL import Image  # Only needed when records carry images.
    with Image.open(str(image)) as im:
      im.verify()
    return True
  except Exception:  # Any failure to open or decode makes the row unusable.
    return False


class PromptIterator:
  """Batches of prompt records in a seeded order, sharded per process, checkpointable.

  Each process sees rows `shard_index::shard_count` of the usable records; the order is a seeded
  shuffle, different every epoch. `state()` / `restore(state)` save and restore the position.
  """

  def __init__(self, records: list[dict], batch_size: int, *, seed: int, shuffle: bool = True,
               num_epochs: int = 0, shard_index: int = 0, shard_count: int = 1):
    if not records:
      raise ValueError("the prompt set has no usable rows (see rejects.jsonl)")
    ds = grain.MapDataset.source(records)[shard_index::shard_count]
    if shuffle:
      ds = ds.seed(seed).shuffle()
    ds = ds.repeat(num_epochs or None).batch(batch_size, drop_remainder=True, batch_fn=list)
    # Records are in memory already: no read threads or prefetch (they only add start-up time).
    self._dataset = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    self._iterator = iter(self._dataset)

  def __iter__(self):
    return self

  def __next__(self) -> list[dict]:
    return list(next(self._iterator))

  def state(self) -> dict:
    return dict(self._iterator.get_state())

  def restore(self, state: dict) -> None:
    self._iterator = iter(self._dataset)
    self._iterator.set_state(dict(state))
