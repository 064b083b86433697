"""The step loop's prompts: a built dataset through the Grain pipeline, one step batch at a time.

    data = open_train_data(config, tokenizer, user_text, vision=student.vision, workdir=workdir)
    records = next(data)        # the step's prompt records, the same list on every process
    host["data"] = data.state(); ...; data.restore(host["data"])     # exact resume

One path from stored record to step. `config.data.train_path` names either the output directory
of a builder (`zppo data build-zppo77k`, `zppo data build`: `<out>/` or `<out>/<name>/<version>/`),
read as it is, or a JSONL/Parquet prompt file, which is first built into the same record format
under `<workdir>/train_data/` (by process 0, once; reused while the file is unchanged): its rows
are checked by the rules every prompt reader shares (`data.rows`: strict types, every image form,
images decoded and sized, images refused for a text-only student, the run's prompt budget), and
each rejected row is listed with its reason in `<workdir>/rejects.jsonl`, counted in
`TrainData.rejects` and printed once. `config.data.eval_path` is read the same way
(`open_eval_records`, rejects in `<workdir>/eval_rejects.jsonl`). Then:

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
import dataclasses
import hashlib
import json
import os
import pathlib
import sys
from typing import Callable

from etils import epath
import grain
import jax

from zppo_jax import distributed
from zppo_jax.data import generic_builder, prompts, record_images, tfds_source
from zppo_jax.data import vision as vision_lib
from zppo_jax.data.generic_builder import default_user_text
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
            tokenizer=None, build_user_text: Callable[[str], str] = default_user_text,
            vision: vision_lib.VisionProcessorConfig | None = vision_lib.VisionProcessorConfig(),
            max_prompt_tokens: int = 0, name: str = "train_data",
            rejects_name: str = "rejects.jsonl", stream=None) -> pathlib.Path:
  """The builder output to read: `path` itself, or a prompt file built under the workdir.

  A prompt file's rows go through the generic builder's checks (`data.rows`, the images decoded
  and sized, the prompt budget when a tokenizer is given); each rejected row is listed with its
  reason in `<workdir>/<rejects_name>` and the counts are printed once. The file is built into
  `<workdir>/<name>/` by process 0 (once; reused while the file and the checks are unchanged).
  ArrayRecord's reader opens local files only, so with a remote workdir (`gs://`) the shards are
  built in a local cache directory (`local_cache_dir`), copied to `<workdir>/<name>/` through
  epath, and each other process copies them from there into its own cache.

  Args:
    path: a builder output directory, or a JSONL/Parquet prompt file.
    workdir: the run directory (local or remote).
    min_image_side: images with a smaller side are rejected (`small_image`).
    tokenizer, build_user_text, max_prompt_tokens: the prompt budget (0 or no tokenizer: none).
    vision: the student's image preprocessing (the image tokens of the budget); None for a
      text-only student, whose rows with images are rejected (`needs_vision`).
    name, rejects_name: where a prompt file is built and its rejects listed.
    stream: where the reject counts are printed (default stderr).

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
    raise FileNotFoundError(f"{path}: not a builder output directory nor a "
                            f"{'/'.join(PROMPT_FILE_SUFFIXES)} prompt file")
  out, rejects_path = epath.Path(workdir) / name, epath.Path(workdir) / rejects_name
  remote = not workdir_lib.is_local(out)
  local = local_cache_dir(out) if remote else pathlib.Path(out)
  local_rejects = local / rejects_name if remote else pathlib.Path(rejects_path)
  budget = max_prompt_tokens if tokenizer is not None else 0
  # What the build depends on: it is redone when any of this changes.
  stamp = {"input": str(path.resolve()), "sha256": _sha256(path),
           "min_image_side": min_image_side, "max_prompt_tokens": budget, "vision": repr(vision),
           "tokenizer": getattr(tokenizer, "name_or_path", None) if budget else None}
  if distributed.is_main():
    if not (_up_to_date(local, stamp) and local_rejects.exists()):
      # No answer-length rule here: a custom set keeps its long answers.
      config = generic_builder.BuildConfig(
          max_answer_chars=0, min_image_side=min_image_side, max_prompt_tokens=budget,
          num_shards=1, allow_images=vision is not None)
      for old in local.glob(f"{BUILT_NAME}/*/*"):
        old.unlink()
      generic_builder.build(path, local, name=BUILT_NAME, config=config,
                            tokenizer=tokenizer if budget else None,
                            build_user_text=build_user_text,
                            vision_cfg=vision or vision_lib.VisionProcessorConfig(),
                            rejects_path=local_rejects)
      (local / STAMP_FILE).write_text(json.dumps(stamp) + "\n")
    if remote:
      rejects_path.write_text(local_rejects.read_text())
      if not _same_stamp(out / STAMP_FILE, stamp):
        workdir_lib.copy_tree(epath.Path(local), out, last=STAMP_FILE)
    report = build_report(local)
    if report["rejects"]:
      print(f"data: {path}: skipped {sum(report['rejects'].values())} of {report['rows']} rows "
            f"({report['rejects']}); each with its reason in {rejects_path}",
            file=stream or sys.stderr)
  distributed.barrier(f"prepare {name}")
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


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def build_report(root: str | pathlib.Path) -> dict:
  """The generic builder's `report.json` of a built prompt file (rows, written, rejects)."""
  return json.loads((pathlib.Path(root) / "report.json").read_text())


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
    build_rejects: rows rejected when a prompt file was built (`prepare`), by reason; counted in
      `rejects`.
  """

  def __init__(self, path: str | pathlib.Path, tokenizer, build_user_text, *, vision,
               batch_size: int, seed: int, shuffle: bool = True, num_epochs: int = 0,
               max_prompt_tokens: int = 4096, min_image_side: int = 100, num_workers: int = 0,
               build_rejects: dict[str, int] | None = None):
    cfg = PipelineConfig(seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                         global_batch=batch_size, drop_last=True, num_workers=num_workers,
                         max_prompt_tokens=max_prompt_tokens, min_image_side=min_image_side,
                         vision=vision)
    self.pipeline = Pipeline(path, tokenizer, cfg,
                             shard=grain.sharding.ShardByJaxProcess(drop_remainder=True),
                             build_user_text=build_user_text)
    self.directory = tfds_source.find_dataset_dir(path)
    self.build_rejects = collections.Counter(build_rejects or {})
    self._iterator = self.pipeline.iterator()

  def __iter__(self):
    return self

  def __next__(self) -> list[dict]:
    local = [to_record(self.directory, e) for e in next(self._iterator)]
    if jax.process_count() == 1:
      return local
    light = [{k: v for k, v in r.items() if k != "prompt"} for r in local]
    parts = distributed.allgather_objects(light)
    me = jax.process_index()
    return [r for p, part in enumerate(parts) for r in (local if p == me else part)]

  @property
  def rejects(self) -> dict[str, int]:
    """Records skipped, by reason: the rows of a prompt file rejected when it was built (all of
    them), plus duplicates in the shards and records the pipeline skipped so far (this
    process)."""
    return dict(self.build_rejects + collections.Counter(self.pipeline.build_rejects)
                + self._iterator.rejects)

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


def to_record(directory: pathlib.Path, example: dict) -> dict:
  """A pipeline example -> a prompt record (images named in the shards, the pipeline's prompt)."""
  index = int(example["index"])
  ids = [int(t) for t in example["prompt_ids"]]
  prompt = (prompts.ImagePrompt(ids, example["pixel_values"], example["image_grid_thw"])
            if len(example["image_grid_thw"]) else ids)
  record = {k: example[k] for k in ("id", "source", "subset", "question", "answer")}
  record.update(images=[record_images.uri(directory, index, k)
                        for k in range(len(example["images"]))], index=index, prompt=prompt)
  if "choices" in example["meta"]:        # multiple-choice grading
    record["choices"] = example["meta"]["choices"]
  return record


@dataclasses.dataclass
class RecordSet:
  """Every usable record of a data path, in stored order, and the rejects by reason."""
  records: list[dict]
  rejects: dict[str, int]


def load_records(path: str | pathlib.Path, workdir: str | pathlib.Path, tokenizer,
                 build_user_text: Callable[[str], str], *, vision, max_prompt_tokens: int,
                 min_image_side: int, name: str = "train_data",
                 rejects_name: str = "rejects.jsonl", keep_prompts: bool = True,
                 stream=None) -> RecordSet:
  """All records of a data path at once (a held-out set): `prepare`, then one pass of the
  pipeline in stored order on every process, so each record's prompt is made as in training.

  Args:
    path, workdir, name, rejects_name, stream: as `prepare`.
    tokenizer, build_user_text, vision, max_prompt_tokens, min_image_side: as `TrainData`.
    keep_prompts: False drops each record's `prompt` (with its pixels); the trainer makes it
      again from the record when it is used (`augment.record_prompt`, the same function).
  """
  root = prepare(path, workdir, min_image_side=min_image_side, tokenizer=tokenizer,
                 build_user_text=build_user_text, vision=vision,
                 max_prompt_tokens=max_prompt_tokens, name=name, rejects_name=rejects_name,
                 stream=stream)
  built = root != pathlib.Path(path)
  rejects = collections.Counter(build_report(root)["rejects"] if built else {})
  if built and not build_report(root)["written"]:
    return RecordSet([], dict(rejects))
  cfg = PipelineConfig(shuffle=False, num_epochs=1, batch_size=0, drop_last=False,
                       max_prompt_tokens=max_prompt_tokens, min_image_side=min_image_side,
                       vision=vision)
  pipeline = Pipeline(root, tokenizer, cfg, shard=grain.sharding.NoSharding(),
                      build_user_text=build_user_text)
  directory = tfds_source.find_dataset_dir(root)
  iterator = pipeline.iterator()
  out = []
  for example in next(iterator, []):
    record = to_record(directory, example)
    if not keep_prompts:
      del record["prompt"]
    out.append(record)
  return RecordSet(out, dict(rejects + pipeline.build_rejects + iterator.rejects))


def open_train_data(config, tokenizer, build_user_text, *, vision, workdir, stream=None
                    ) -> TrainData:
  """`TrainData` for a run config (`config.data.*`, `rl.batch_prompts`, `seed`); a prompt file
  is built with the run's prompt budget, its rejected rows listed in `<workdir>/rejects.jsonl`."""
  d = config.data
  try:
    root = prepare(d.train_path, workdir, min_image_side=d.min_image_side, tokenizer=tokenizer,
                   build_user_text=build_user_text, vision=vision,
                   max_prompt_tokens=d.max_prompt_tokens, stream=stream)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"data.train_path={e}") from None
  built = root != pathlib.Path(d.train_path)
  if built and not build_report(root)["written"]:
    raise ValueError(f"data.train_path={d.train_path}: no usable rows (each rejected row and its "
                     f"reason is in {epath.Path(workdir) / 'rejects.jsonl'})")
  return TrainData(root, tokenizer, build_user_text, vision=vision,
                   batch_size=config.rl.batch_prompts, seed=config.seed, shuffle=d.shuffle,
                   num_epochs=d.num_epochs, max_prompt_tokens=d.max_prompt_tokens,
                   min_image_side=d.min_image_side, num_workers=d.num_workers,
                   build_rejects=build_report(root)["rejects"] if built else None)


def open_eval_records(config, tokenizer, build_user_text, *, vision, workdir, stream=None
                      ) -> list[dict]:
  """The held-out records of `config.data.eval_path` (empty when unset), read like training
  data; rejected rows are listed in `<workdir>/eval_rejects.jsonl`."""
  d = config.data
  if not d.eval_path:
    return []
  if not pathlib.Path(d.eval_path).exists():
    raise FileNotFoundError(f"data.eval_path={d.eval_path}: no such file or directory")
  return load_records(d.eval_path, workdir, tokenizer, build_user_text, vision=vision,
                      max_prompt_tokens=d.max_prompt_tokens, min_image_side=d.min_image_side,
                      name="eval_data", rejects_name="eval_rejects.jsonl", keep_prompts=False,
                      stream=stream).records
