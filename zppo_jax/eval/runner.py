"""Runs benchmarks: load items, generate in batches, score, append every verdict as it is made.

An output directory holds
  * ``run.json``: the model and the decoding settings (a restart with other settings is refused,
    so one directory never mixes two configurations);
  * ``samples/<benchmark>.jsonl``: one `Verdict` per line, appended and flushed after each batch;
  * ``samples/<benchmark>.meta.json``: item and skip counts of the benchmark's data.
A restarted run reads the verdicts already written and only generates the missing samples. A line
cut short by a crash is ignored (its sample is redone).
"""
import dataclasses
import json
import logging
import os
import pathlib
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from zppo_jax.eval import loaders
from zppo_jax.eval.benchmarks import Benchmark, MissingMedia, RowError
from zppo_jax.eval.items import EvalItem, EvalPrompt, Verdict
from zppo_jax.eval.prompts import build_prompt
from zppo_jax.eval.scoring import Scorer

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """Evaluation decoding (shared/ZPPO_SPEC.md §8 defaults); every field is a CLI flag.

  Attributes:
    temperature, top_p, top_k, presence_penalty: sampling filters (0.6, 0.95, 20, 1.5).
    max_new_tokens: response budget (12,288).
    max_prompt_tokens: longest prompt (4,096, as in training); a longer one is an error naming it.
    min_pixels, max_pixels: image pixel budget (256·32·32 to 1280·32·32, as in training).
    video_fps, video_max_frames: frame sampling of videos.
    batch_size: prompts per `Generator.generate` call (and per flush of results).
    seed: sampling seed; a generator's ``i``-th call samples with ``seed + i`` (a resumed run
      draws other samples than an uninterrupted one would; the expected score is the same).
  """
  temperature: float = 0.6
  top_p: float = 0.95
  top_k: int = 20
  presence_penalty: float = 1.5
  max_new_tokens: int = 12_288
  max_prompt_tokens: int = 4_096
  min_pixels: int = 256 * 32 * 32
  max_pixels: int = 1280 * 32 * 32
  video_fps: float = 2.0
  video_max_frames: int = 64
  batch_size: int = 64
  seed: int = 0


class Generator(Protocol):
  """Produces one response per prompt, in order."""

  def generate(self, prompts: Sequence[EvalPrompt]) -> list[str]:
    ...


class RecordedGenerator:
  """Replays recorded responses (``{"uid": "bench/uid", "response": ...}`` JSONL or a dict).

  Useful to score outputs produced elsewhere and to test scoring and resume deterministically.
  A prompt without a recorded response is an error naming it.
  """

  def __init__(self, responses: dict[str, str] | os.PathLike):
    if not isinstance(responses, dict):
      rows = loaders.read_rows(pathlib.Path(responses))
      responses = {str(r["uid"]): str(r["response"]) for r in rows}
    self.responses = responses
    self.calls = 0

  def generate(self, prompts: Sequence[EvalPrompt]) -> list[str]:
    self.calls += 1
    missing = [p.uid for p in prompts if p.uid not in self.responses]
    if missing:
      raise KeyError(f"no recorded response for {missing[:3]} ({len(missing)} missing)")
    return [self.responses[p.uid] for p in prompts]


@dataclasses.dataclass
class LoadedBenchmark:
  """A benchmark's items and what its data had to skip."""
  items: list[EvalItem]
  skipped: Counter  # reason -> count
  errors: list[str]  # the first few row errors, naming the row


def load_items(bench: Benchmark, data_dir: os.PathLike, limit: int | None = None,
               max_errors: int = 20) -> LoadedBenchmark:
  """Reads ``data_dir/<bench.data_name>`` (its ``config`` sub-directory when present) into items.

  Rows the adapter drops by design count as ``excluded``; rows it cannot read count as ``bad_row``
  (the first ``max_errors`` messages name the row); repeated uids count as ``duplicate_uid``.
  Rows whose video file is not stored count as ``missing_video``, with one message naming the
  first missing file and the count. A benchmark with ``settings`` reads each setting's config
  sub-directory (it must exist) and prefixes each uid with ``<setting>/``.
  """
  root = pathlib.Path(data_dir) / bench.data_name
  if bench.settings:
    parts = []
    for setting in bench.settings:
      if not (root / setting).is_dir():
        raise loaders.DataError(f"{bench.name}: setting {setting!r} not found: {root / setting} "
                                f"(the score is the mean of {', '.join(bench.settings)})")
      parts.append((setting + "/", root / setting))
  else:
    parts = [("", root / bench.config if bench.config and (root / bench.config).is_dir()
              else root)]
  items, seen, skipped, errors, missing = [], set(), Counter(), [], []
  for prefix, rows_root in parts:
    for n, row in enumerate(loaders.load_rows(rows_root, bench.split)):
      try:
        item = bench.adapter(row, root)  # Media paths are relative to the release's root.
      except MissingMedia as e:
        skipped["missing_video"] += 1
        missing.append(e.path)
        continue
      except (RowError, KeyError, TypeError, ValueError) as e:
        skipped["bad_row"] += 1
        if len(errors) < max_errors:
          errors.append(f"{bench.name}: {row.get('_file')} row {n}: {e}")
        continue
      if item is None:
        skipped["excluded"] += 1
        continue
      if prefix:
        item = dataclasses.replace(item, uid=prefix + item.uid,
                                   meta={**item.meta, "setting": prefix[:-1]})
      if item.uid in seen:
        skipped["duplicate_uid"] += 1
      else:
        seen.add(item.uid)
        items.append(item)
      if limit is not None and len(items) >= limit:
        break
  if missing:
    errors.insert(0, f"{bench.name}: {len(missing)} rows skipped: their video files are not "
                     f"under {root} (first missing: {missing[0]!r})")
  return LoadedBenchmark(items, skipped, errors)


def read_verdicts(path: pathlib.Path) -> dict[str, Verdict]:
  """The verdicts of a samples file by uid (the last one wins); torn lines are ignored."""
  done: dict[str, Verdict] = {}
  if not path.exists():
    return done
  with path.open(encoding="utf-8") as f:
    for line in f:
      try:
        verdict = Verdict.from_json(json.loads(line))
      except (json.JSONDecodeError, KeyError, TypeError):
        continue
      done[verdict.uid] = verdict
  return done


def _drop_torn_tail(path: pathlib.Path) -> None:
  """Cuts a last line left incomplete by a crash, so that appends start on a fresh line."""
  if not path.exists() or path.stat().st_size == 0:
    return
  with path.open("rb+") as f:
    data = f.read()
    if not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)


def _check_run_config(out_dir: pathlib.Path, run_info: dict) -> None:
  path = out_dir / "run.json"
  if path.exists():
    previous = json.loads(path.read_text())
    if previous != run_info:
      changed = sorted(k for k in set(previous) | set(run_info)
                       if previous.get(k) != run_info.get(k))
      raise ValueError(f"{out_dir} holds a run with other settings ({', '.join(changed)} differ); "
                       "use another --out directory")
  else:
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run_info, indent=2, sort_keys=True))


def _generate(generator: Generator, prompts: list[EvalPrompt]) -> list[str | ValueError]:
  """Responses of a batch; if the batch fails on bad input (`ValueError`, e.g. an unreadable
  image), its prompts are generated one by one and each failing one gets its error instead."""
  try:
    responses = generator.generate(prompts)
  except ValueError as e:
    if len(prompts) == 1:
      _log.warning("generation failed for %s: %s", prompts[0].uid, e)
      return [e]
    responses = []
    for prompt in prompts:
      responses += _generate(generator, [prompt])
  if len(responses) != len(prompts):
    raise RuntimeError(f"generator returned {len(responses)} responses for {len(prompts)}")
  return responses


def run_benchmark(bench: Benchmark, data_dir: os.PathLike, out_dir: os.PathLike,
                  generator: Generator, scorer: Scorer, decoding: DecodingConfig = DecodingConfig(),
                  limit: int | None = None, max_batches: int | None = None) -> dict:
  """Evaluates one benchmark, resuming from ``out_dir/samples/<name>.jsonl``.

  Args:
    bench: the benchmark.
    data_dir: holds ``<bench.data_name>/``.
    out_dir: the run directory.
    generator: produces responses.
    scorer: scores them.
    decoding: for the batch size and seed.
    limit: evaluate only the first ``limit`` items (smoke runs).
    max_batches: stop after this many batches (the rest is left for a restart).

  Returns:
    Counts: ``items``, ``done_before`` (resumed), ``generated`` (this call), ``skipped``.
  """
  samples = pathlib.Path(out_dir) / "samples"
  samples.mkdir(parents=True, exist_ok=True)
  loaded = load_items(bench, data_dir, limit)
  for message in loaded.errors:
    _log.warning("skipped %s", message)
  meta = {"items": len(loaded.items), "skipped": dict(loaded.skipped), "errors": loaded.errors}
  (samples / f"{bench.name}.meta.json").write_text(json.dumps(meta, indent=2))
  path = samples / f"{bench.name}.jsonl"
  _drop_torn_tail(path)
  done = read_verdicts(path)
  pending = [it for it in loaded.items if it.uid not in done]
  generated = 0
  with path.open("a", encoding="utf-8") as f:
    for b, start in enumerate(range(0, len(pending), decoding.batch_size)):
      if max_batches is not None and b >= max_batches:
        break
      batch = pending[start:start + decoding.batch_size]
      responses = _generate(generator, [build_prompt(bench.name, it) for it in batch])
      ok = [k for k, r in enumerate(responses) if isinstance(r, str)]
      verdicts = dict(zip(ok, scorer.score([batch[k] for k in ok], [responses[k] for k in ok])))
      for k, item in enumerate(batch):
        verdict = verdicts.get(k) or Verdict(item.uid, 0.0, "error", None, item.gold, "",
                                             error=str(responses[k]))
        f.write(json.dumps(verdict.to_json(), ensure_ascii=False) + "\n")
      f.flush()
      os.fsync(f.fileno())
      generated += len(batch)
  return {"items": len(loaded.items), "done_before": len(loaded.items) - len(pending),
          "generated": generated, "skipped": dict(loaded.skipped)}


def run_eval(benchmarks: Sequence[Benchmark], data_dir: os.PathLike, out_dir: os.PathLike,
             generator: Generator, scorer: Scorer, decoding: DecodingConfig = DecodingConfig(),
             run_info: dict | None = None, limit: int | None = None) -> dict[str, dict]:
  """Evaluates several benchmarks into one run directory (see the module docstring).

  Args:
    run_info: what identifies the configuration (model, decoding); stored in ``run.json`` and
      compared on restart. Defaults to the decoding settings.
  """
  out_dir = pathlib.Path(out_dir)
  info = dict(run_info or {})
  info.setdefault("decoding", dataclasses.asdict(decoding))
  _check_run_config(out_dir, json.loads(json.dumps(info)))
  counts = {}
  for bench in benchmarks:
    counts[bench.name] = run_benchmark(bench, data_dir, out_dir, generator, scorer, decoding,
                                       limit)
    _log.info("%s: %s", bench.name, counts[bench.name])
  return counts
