"""Rebuilds ZPPO-77K (shared/ZPPO_SPEC.md §7) from local copies of its two sources.

    zppo data build-zppo77k --vero DIR --mmfinereason DIR --out OUT [--tokenizer DIR]

Sources, in their published layouts (the releases on the Hub, downloaded as they are):
- **Vero-600k**: a folder per config `<family>-<dataset>` (`stem-ai2d_merged`), holding
  `train-NNNNN-of-NNNNN.parquet` and `val-...` shards. Only `train-*` files are opened (`val` is
  Vero's held-out split). Columns: `image` (one HF Image struct `{bytes, path}`), `prompt` (chat
  messages, a struct of lists `{content, role}` or a list of messages), `data_source`, `ability`
  (the family), `reward_model {ground_truth, style}`, `extra_info {answer, question, index, ...}`.
  Gold = `reward_model.ground_truth`; question = `extra_info.question` (else the user message);
  the sub-set is the config's `<dataset>`; the row key is (config, `extra_info.index`).
- **MMFineReason-SFT-586K**: `data/train-NNNNN-of-00070.parquet`; columns `question`, `answer`
  (null for free-form rows), `image` (one `{bytes, path}` struct), `source` (the sub-set), `id`
  (int64, unique only within a source: the row key is (source, id)), `pass_rate`.

Rules, in the order they are applied (each dropped row is counted under the first rule it fails):
1. row checks shared with the generic builder: readable, UTF-8, id/question/answer present and
   strings (`no_answer` for MMFineReason's free-form rows), key unique within its source;
2. the sub-set is on the paper's tier lists (`zppo77k_subsets`), else `not_in_mixture`;
3. MMFineReason rows with pass_rate > 0.5 (`pass_rate_high`; a missing rate is `no_pass_rate`);
4. a canonical sub-set present in Vero is taken from Vero only: its MMFineReason rows are dropped
   (`vero_priority`);
5. answer <= 512 characters, one image present (`no_image`) and decodable with min side >= 100 px,
   base prompt (user turn with the RL closer, chat template, image tokens at the paper's pixel
   budget) <= 4,096 tokens;
6. caps per canonical sub-set: 2,800 for tier 1, 1,400 for tier 2 (tiers from the paper's lists);
   the kept rows are a seeded choice among the rows that pass 1-5. Rules 5-6 run together
   (`apply_caps`): rows are walked in a seeded order and checked until the cap is reached, so a
   row past the cap is counted `over_cap` without being decoded.

The report (`report.json`, `report.md`) counts rows per source, sub-set, tier and reason; every
row read appears exactly once (kept or dropped).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import json
import pathlib
from typing import Any, Callable, Iterator

import numpy as np

from zppo_jax.data import generic_builder as gb
from zppo_jax.data import records, tfds_source
from zppo_jax.data import zppo77k_subsets as subsets_lib

NAME = "zppo77k"
SOURCES = ("vero", "mmfinereason")
TIER_CAPS = {1: 2800, 2: 1400}
MAX_PASS_RATE = 0.5
DROP_REASONS = gb.REJECT_REASONS + ("not_in_mixture", "pass_rate_high", "no_pass_rate",
                                    "vero_priority", "no_image", "over_cap")
IMAGE_COLUMN = "image"      # both sources: one HF Image struct per row


def canonical_subset(name: str) -> str:
  """The canonical sub-set name, or the normalised name when ZPPO-77K does not use it."""
  return subsets_lib.canonical(name) or subsets_lib.normalise(name)


@dataclasses.dataclass
class Candidate:
  """One input row after the scan: where it is, what it is, and why it is dropped (if it is)."""
  source: str
  locator: gb.Locator
  id: str = ""
  subset: str = "?"
  tier: int = 0
  reason: str | None = None


@dataclasses.dataclass
class Zppo77kConfig:
  """The §7 rules (defaults: the paper's values)."""
  tier_caps: dict = dataclasses.field(default_factory=lambda: dict(TIER_CAPS))
  max_pass_rate: float = MAX_PASS_RATE
  filters: gb.BuildConfig = dataclasses.field(default_factory=gb.BuildConfig)
  seed: int = 0
  workers: int = 1      # processes for the image/prompt checks (no effect on the result)


def source_files(source: str, root: str | pathlib.Path) -> list[pathlib.Path]:
  """The `train-*.parquet` shards of a source below `root` (sorted); `val-*` is never listed."""
  root = pathlib.Path(root)
  files = [root] if root.is_file() else sorted(root.rglob("train-*.parquet"))
  if not files:
    raise FileNotFoundError(f"no train-*.parquet shards of {source} under {root}")
  return files


def _user_message(prompt: Any) -> Any:
  """The last user turn of Vero's `prompt`: a struct of lists or a list of messages."""
  if isinstance(prompt, dict):   # {content: [...], role: [...]}
    prompt = [{"role": r, "content": c} for r, c in zip(prompt.get("role") or (),
                                                         prompt.get("content") or ())]
  if not isinstance(prompt, list):
    return None
  users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
  return users[-1] if users else None


def _vero_fields(row: dict, path: pathlib.Path) -> dict:
  config = path.parent.name
  extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
  question = extra.get("question")
  if question is None:
    question = _user_message(row.get("prompt"))
  index = extra.get("index")
  return {"subset": subsets_lib.vero_dataset(config), "key": index,
          "question": question, "answer": gb.get_field(row, "reward_model.ground_truth"),
          "meta": {"config": config, "data_source": row.get("data_source"),
                   "ability": row.get("ability")}}


def _mmfr_fields(row: dict, path: pathlib.Path) -> dict:
  return {"subset": row.get("source"), "key": row.get("id"), "question": row.get("question"),
          "answer": row.get("answer"), "pass_rate": row.get("pass_rate"),
          "meta": {"source": row.get("source"), "pass_rate": row.get("pass_rate")}}


_FIELDS: dict[str, Callable[[dict, pathlib.Path], dict]] = {
    "vero": _vero_fields, "mmfinereason": _mmfr_fields}


class _Parsed:
  """A row turned into record fields, or the RowError that stops it."""

  def __init__(self, source: str, row: Any, path: pathlib.Path, where: str):
    if isinstance(row, gb.RowError):
      raise row
    f = _FIELDS[source](row, path)
    subset = gb.text_field(f["subset"], "subset", missing="bad_record")
    self.subset_raw, self.subset = subset, canonical_subset(subset)
    self.in_mixture = subsets_lib.canonical(subset) is not None
    self.tier = subsets_lib.tier(self.subset) if self.in_mixture else 0
    # The key is unique within a sub-set only (MMFineReason ids restart per source).
    key = gb.text_field(f["key"], "id", missing="no_id")
    self.id = f"{source}/{subset}/{key}"
    question = gb.text_field(f["question"], "question", missing="empty_question")
    self.question = gb.IMAGE_MARKER.sub("", question).strip()
    if not self.question:
      raise gb.RowError("empty_question", where)
    self.answer = gb.text_field(f["answer"], "answer", missing="no_answer")
    self.pass_rate = f.get("pass_rate")
    self.meta = f["meta"]
    self._images, self._base = row.get(IMAGE_COLUMN), path.parent

  def images(self) -> list[bytes]:
    images = gb.image_bytes(self._images, self._base)
    if not images:
      raise gb.RowError("no_image", self.id)
    return images


def _scan(source: str, files: list[pathlib.Path], config: Zppo77kConfig) -> list[Candidate]:
  """Rules 1-3 for every row of one source (cheap checks only; images are not read)."""
  out, seen = [], set()
  for f, path in enumerate(files):
    for i, row in gb.iter_file_rows(path, skip_columns=(IMAGE_COLUMN,)):
      cand = Candidate(source, gb.Locator(f, i))
      out.append(cand)
      try:
        p = _Parsed(source, row, path, f"{path.name}:{i}")
      except gb.RowError as e:
        cand.reason = e.reason
        continue
      cand.id, cand.subset, cand.tier = p.id, p.subset, p.tier
      if p.id in seen:
        cand.reason = "duplicate_id"
      elif not p.in_mixture:
        cand.reason = "not_in_mixture"
      elif source == "mmfinereason":
        cand.reason = _pass_rate_reason(p.pass_rate, config.max_pass_rate)
      seen.add(p.id)
  return out


def _pass_rate_reason(rate: Any, max_rate: float) -> str | None:
  if isinstance(rate, (bytes, str)):
    try:
      rate = float(rate)
    except ValueError:
      return "no_pass_rate"
  if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate != rate:
    return "no_pass_rate"
  return "pass_rate_high" if rate > max_rate else None


def _check_file(source: str, path: pathlib.Path, rows: set[int], budget,
                filters: gb.BuildConfig) -> dict[int, str]:
  """Rule 5 for the listed rows of one file: answer length, images, prompt budget.

  Returns:
    row number -> drop reason, for the rows that fail.
  """
  reasons = {}
  for i, row in gb.iter_file_rows(path):
    if i not in rows:
      continue
    try:
      p = _Parsed(source, row, path, f"{path.name}:{i}")
      if filters.max_answer_chars and len(p.answer) > filters.max_answer_chars:
        raise gb.RowError("answer_too_long")
      sizes = gb.check_images(p.images(), filters.min_image_side, p.id)
      if budget is not None:
        budget.check(p.question, sizes, filters.max_prompt_tokens)
    except gb.RowError as e:
      reasons[i] = e.reason
  return reasons


def _check_content(source: str, files: list[pathlib.Path], cands: list[Candidate], budget,
                   filters: gb.BuildConfig, pool=None) -> None:
  """Runs `_check_file` over the files (in `pool`'s processes if given) and records reasons.

  Decoding every image is the slow part of a build; files are independent, so they are spread
  over processes. The result does not depend on the pool.
  """
  alive = collections.defaultdict(set)
  for c in cands:
    if c.reason is None:
      alive[c.locator.file].add(c.locator.row)
  jobs = [(source, files[f], rows, budget, filters) for f, rows in sorted(alive.items())]
  if pool is not None and len(jobs) > 1:
    results = pool.starmap(_check_file, jobs, chunksize=1)
  else:
    results = [_check_file(*job) for job in jobs]
  by_loc = {c.locator: c for c in cands}
  for (f, _), reasons in zip(sorted(alive.items()), results):
    for i, reason in reasons.items():
      by_loc[gb.Locator(f, i)].reason = reason


def _subset_seed(seed: int, subset: str) -> int:
  """A per-sub-set seed, so adding or removing one sub-set never changes another's choice."""
  return int.from_bytes(hashlib.sha256(f"{seed}:{subset}".encode()).digest()[:8], "little")


def apply_caps(candidates: list[Candidate], tier_caps: dict, seed: int,
               check: Callable[[list[Candidate]], None] | None = None) -> int:
  """Rules 5-6: per canonical sub-set, a seeded choice of `tier_caps[tier]` rows that pass rule 5.

  Each sub-set's candidates (sorted by id, so file order does not matter) are put in a seeded
  random order and walked: the first `cap` rows that pass `check` are kept, the rows after them
  are `over_cap`. The kept rows are a uniform seeded choice among the rows that pass, as if every
  row had been checked first, but only about `cap` rows per sub-set are decoded (ZPPO-77K keeps
  ~77K of ~1.2M rows). `check` runs in rounds: each round checks, for every sub-set short of its
  cap, as many next rows as it is short, and sets `reason` on the ones that fail.

  Args:
    candidates: all rows; those with `reason` already set are left alone.
    tier_caps: tier -> cap.
    seed: the choice seed (combined with each sub-set's name).
    check: sets `reason` on the failing rows of a list; None accepts every row.

  Returns:
    The number of check rounds (passes over the input files).
  """
  queues = collections.defaultdict(list)
  for cand in candidates:
    if cand.reason is None:
      queues[cand.subset].append(cand)
  caps, position, kept = {}, collections.Counter(), collections.Counter()
  for subset, group in queues.items():
    group.sort(key=lambda c: c.id)
    order = np.random.default_rng(_subset_seed(seed, subset)).permutation(len(group))
    queues[subset] = [group[j] for j in order]
    caps[subset] = min(tier_caps[c.tier] for c in group)   # one tier per canonical sub-set
  rounds = 0
  while True:
    batch = []
    for subset, queue in queues.items():
      take = queue[position[subset]:position[subset] + caps[subset] - kept[subset]]
      position[subset] += len(take)
      batch += take
    if not batch:
      break
    if check is not None:
      check(batch)
      rounds += 1
    for cand in batch:
      kept[cand.subset] += cand.reason is None
  for subset, queue in queues.items():
    for cand in queue[position[subset]:]:
      cand.reason = "over_cap"
  return rounds


def build(vero: str | pathlib.Path, mmfinereason: str | pathlib.Path, out: str | pathlib.Path,
          *, tokenizer=None, build_user_text: Callable[[str], str] = gb.default_user_text,
          config: Zppo77kConfig = Zppo77kConfig()) -> dict:
  """Builds ZPPO-77K into `<out>/zppo77k/1.0.0/` and writes `<out>/report.{json,md}`.

  Args:
    vero: directory (or file) of the local Vero-600k copy.
    mmfinereason: directory (or file) of the local MMFineReason-SFT-586K copy.
    out: output root.
    tokenizer: the student's HF tokenizer (prompt budget); None skips that rule (reported).
    build_user_text: question -> the user turn (default: the trainer's ZPPO template).
    config: the rules.

  Returns:
    The report dict.
  """
  files = {"vero": source_files("vero", vero),
           "mmfinereason": source_files("mmfinereason", mmfinereason)}
  cands = {s: _scan(s, files[s], config) for s in SOURCES}
  vero_subsets = {c.subset for c in cands["vero"] if c.tier}
  for c in cands["mmfinereason"]:
    if c.reason is None and c.subset in vero_subsets:
      c.reason = "vero_priority"
  budget = gb.PromptBudget(tokenizer, build_user_text) if tokenizer is not None else None

  with contextlib.ExitStack() as stack:
    pool = None
    if config.workers > 1:
      import multiprocessing
      pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(config.workers))

    def check(batch: list[Candidate]) -> None:
      for s in SOURCES:
        _check_content(s, files[s], [c for c in batch if c.source == s], budget, config.filters,
                       pool)

    rounds = apply_caps(cands["vero"] + cands["mmfinereason"], config.tier_caps, config.seed,
                        check)

  directory = tfds_source.dataset_dir(out, NAME)
  lengths = records.write_shards(_kept_records(files, cands), directory, NAME,
                                 num_shards=config.filters.num_shards)
  tfds_source.write_metadata(directory, NAME, {"train": lengths},
                             "ZPPO-77K (arXiv 2606.18216 §7) rebuilt from Vero-600k and "
                             "MMFineReason-SFT-586K by zppo_jax.data.zppo77k")
  report = make_report(cands, config, budget is not None, str(directory))
  report["check_rounds"] = rounds
  out = pathlib.Path(out)
  (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
  (out / "report.md").write_text(report_markdown(report))
  return report


def _kept_records(files, cands) -> Iterator[dict]:
  for s in SOURCES:
    keep = {c.locator: c for c in cands[s] if c.reason is None}
    for f, path in enumerate(files[s]):
      for i, row in gb.iter_file_rows(path):
        cand = keep.get(gb.Locator(f, i))
        if cand is None:
          continue
        p = _Parsed(s, row, path, f"{path.name}:{i}")
        yield records.make_record(id=p.id, source=s, subset=p.subset, tier=p.tier,
                                  question=p.question, answer=p.answer, images=p.images(),
                                  meta={**p.meta, "subset_raw": p.subset_raw})


def make_report(cands: dict, config: Zppo77kConfig, budget_applied: bool, directory: str) -> dict:
  """Counts per source, per (source, sub-set, tier) and per drop reason."""
  sources, subsets = {}, {}
  for s, group in cands.items():
    by_reason = collections.Counter(c.reason or "kept" for c in group)
    sources[s] = {"rows": len(group), "kept": by_reason.pop("kept", 0),
                  "dropped": dict(sorted(by_reason.items()))}
    for c in group:
      entry = subsets.setdefault(f"{s}/{c.subset}", {"source": s, "subset": c.subset,
                                                     "tier": c.tier, "rows": 0, "kept": 0,
                                                     "dropped": collections.Counter()})
      entry["rows"] += 1
      if c.reason is None:
        entry["kept"] += 1
      else:
        entry["dropped"][c.reason] += 1
  for entry in subsets.values():
    entry["dropped"] = dict(sorted(entry["dropped"].items()))
  tiers = collections.Counter()
  for group in cands.values():
    for c in group:
      if c.reason is None:
        tiers[f"tier{c.tier}"] += 1
  total = sum(v["rows"] for v in sources.values())
  kept = sum(v["kept"] for v in sources.values())
  dropped = sum(sum(v["dropped"].values()) for v in sources.values())
  assert total == kept + dropped, "every row is kept or dropped exactly once"
  return {"dataset_dir": directory, "rows": total, "kept": kept, "kept_per_tier": dict(tiers),
          "sources": sources, "subsets": dict(sorted(subsets.items())),
          "rules": {"tier_caps": config.tier_caps, "max_pass_rate": config.max_pass_rate,
                    "max_answer_chars": config.filters.max_answer_chars,
                    "min_image_side": config.filters.min_image_side,
                    "max_prompt_tokens": config.filters.max_prompt_tokens if budget_applied
                    else "skipped (no tokenizer)", "seed": config.seed}}


def report_markdown(report: dict) -> str:
  lines = ["# ZPPO-77K build report", "", f"{report['kept']} of {report['rows']} rows kept "
           f"({report['kept_per_tier']}).", "", "| source | rows | kept | dropped |",
           "|---|---:|---:|---|"]
  for s, v in report["sources"].items():
    lines.append(f"| {s} | {v['rows']} | {v['kept']} | {_reasons(v['dropped'])} |")
  lines += ["", "| source/sub-set | tier | rows | kept | dropped |", "|---|---:|---:|---:|---|"]
  for key, v in report["subsets"].items():
    lines.append(f"| {key} | {v['tier']} | {v['rows']} | {v['kept']} | {_reasons(v['dropped'])} |")
  lines += ["", "Rules: " + json.dumps(report["rules"]), ""]
  return "\n".join(lines)


def _reasons(counts: dict) -> str:
  return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="zppo data build-zppo77k",
                                   description="Rebuild ZPPO-77K from Vero-600k and MMFineReason.")
  parser.add_argument("--vero", required=True)
  parser.add_argument("--mmfinereason", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--tokenizer", default=None, help="HF tokenizer directory (prompt budget)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num-shards", type=int, default=64)
  parser.add_argument("--workers", type=int, default=1, help="processes for the image checks")
  args = parser.parse_args(argv)
  config = Zppo77kConfig(seed=args.seed, workers=args.workers,
                         filters=gb.BuildConfig(num_shards=args.num_shards))
  report = build(args.vero, args.mmfinereason, args.out,
                 tokenizer=gb.load_tokenizer(args.tokenizer), config=config)
  print(report_markdown(report))
  return 0
