"""The step loop's prompts: a built dataset through the Grain pipeline, one step batch at a time.

    data = open_train_data(config, tokenizer, user_text, vision=student.vision, workdir=workdir)
    records = next(data)        # the step's prompt records, the same list on every process
    host["data"] = data.state(); ...; data.restore(host["data"])     # exact resume

One path from stored record to step. `config.data.train_path` names either the output directory
of a builder (`zppo data build-zppo77k`, `zppo data build`: `<out>/` or `<out>/<name>/<version>/`),
read as it is, or a JSONL/Parquet prompt file, which is first built into the same record format
under `<workdir>/train_data/` (by process 0, once; reused while the file is unchanged). Then:

- `pipeline.Pipeline` reads the ArrayRecord shards by random access in a seeded global order (a
  new permutation every epoch), each JAX process its own share (`ShardByJaxProcess`);
- decoding, the size checks, resizing/patchifying images and tokenising happen per record in
  Grain's map (`config.data.num_workers` worker processes, or threads), only for the records a
  step takes; nothing is done for the whole corpus at start-up;
- each process reads its contiguous block (`distributed.block`) of each step's `batch_prompts`
  positions and turns it into prompt records; the records (without the pixels) are gathered in
  process order, so every process holds the step's whole batch, the batch a one-process run takes.

A record is `{id, source, subset, question, answer, images, index, prompt}`: `images` name the
images inside the shards (`record_images.uri`, so the replay buffer checkpoints a few bytes per
image), `prompt` is the plain prompt made in the pipeline (`prompts.ImagePrompt` with the pixels,
or token ids) for the records this process read. Replayed and reformulated prompts are made from
`images` with `prompts.encode_prompt`, the function the pipeline uses.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import sys

from etils import epath
import grain
import jax

from zppo_jax import distributed
from zppo_jax.data import generic_builder, prompts, record_images, tfds_source
from zppo_jax.data.pipeline import Pipeline, PipelineConfig
from zppo_jax.train import workdir as workdir_lib

PROMPT_FILE_SUFFIXES = (".jsonl", ".parquet")
BUILT_NAME = "prompts"


def is_built(path: str | pathlib.Path) -> bool:
  """Whether `path` is (or holds one) builder output directory."""
  try:
    tfds_source.find_dataset_dir(path)
  except (FileNotFoundError, ValueError):
    return False
  return True


def prepare(path: str | pathlib.Path, workdir: epath.PathLike, *, min_image_side: int,
            stream=None) -> pathlib.Path:
  """The builder output to read: `path` itself, or a prompt file built under the workdir.

  A prompt file is built into `<workdir>/train_data/` by process 0 (once; reused while the file
  is unchanged). ArrayRecord's reader opens local files only, so with a remote workdir (`gs://`)
  the shards are built in a local cache directory (`local_cache_dir`), copied to
  `<workdir>/train_data/` through epath, and each other process copies them from there into its
  own cache.

  Returns:
    The local directory to read.

  Raises:
    FileNotFoundError: if `path` is neither a built dataset nor a JSONL/Parquet file.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    tfds_source.find_dataset_dir(path)    # raises, naming the directory, if nothing is built
    return path
  if path.suffix not in PROMPT_FILE_SUFFIXES or not path.is_file():
    raise FileNotFoundError(f"data.train_path={path}: not a builder output directory nor a "
                            f"{'/'.join(PROMPT_FILE_SUFFIXES)} prompt file")
  out = epath.Path(workdir) / "train_data"
  remote = not workdir_lib.is_local(out)
  local = local_cache_dir(out) if remote else pathlib.Path(out)
  stamp = {"input": str(path.resolve()), "size": path.stat().st_size,
           "mtime_ns": path.stat().st_mtime_ns, "min_image_side": min_image_side}
  if distributed.is_main():
    if not _up_to_date(local, stamp):
      # No answer-length or prompt-budget rule here: a custom set keeps its rows, and the
      # pipeline applies the run's prompt budget per record.
      config = generic_builder.BuildConfig(max_answer_chars=0, min_image_side=min_image_side,
                                           num_shards=1)
      for old in local.glob(f"{BUILT_NAME}/*/*"):
        old.unlink()
      report = generic_builder.build(path, local, name=BUILT_NAME, config=config)
      (local / STAMP_FILE).write_text(json.dumps(stamp) + "\n")
      if report["rejects"]:
        print(f"data: {path} built into {out}; skipped {sum(report['rejects'].values())} rows "
              f"({report['rejects']}); see {out / 'report.json'}", file=stream or sys.stderr)
    if remote and not _same_stamp(out / STAMP_FILE, stamp):
      workdir_lib.copy_tree(epath.Path(local), out, last=STAMP_FILE)
  distributed.barrier("train_data")
  if remote and not _up_to_date(local, stamp):    # another process of a multi-host run
    workdir_lib.copy_tree(out, epath.Path(local), last=STAMP_FILE)
  return local


STAMP_FILE = "input.json"   # what the shards were built from; written (and copied) last


def local_cache_dir(remote: epath.Path) -> pathlib.Path:
  """This machine's copy of a remote build directory: `$XDG_CACHE_HOME/zppo-jax/train_data/<hash>`
  (default `~/.cache`)."""
  root = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
  return root / "zppo-jax" / "train_data" / hashlib.sha256(str(remote).encode()).hexdigest()[:16]


def _same_stamp(stamp_file: epath.Path, stamp: dict) -> bool:
  return stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp


def _up_to_date(local: pathlib.Path, stamp: dict) -> bool:
  return _same_stamp(epath.Path(local) / STAMP_FILE, stamp) and is_built(local)


class TrainData:
  """Step batches of prompt records with a checkpointable position (see the module docstring).

  Args:
    path: a builder output directory.
    tokenizer: the student's tokenizer.
    build_user_text: question -> the user turn (the trainer's template).
    vision: the student's `VisionProcessorConfig`; None for a text-only student.
    batch_size: prompts per step over all processes; each reads its contiguous block of every
      step's positions, so P processes take a one-process run's batches (without skipped records).
    seed, shuffle, num_epochs: the order (`PipelineConfig`).
    max_prompt_tokens, min_image_side: records over the budget / with smaller images are skipped.
    num_workers: Grain worker processes (0: threads in this process).
  """

  def __init__(self, path: str | pathlib.Path, tokenizer, build_user_text, *, vision,
               batch_size: int, seed: int, shuffle: bool = True, num_epochs: int = 0,
               max_prompt_tokens: int = 4096, min_image_side: int = 100, num_workers: int = 0):
    cfg = PipelineConfig(seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                         global_batch=batch_size, drop_last=True, num_workers=num_workers,
                         max_prompt_tokens=max_prompt_tokens, min_image_side=min_image_side,
                         vision=vision)
    self.pipeline = Pipeline(path, tokenizer, cfg,
                             shard=grain.sharding.ShardByJaxProcess(drop_remainder=True),
                             build_user_text=build_user_text)
    self.directory = tfds_source.find_dataset_dir(path)
    self._iterator = self.pipeline.iterator()

  def __iter__(self):
    return self

  def __next__(self) -> list[dict]:
    local = [self._record(e) for e in next(self._iterator)]
    if jax.process_count() == 1:
      return local
    light = [{k: v for k, v in r.items() if k != "prompt"} for r in local]
    parts = distributed.allgather_objects(light)
    me = jax.process_index()
    return [r for p, part in enumerate(parts) for r in (local if p == me else part)]

  def _record(self, example: dict) -> dict:
    index = int(example["index"])
    ids = [int(t) for t in example["prompt_ids"]]
    prompt = (prompts.ImagePrompt(ids, example["pixel_values"], example["image_grid_thw"])
              if len(example["image_grid_thw"]) else ids)
    record = {k: example[k] for k in ("id", "source", "subset", "question", "answer")}
    record.update(images=[record_images.uri(self.directory, index, k)
                          for k in range(len(example["images"]))], index=index, prompt=prompt)
    if "choices" in example["meta"]:        # multiple-choice grading
      record["choices"] = example["meta"]["choices"]
    return record

  @property
  def rejects(self) -> dict[str, int]:
    """Records skipped so far (this process), by reason, duplicates in the shards included."""
    return dict(collections.Counter(self.pipeline.build_rejects) + self._iterator.rejects)

  def state(self) -> dict:
    """Every process's position (JSON-able): the checkpoint is written by one process."""
    return {"processes": distributed.allgather_objects(self._iterator.get_state())}

  def restore(self, state: dict) -> None:
    if "processes" not in state:
      raise ValueError("the checkpoint's data position was written by the earlier in-memory "
                       "prompt reader; start a new workdir to train through the shards pipeline")
    states = state["processes"]
    if len(states) != jax.process_count():
      raise ValueError(f"the checkpoint's data position is for {len(states)} processes, this run "
                       f"has {jax.process_count()}: the order cannot be resumed exactly")
    self._iterator.set_state(states[jax.process_index()])


def open_train_data(config, tokenizer, build_user_text, *, vision, workdir, stream=None
                    ) -> TrainData:
  """`TrainData` for a run config (`config.data.*`, `rl.batch_prompts`, `seed`)."""
  d = config.data
  root = prepare(d.train_path, workdir, min_image_side=d.min_image_side, stream=stream)
  return TrainData(root, tokenizer, build_user_text, vision=vision,
                   batch_size=config.rl.batch_prompts, seed=config.seed, shuffle=d.shuffle,
                   num_epochs=d.num_epochs, max_prompt_tokens=d.max_prompt_tokens,
                   min_image_side=d.min_image_side, num_workers=d.num_workers)
