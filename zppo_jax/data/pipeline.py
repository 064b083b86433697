"""The multimodal training pipeline: shards -> decoded, preprocessed, batched prompts (Grain).

    pipe = Pipeline(out_dir, tokenizer, PipelineConfig(seed=0, batch_size=384, num_workers=8))
    it = pipe.iterator()                  # this JAX process's share, seeded, endless by default
    batch = next(it)                      # list of examples (dicts, see `Preprocessor`)
    state = it.get_state()                # small dict; save it with the checkpoint
    it = pipe.iterator(); it.set_state(state)   # resumes at the next unseen example
    replays = pipe.preprocess_many(buffer_questions)   # replayed questions, same preprocessing

Order. Epoch e visits the dataset in a permutation seeded by (seed, e), so every epoch differs and
any position is computed directly (random access, nothing to replay on resume). Position g of an
epoch belongs to process g mod P (`grain.sharding.ShardOptions`), so the P processes see disjoint
sets that together cover the epoch. With `drop_remainder` every process gets the same number of
examples per epoch (the last N mod P positions are skipped).

Bad input is skipped and counted by reason, never raised: undecodable records, empty fields,
corrupt or truncated images, unsupported modes, images below `min_image_side`, prompts over the
token budget. Duplicate ids are found once from the ids sidecar the builders write (the first
occurrence is kept), so skipping them does not depend on the visiting order.
"""
from __future__ import annotations

import collections
import dataclasses
import pathlib
from typing import Callable, Iterable

import grain
import numpy as np

from zppo_jax import distributed
from zppo_jax.data import prompts, records, tfds_source, vision
from zppo_jax.data.generic_builder import default_user_text, max_token_chars

PIPELINE_REJECTS = ("bad_record", "non_utf8", "no_id", "empty_question", "no_answer",
                    "broken_image", "small_image", "too_long", "duplicate_id", "text_only_model")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Attributes:
    seed: the shuffle seed.
    shuffle: False visits records in stored order (still sharded).
    num_epochs: 0 repeats forever.
    batch_size: examples per batch (fixed-count batching) ...
    max_batch_tokens: ... or, when > 0, batches are filled until the next example's prompt
      tokens would exceed this budget (at most `batch_size` examples if that is also > 0).
    drop_last: drop a final incomplete batch when a finite run ends.
    num_workers: decode/preprocess processes (0: in this process, with `num_threads` threads).
    num_threads: reader threads per process.
    max_prompt_tokens: longer prompts are skipped (`too_long`).
    min_image_side: images with a smaller side are skipped (`small_image`).
    vision: the image preprocessing settings; None for a text-only model (images not decoded).
    global_batch: when > 0, each process reads its contiguous block (`distributed.block`) of
      every `global_batch` positions and batches are those blocks (`batch_size` is ignored): the
      processes' batches concatenated in process order are a one-process run's batch (as long
      as no record is skipped).
  """
  seed: int = 0
  shuffle: bool = True
  num_epochs: int = 0
  batch_size: int = 8
  max_batch_tokens: int = 0
  drop_last: bool = False
  num_workers: int = 0
  num_threads: int = 4
  max_prompt_tokens: int = 4096
  min_image_side: int = 100
  vision: vision.VisionProcessorConfig | None = vision.VisionProcessorConfig()
  global_batch: int = 0


class Preprocessor:
  """A record dict -> a model-ready example, or a reject `{"reject": reason, "id": ...}`.

  An example holds the record's `id`, `source`, `subset`, `question`, `answer`, `images` (encoded
  bytes, kept for the replay buffer) plus `prompt_ids` (int32[T]: the chat-formatted user turn
  with images first, placeholders expanded), `pixel_values` (float32[N, C*Tp*P*P]) and
  `image_grid_thw` (int64[I, 3]). The prompt is `prompts.encode_prompt`'s, the function every
  other prompt of the run (replayed, reformulated) is made with. With `vision_cfg=None` (a
  text-only student) a record with images is skipped (`text_only_model`).
  """

  def __init__(self, tokenizer, build_user_text: Callable[[str], str] = default_user_text, *,
               max_prompt_tokens: int = 4096, min_image_side: int = 100,
               vision_cfg: vision.VisionProcessorConfig | None = vision.VisionProcessorConfig()):
    self.tokenizer, self.build_user_text = tokenizer, build_user_text
    self.max_prompt_tokens, self.min_image_side = max_prompt_tokens, min_image_side
    self.vision_cfg = vision_cfg
    self.max_question_chars = (None if (chars := max_token_chars(tokenizer)) is None
                               else max_prompt_tokens * chars)

  def from_bytes(self, data: bytes) -> dict:
    try:
      record = records.deserialize(data)
    except records.RecordError as e:
      reason = "non_utf8" if isinstance(e.__cause__, UnicodeDecodeError) else "bad_record"
      return {"reject": reason, "id": None}
    return self(record)

  def __call__(self, record: dict) -> dict:
    rid = record.get("id")
    for field, reason in (("id", "no_id"), ("question", "empty_question"), ("answer", "no_answer")):
      if not isinstance(record.get(field), str) or not record[field].strip():
        return {"reject": reason, "id": rid if isinstance(rid, str) else None}
    if record.get("images") and self.vision_cfg is None:
      return {"reject": "text_only_model", "id": rid}
    # Over the budget for sure (`generic_builder.PromptBudget.check`): not tokenised.
    if self.max_question_chars is not None and len(record["question"]) > self.max_question_chars:
      return {"reject": "too_long", "id": rid}
    images = []
    for i, data in enumerate(record.get("images") or ()):
      try:
        image = vision.load_image(data, f"{rid} image {i}")
      except vision.VisionInputError:
        return {"reject": "broken_image", "id": rid}
      if min(image.size) < self.min_image_side:
        return {"reject": "small_image", "id": rid}
      images.append(image)
    try:
      ids = prompts.encode_prompt(self.tokenizer, self.build_user_text(record["question"]),
                                  images, self.vision_cfg, rid)
    except vision.VisionInputError:   # e.g. an aspect ratio the processor refuses
      return {"reject": "broken_image", "id": rid}
    if len(ids) > self.max_prompt_tokens:
      return {"reject": "too_long", "id": rid}
    cfg = self.vision_cfg or vision.VisionProcessorConfig()
    dim = 3 * cfg.temporal_patch_size * cfg.patch_size ** 2
    return {**{k: record.get(k) for k in ("id", "source", "subset", "question", "answer")},
            "images": list(record.get("images") or ()),
            "meta": record.get("meta") or {},
            "prompt_ids": np.asarray(ids, np.int32),
            **({"pixel_values": ids.pixel_values, "image_grid_thw": ids.image_grid_thw}
               if isinstance(ids, prompts.ImagePrompt) else
               {"pixel_values": np.zeros((0, dim), np.float32),
                "image_grid_thw": np.zeros((0, 3), np.int64)})}


class _EpochOrder:
  """Random access to this process's record indices: local position -> stored record index.

  The epoch's positions are cut into groups of `group`; this process reads offsets
  [start, stop) of every group (by default group = process count and one offset each: positions
  g with g mod P = index).
  """

  def __init__(self, valid: np.ndarray, seed: int, shuffle: bool, num_epochs: int,
               shard: grain.sharding.ShardOptions, global_batch: int = 0):
    self.valid, self.seed, self.shuffle = valid, seed, shuffle
    index, count = shard.shard_index, shard.shard_count
    if global_batch:
      if global_batch < count:
        raise ValueError(f"a global batch of {global_batch} cannot be split over {count} "
                         "processes")
      block = distributed.block(global_batch, index, count)
      self.group, self.start, self.size = global_batch, block.start, block.stop - block.start
    else:
      self.group, self.start, self.size = count, index, 1
    n = len(valid)
    groups, rest = divmod(n, self.group)
    self.per_epoch = groups * self.size + (
        0 if shard.drop_remainder else min(max(rest - self.start, 0), self.size))
    if self.per_epoch == 0:
      raise ValueError(f"process {index} of {count} gets no records of {n}")
    self.length = self.per_epoch * num_epochs if num_epochs else np.iinfo(np.int64).max
    self._perm: tuple[int, np.ndarray] | None = None

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, i: int) -> int:
    epoch, j = divmod(int(i), self.per_epoch)
    position = (j // self.size) * self.group + self.start + j % self.size
    if not self.shuffle:
      return int(self.valid[position])
    if self._perm is None or self._perm[0] != epoch:
      self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.valid)))
    return int(self.valid[self._perm[1][position]])


class _Load:
  """Record index -> preprocessed example (runs in the worker processes)."""

  def __init__(self, source, preprocessor: Preprocessor):
    self.source, self.preprocessor = source, preprocessor

  def __call__(self, index: int) -> dict:
    example = self.preprocessor.from_bytes(self.source[index])
    example["index"] = index
    return example


class Pipeline:
  """The shards of a built dataset, ready to iterate for one JAX process.

  Args:
    path: the output root of a builder (or the dataset version directory).
    tokenizer: the student's HF tokenizer (with the Qwen vision special tokens).
    config: the pipeline settings.
    shard: which part this process reads; default `grain.sharding.ShardByJaxProcess()`.
    build_user_text: question -> user turn text (default: the ZPPO template).
    split: the split to read.
  """

  def __init__(self, path: str | pathlib.Path, tokenizer, config: PipelineConfig = PipelineConfig(),
               shard: grain.sharding.ShardOptions | None = None,
               build_user_text: Callable[[str], str] = default_user_text, split: str = "train"):
    self.config = config
    self.source = tfds_source.grain_source(path, split)
    self.preprocessor = Preprocessor(tokenizer, build_user_text,
                                     max_prompt_tokens=config.max_prompt_tokens,
                                     min_image_side=config.min_image_side, vision_cfg=config.vision)
    ids = records.read_ids(tfds_source.find_dataset_dir(path), split)
    self.valid, duplicates = _first_occurrences(ids, len(self.source))
    self.build_rejects = collections.Counter({"duplicate_id": duplicates} if duplicates else {})
    self.shard = shard if shard is not None else grain.sharding.ShardByJaxProcess()
    self.order = _EpochOrder(self.valid, config.seed, config.shuffle, config.num_epochs, self.shard,
                             config.global_batch)
    if config.global_batch:   # this process's batches are its blocks of the global batches
      self.config = dataclasses.replace(config, batch_size=self.order.size)
    self.replay_rejects: collections.Counter = collections.Counter()

  def dataset(self) -> grain.IterDataset:
    """Examples (and rejects) in this process's order, decoded by the workers."""
    ds = grain.MapDataset.source(self.order).map(_Load(self.source, self.preprocessor))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.config.num_threads,
                                              prefetch_buffer_size=4 * self.config.num_threads))
    if self.config.num_workers > 0:
      # Grain's worker processes read absl flags; outside `absl.app.run` nobody parsed them.
      from absl import flags
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.config.num_workers))
    return ds

  def iterator(self) -> "BatchIterator":
    return BatchIterator(self.dataset(), self.config)

  def preprocess_many(self, questions: Iterable[dict]) -> list[dict]:
    """Replayed questions (record dicts, e.g. from the replay buffer) through the same
    preprocessing; rejects are skipped and counted in `replay_rejects`."""
    out = []
    for q in questions:
      example = self.preprocessor(q)
      if "reject" in example:
        self.replay_rejects[example["reject"]] += 1
      else:
        out.append(example)
    return out


def _first_occurrences(ids: list[str] | None, n: int) -> tuple[np.ndarray, int]:
  """Indices of the records to visit (first occurrence of each id) and the duplicate count."""
  if ids is None:
    return np.arange(n), 0
  if len(ids) != n:
    raise ValueError(f"the ids sidecar lists {len(ids)} records but the shards hold {n}")
  seen, keep = set(), []
  for i, rid in enumerate(ids):
    if rid not in seen:
      seen.add(rid)
      keep.append(i)
  return np.asarray(keep, np.int64), n - len(keep)


class BatchIterator:
  """Batches of examples with a checkpointable position; rejects skipped and counted.

  With a token budget, the example that overflows a batch opens the next one; the saved state is
  taken before that example was read, so a restored iterator reads it again.
  """

  def __init__(self, dataset: grain.IterDataset, config: PipelineConfig):
    self.config, self._dataset = config, dataset
    self._it = iter(dataset)
    self.rejects: collections.Counter = collections.Counter()
    self._pending: dict | None = None
    self._pending_state: dict | None = None

  def __iter__(self):
    return self

  def _pull(self) -> dict:
    while True:
      example = next(self._it)
      if "reject" not in example:
        return example
      self.rejects[example["reject"]] += 1

  def __next__(self) -> list[dict]:
    cfg, batch, tokens = self.config, [], 0
    while not cfg.batch_size or len(batch) < cfg.batch_size:
      if self._pending is not None:
        example, self._pending, self._pending_state = self._pending, None, None
      else:
        before = self._snapshot()
        try:
          example = self._pull()
        except StopIteration:
          break
        n = len(example["prompt_ids"])
        if cfg.max_batch_tokens and batch and tokens + n > cfg.max_batch_tokens:
          self._pending, self._pending_state = example, before
          break
      batch.append(example)
      tokens += len(example["prompt_ids"])
    if not batch or (cfg.drop_last and self._pending is None and cfg.batch_size
                     and len(batch) < cfg.batch_size):
      raise StopIteration
    return batch

  def _snapshot(self) -> dict:
    return {"grain": self._it.get_state(), "rejects": dict(self.rejects)}

  def get_state(self) -> dict:
    """The position after the last batch returned (a small, JSON-able dict)."""
    return self._pending_state if self._pending is not None else self._snapshot()

  def set_state(self, state: dict) -> None:
    self._it = iter(self._dataset)
    self._it.set_state(state["grain"])
    self.rejects = collections.Counter(state["rejects"])
    self._pending = self._pending_state = None
