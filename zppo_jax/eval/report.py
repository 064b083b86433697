"""Reports: per-benchmark accuracy and family averages of a run; differences between two runs.

Accuracy is the mean verdict score of a benchmark's scored samples, in percent. A family average is
the unweighted mean over the family's benchmarks present in the run (shared/ZPPO_SPEC.md §8), so
the average of a run missing a benchmark is marked partial. `compare` gives per-family mean
differences with a 95% percentile bootstrap over benchmarks (10,000 resamples by default).
"""
import json
import os
import pathlib
from collections import Counter

import numpy as np

from zppo_jax.eval.benchmarks import BENCHMARKS, FAMILIES
from zppo_jax.eval.runner import read_verdicts

FAMILY_TITLES = {"vlm": "VLM", "llm": "LLM", "video": "Video"}


def summarize(run_dir: os.PathLike) -> dict:
  """Per-benchmark and per-family results of a run directory.

  Returns:
    ``{"benchmarks": {name: {title, family, accuracy, scored, items, complete, paths, skipped
    [, settings]}}, "families": {family: {accuracy, benchmarks, expected}}}``; accuracy in
    percent. A benchmark with settings (MMMU-Pro) has each setting's accuracy in ``settings``
    and their mean as ``accuracy``.
  """
  samples = pathlib.Path(run_dir) / "samples"
  if not samples.is_dir():
    raise FileNotFoundError(f"{run_dir} has no samples/ directory (not an eval run)")
  benchmarks = {}
  for name, bench in BENCHMARKS.items():
    verdicts = read_verdicts(samples / f"{name}.jsonl")
    if not verdicts:
      continue
    meta_path = samples / f"{name}.meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    scores = [v.score for v in verdicts.values()]
    items = meta.get("items", len(scores))
    benchmarks[name] = {
        "title": bench.title, "family": bench.family,
        "accuracy": 100.0 * float(np.mean(scores)), "scored": len(scores), "items": items,
        "complete": len(scores) >= items,
        "paths": dict(Counter(v.path for v in verdicts.values())),
        "skipped": meta.get("skipped", {}),
    }
    if bench.settings:   # the official number: the mean over the settings, each also shown
      by_setting = {s: [v.score for uid, v in verdicts.items() if uid.startswith(s + "/")]
                    for s in bench.settings}
      settings = {s: 100.0 * float(np.mean(v)) for s, v in by_setting.items() if v}
      benchmarks[name]["settings"] = settings
      benchmarks[name]["accuracy"] = float(np.mean(list(settings.values())))
      benchmarks[name]["complete"] &= len(settings) == len(bench.settings)
  families = {}
  for family in FAMILIES:
    members = [b for b in benchmarks.values() if b["family"] == family]
    if members:
      expected = sum(b.family == family for b in BENCHMARKS.values())
      families[family] = {"accuracy": float(np.mean([b["accuracy"] for b in members])),
                          "benchmarks": len(members), "expected": expected}
  return {"benchmarks": benchmarks, "families": families}


def markdown(summary: dict) -> str:
  """A markdown table of a summary: one row per benchmark, then the family averages."""
  lines = ["| Benchmark | Family | Accuracy | Scored / items | Judge-decided |",
           "|---|---|---:|---:|---:|"]
  for b in summary["benchmarks"].values():
    judged = sum(n for p, n in b["paths"].items() if p == "judge")
    flag = "" if b["complete"] else " (incomplete)"
    lines.append(f"| {b['title']} | {FAMILY_TITLES[b['family']]} | {b['accuracy']:.1f}{flag} | "
                 f"{b['scored']} / {b['items']} | {judged} |")
    for setting, accuracy in b.get("settings", {}).items():
      lines.append(f"| {b['title']}: {setting} | | {accuracy:.1f} | | |")
  lines += ["", "| Family | Average | Benchmarks |", "|---|---:|---:|"]
  for family, f in summary["families"].items():
    partial = "" if f["benchmarks"] == f["expected"] else " (partial)"
    lines.append(f"| {FAMILY_TITLES[family]} | {f['accuracy']:.1f}{partial} | "
                 f"{f['benchmarks']} / {f['expected']} |")
  return "\n".join(lines) + "\n"


def write_report(run_dir: os.PathLike) -> dict:
  """Writes ``report.json`` and ``report.md`` into the run directory; returns the summary."""
  run_dir = pathlib.Path(run_dir)
  summary = summarize(run_dir)
  (run_dir / "report.json").write_text(json.dumps(summary, indent=2))
  (run_dir / "report.md").write_text(markdown(summary))
  return summary


def bootstrap_mean_ci(values, resamples: int = 10_000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of ``values``.

  Each resample draws ``len(values)`` values with replacement (one ``integers`` call for all
  resamples, row-major); the interval is the ``(1-level)/2`` and ``(1+level)/2`` quantiles (numpy's
  default linear interpolation) of the resampled means.

  Args:
    values: float[n], n >= 1 (per-benchmark differences).
    resamples: number of bootstrap resamples.
    level: coverage of the interval.
    seed: seeds `numpy.random.default_rng`.

  Returns:
    (low, high).
  """
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError("bootstrap needs a non-empty 1-D array")
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, values.size, size=(resamples, values.size))
  means = values[idx].mean(axis=1)
  alpha = (1.0 - level) / 2.0
  low, high = np.quantile(means, [alpha, 1.0 - alpha])
  return float(low), float(high)


def _load_summary(run: os.PathLike) -> dict:
  run = pathlib.Path(run)
  if run.is_file():
    return json.loads(run.read_text())
  return summarize(run)


def compare(run_a: os.PathLike, run_b: os.PathLike, resamples: int = 10_000,
            seed: int = 0) -> dict:
  """Per-family differences B - A over the benchmarks both runs scored, with bootstrap CIs.

  Args:
    run_a, run_b: run directories or their ``report.json``.
    resamples: bootstrap resamples over benchmarks.
    seed: bootstrap seed.

  Returns:
    ``{"benchmarks": {name: {a, b, diff}}, "families": {family: {a, b, diff, ci95, benchmarks}}}``.
  """
  a, b = _load_summary(run_a), _load_summary(run_b)
  shared = [n for n in BENCHMARKS if n in a["benchmarks"] and n in b["benchmarks"]]
  rows = {n: {"a": a["benchmarks"][n]["accuracy"], "b": b["benchmarks"][n]["accuracy"]}
          for n in shared}
  for r in rows.values():
    r["diff"] = r["b"] - r["a"]
  families = {}
  for family in FAMILIES:
    names = [n for n in shared if BENCHMARKS[n].family == family]
    if not names:
      continue
    diffs = np.array([rows[n]["diff"] for n in names])
    families[family] = {
        "a": float(np.mean([rows[n]["a"] for n in names])),
        "b": float(np.mean([rows[n]["b"] for n in names])),
        "diff": float(diffs.mean()),
        "ci95": list(bootstrap_mean_ci(diffs, resamples, 0.95, seed)),
        "benchmarks": len(names),
    }
  return {"benchmarks": rows, "families": families}


def compare_markdown(result: dict, name_a: str = "A", name_b: str = "B") -> str:
  """A markdown table of `compare`'s result."""
  lines = [f"| Family | {name_a} | {name_b} | Δ ({name_b} − {name_a}) | 95% CI | Benchmarks |",
           "|---|---:|---:|---:|---|---:|"]
  for family, f in result["families"].items():
    lo, hi = f["ci95"]
    lines.append(f"| {FAMILY_TITLES[family]} | {f['a']:.1f} | {f['b']:.1f} | {f['diff']:+.2f} | "
                 f"[{lo:+.2f}, {hi:+.2f}] | {f['benchmarks']} |")
  lines += ["", f"| Benchmark | {name_a} | {name_b} | Δ |", "|---|---:|---:|---:|"]
  for name, r in result["benchmarks"].items():
    lines.append(f"| {BENCHMARKS[name].title} | {r['a']:.1f} | {r['b']:.1f} | {r['diff']:+.2f} |")
  return "\n".join(lines) + "\n"
