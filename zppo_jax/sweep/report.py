"""`zppo sweep report`: the variants of a sweep side by side.

Writes into the sweep's root directory (or `--out`, needed when the root is `gs://...`):
- `sweep_report.md` and `sweep_report.csv`: one row per variant with its swept values, state, final
  training metrics (from `metrics.jsonl` and `summary.json`) and, where the variant's workdir holds
  an evaluation (`WORKDIR/eval/report.json`, or `WORKDIR/*/report.json`, as written by
  `zppo eval --out`), the family averages.
- `plots/rewards.png`: `reward/plain` (and held-out accuracy, and the fraction of plain groups
  with zero advantages) over steps, one curve per variant, one panel per part of the sweep (the
  method comparison, the I ablation, ...).
- `plots/by_<key>.png`: the final reward (and held-out accuracy) per value of each swept key, e.g.
  the paper's inner-iteration (I) and normalisation sweeps.
- `plots/graduations.png`: replay-buffer admissions and graduations per variant (by method), and
  the fraction graduated by plain accuracy at admission (the 0% bin first).
- `plots/heldout.png`: held-out accuracy per subset (the demo's levels) before and after, per
  variant.
With `config.seed` swept, the report adds a table over seeds: each setting's mean and spread.
"""
from __future__ import annotations

import csv
import io
import json
import pathlib

from etils import epath

from zppo_jax.sweep import hyper, state as state_lib
from zppo_jax.sweep import runner
from zppo_jax.sweep.runner import Plan
from zppo_jax.zppo import replay_buffer

# Metrics columns: (column, metrics key, how) with how = "last" (final value) or "tail" (mean over
# the last tenth of the steps, at least one step: smoother than one noisy step).
METRICS = (
    ("reward", state_lib.REWARD_KEY, "last"),
    ("reward_tail", state_lib.REWARD_KEY, "tail"),
    ("eval_accuracy", "eval/accuracy", "last"),
    ("buffer_size", "buffer/size", "last"),
    ("admitted", "buffer/admitted_total", "last"),
    ("graduated", "buffer/graduated_total", "last"),
    ("loss", "update/loss", "tail"),
    ("sec_per_step", "time_step", "tail"),
)
FAMILIES = ("llm", "vlm", "video")


def _tail_mean(rows: list[dict], key: str) -> float | None:
  values = [v for v in (state_lib.number(r.get(key)) for r in rows) if v is not None]
  if not values:
    return None
  n = max(1, len(values) // 10)
  return sum(values[-n:]) / n


def find_eval_report(workdir: epath.Path) -> epath.Path | None:
  """`WORKDIR/eval/report.json`, else the first `WORKDIR/*/report.json`, else None."""
  preferred = workdir / "eval" / "report.json"
  if preferred.exists():
    return preferred
  found = sorted(workdir.glob("*/report.json"))
  return found[0] if found else None


def variant_row(plan: Plan, variant: hyper.Variant) -> dict:
  """One report row: name, swept values, state, final metrics and evaluation family averages."""
  workdir = plan.workdir(variant)
  rows = state_lib.read_rows(workdir)
  status = plan.status(variant)
  row: dict = {"variant": variant.name}
  for key in variant.swept:
    row[hyper.short_key(key, variant.swept)] = plan.values.get(variant.name, {}).get(
        key, variant.label(key))
  row.update(state=status.state, step=status.step, total_steps=status.total_steps)
  for column, key, how in METRICS:
    row[column] = state_lib.last_value(rows, key) if how == "last" else _tail_mean(rows, key)
  row.update(diagnostics(rows))
  summary_path = workdir / "summary.json"
  if summary_path.exists():
    summary = json.loads(summary_path.read_text())
    for when in ("before", "after"):
      for key, value in summary.get(f"eval_{when}", {}).items():
        if key == "eval/accuracy" or key.startswith("eval/accuracy/"):
          subset = key[len("eval/accuracy"):].replace("/", "_")
          row[f"heldout{subset}_{when}"] = float(value)
  report = find_eval_report(workdir)
  if report is not None:
    families = json.loads(report.read_text()).get("families", {})
    for family in FAMILIES:
      if family in families:
        f = families[family]
        row[f"eval_{family}"] = float(f["accuracy"])
        row[f"eval_{family}_partial"] = f.get("benchmarks", 0) < f.get("expected", 0)
  if variant.same_as:
    row["same_as"] = variant.same_as
  return row


def diagnostics(rows: list[dict]) -> dict:
  """The paper's diagnostics of one run from its metrics: buffer entries admitted at 0% plain
  accuracy and how many graduated; BCQ / NCQ prompts built and solved (>= 1 correct rollout);
  the mean fraction of plain groups with every advantage zero."""
  last = rows[-1] if rows else {}
  zero = replay_buffer.accuracy_bin(0.0)
  out = {"admitted_0": state_lib.number(last.get(f"buffer/admitted_bin/{zero}")),
         "graduated_0": state_lib.number(last.get(f"buffer/graduated_bin/{zero}"))}
  if out["admitted_0"] is not None and out["graduated_0"] is None:
    out["graduated_0"] = 0.0
  for kind in ("bcq", "ncq"):
    built = sum(state_lib.number(r.get(f"groups/{kind}")) or 0.0 for r in rows)
    if built:
      out[f"{kind}_built"] = built
      out[f"{kind}_solved"] = sum(state_lib.number(r.get(f"solved/{kind}")) or 0.0 for r in rows)
  fractions = [v for v in (state_lib.number(r.get("zero_adv_frac/plain")) for r in rows)
               if v is not None]
  if fractions:
    out["zero_adv_plain"] = sum(fractions) / len(fractions)
  return out


SEED_KEY = "config.seed"
CURVE_LABELS = {state_lib.REWARD_KEY: "mean reward, plain prompts",
                "eval/accuracy": "held-out accuracy",
                "zero_adv_frac/plain": "plain groups with zero advantages"}


def over_seeds(variants: list[hyper.Variant], rows: list[dict]) -> list[dict]:
  """With `config.seed` swept: one row per setting of the other keys, each numeric column as
  the mean over its finished seeds (over every seed while none has finished), its spread
  (max - min) beside it, and how many seeds that is."""
  if not variants or SEED_KEY not in variants[0].swept:
    return []
  groups: dict[str, list[dict]] = {}
  for v, r in zip(variants, rows):
    groups.setdefault(_others(v, SEED_KEY) or "all", []).append(r)
  seed_col = hyper.short_key(SEED_KEY, variants[0].swept)
  out = []
  for name, members in groups.items():
    done = [r for r in members if r.get("state") == "finished"] or members
    row = {"variant": name, "seeds": len(done)}
    for column in _columns(done):
      values = [r.get(column) for r in done]
      if column in ("variant", "step", "total_steps", seed_col) or not all(
          isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
        continue
      row[column] = sum(values) / len(values)
      if len(values) > 1:
        row[f"{column}_spread"] = max(values) - min(values)
    out.append(row)
  return out


def _columns(rows: list[dict]) -> list[str]:
  """The union of row keys in first-seen order, without columns that are empty in every row."""
  columns: list[str] = []
  for row in rows:
    columns.extend(k for k in row if k not in columns)
  return [c for c in columns if any(r.get(c) is not None for r in rows)
          and not c.endswith("_partial")]


def _cell(value, partial: bool = False) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    text = f"{value:.4g}"
  else:
    text = str(value)
  return text + ("*" if partial else "")


def markdown_table(rows: list[dict]) -> str:
  """The rows as a markdown table; a partial evaluation family average is starred."""
  columns = _columns(rows)
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "|".join("---:" if any(isinstance(r.get(c), (int, float)) for r in rows)
                          and c not in ("variant", "state") else "---" for c in columns) + "|"]
  for r in rows:
    lines.append("| " + " | ".join(_cell(r.get(c), bool(r.get(c + "_partial")))
                                   for c in columns) + " |")
  if any(r.get(c) for r in rows for c in r if c.endswith("_partial")):
    lines.append("\n\\* partial: some benchmarks of the family were not evaluated.")
  return "\n".join(lines)


def csv_table(rows: list[dict]) -> str:
  columns = _columns(rows) + sorted({c for r in rows for c in r if c.endswith("_partial")})
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  for r in rows:
    writer.writerow({c: r.get(c, "") if r.get(c) is not None else "" for c in columns})
  return buf.getvalue()


def write_plots(plan: Plan, variants: list[hyper.Variant], rows: list[dict],
                out_dir: pathlib.Path) -> list[pathlib.Path]:
  """The comparison figures (see the module docstring); returns the paths written."""
  import matplotlib  # Only the report needs it.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out_dir.mkdir(parents=True, exist_ok=True)
  written = []

  def save(fig, name):
    path = out_dir / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

  # Curves: one panel per part of the sweep (the variants that set the same keys: the method
  # comparison, the I ablation, ...), one curve per variant; a row for held-out accuracy if any.
  parts: dict[tuple[str, ...], list[hyper.Variant]] = {}
  for v in variants:
    parts.setdefault(tuple(k for k in v.swept if k in v.point), []).append(v)
  curves = {v.run_name: state_lib.read_rows(plan.workdir(v)) for v in variants}
  keys = [k for k in (state_lib.REWARD_KEY, "eval/accuracy", "zero_adv_frac/plain")
          if any(state_lib.number(r.get(k)) is not None for rs in curves.values() for r in rs)]
  if keys:
    fig, axes = plt.subplots(len(keys), len(parts), figsize=(6 * len(parts), 4 * len(keys)),
                             squeeze=False)
    styles = ("-", "--", ":", "-.")
    for col, (part, members) in enumerate(parts.items()):
      title = " x ".join(hyper.short_key(k, members[0].swept) for k in part) or "variants"
      for row, key in enumerate(keys):
        ax = axes[row][col]
        for i, v in enumerate(members):
          pts = [(r["step"], state_lib.number(r.get(key))) for r in curves[v.run_name]]
          pts = [p for p in pts if p[1] is not None]
          if pts:
            ax.plot(*zip(*pts), styles[i // 10 % 4], marker=".", color=f"C{i % 10}",
                    label=v.name + (f" (= {v.same_as})" if v.same_as else ""))
        ylabel = CURVE_LABELS[key]
        ax.set(xlabel="step", ylabel=ylabel, title=f"{ylabel} by {title}")
        if ax.lines:
          ax.legend(fontsize=7)
    save(fig, "rewards.png")

  # Final metric per swept value: one figure per swept key, bars grouped by the other keys.
  swept = variants[0].swept if variants else ()
  for key in swept:
    alias = hyper.short_key(key, swept)
    members = [(v, r) for v, r in zip(variants, rows) if key in v.point]
    values = list(dict.fromkeys(v.label(key) for v, _ in members))
    if len(values) < 2:
      continue
    metrics = [m for m in ("reward_tail", "eval_accuracy", "heldout_after", "eval_llm", "eval_vlm")
               if any(r.get(m) is not None for _, r in members)]
    if not metrics:
      continue
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(5, 0.6 * len(values) + 2) * len(metrics),
                                                       4), squeeze=False)
    groups = list(dict.fromkeys(_others(v, key) for v, _ in members))
    width = 0.8 / len(groups)
    for ax, metric in zip(axes[0], metrics):
      for g, group in enumerate(groups):
        heights = []
        for value in values:
          hit = [r.get(metric) for v, r in members if v.label(key) == value
                 and _others(v, key) == group]
          heights.append(hit[0] if hit and hit[0] is not None else 0.0)
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(values))]
        ax.bar(xs, heights, width, label=group or None)
      ax.set_xticks(range(len(values)), values, rotation=30 if len(values) > 4 else 0,
                    ha="right" if len(values) > 4 else "center", fontsize=8)
      ax.set(xlabel=alias, ylabel=metric, title=f"{metric} by {alias}")
      if any(groups):
        ax.legend(fontsize=7)
    save(fig, f"by_{alias.replace('.', '_')}.png")

  # Replay-buffer graduations per variant (the method comparison of the paper): totals, and the
  # fraction graduated by plain accuracy at admission (the paper's figure 4), side by side.
  grads = [(v, r) for v, r in zip(variants, rows) if r.get("admitted") is not None]
  if grads:
    bins = {v.name: graduation_bins(curves[v.run_name]) for v, _ in grads}
    labels = sorted({b for per in bins.values() for b in per}, key=float)
    fig, axes = plt.subplots(1, 2 if labels else 1, squeeze=False,
                             figsize=(max(6, 0.7 * len(grads) + 2) * (2 if labels else 1), 4))
    ax = axes[0][0]
    xs = range(len(grads))
    ax.bar([x - 0.2 for x in xs], [r["admitted"] for _, r in grads], 0.4, label="admitted")
    ax.bar([x + 0.2 for x in xs], [r.get("graduated") or 0.0 for _, r in grads], 0.4,
           label="graduated")
    ax.set_xticks(list(xs), [v.name for v, _ in grads], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="questions (cumulative)", title="Replay buffer: admitted and graduated")
    ax.legend(fontsize=8)
    if labels:
      ax = axes[0][1]
      width = 0.8 / len(grads)
      for i, (v, _) in enumerate(grads):
        heights = [bins[v.name].get(b, 0.0) for b in labels]
        ax.bar([j + (i - (len(grads) - 1) / 2) * width for j in range(len(labels))], heights,
               width, label=v.name, color=f"C{i % 10}")
      ax.set_xticks(range(len(labels)), labels, fontsize=8)
      ax.set(xlabel="plain accuracy when admitted", ylabel="fraction graduated",
             title="Graduation by entry accuracy", ylim=(0, 1.05))
      ax.legend(fontsize=6)
    save(fig, "graduations.png")

  # Held-out accuracy per subset, before (light) and after (dark), one group of bars per variant.
  subsets = sorted({c[len("heldout_"):-len("_after")] for r in rows for c in r
                    if c.startswith("heldout_") and c.endswith("_after") and c != "heldout_after"})
  if subsets:
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) * len(subsets) / 2 + 2), 4))
    width = 0.8 / len(subsets)
    for j, subset in enumerate(subsets):
      xs = [i + (j - (len(subsets) - 1) / 2) * width for i in range(len(rows))]
      ax.bar(xs, [r.get(f"heldout_{subset}_before") or 0.0 for r in rows], width,
             color=f"C{j % 10}", alpha=0.3)
      ax.bar(xs, [r.get(f"heldout_{subset}_after") or 0.0 for r in rows], width * 0.5,
             color=f"C{j % 10}", label=f"{subset} (after; light: before)")
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=30, ha="right",
                  fontsize=8)
    ax.set(ylabel="held-out accuracy", title="Held-out accuracy per subset", ylim=(0, 1.05))
    ax.legend(fontsize=7)
    save(fig, "heldout.png")
  return written


def graduation_bins(rows: list[dict]) -> dict[str, float]:
  """Entry-accuracy bin -> graduated / admitted, from the last row's `buffer/*_bin/<bin>` totals."""
  last = rows[-1] if rows else {}
  out = {}
  for key, value in last.items():
    if key.startswith("buffer/admitted_bin/") and state_lib.number(value):
      b = key.rsplit("/", 1)[-1]
      graduated = state_lib.number(last.get(f"buffer/graduated_bin/{b}")) or 0.0
      out[b] = graduated / state_lib.number(value)
  return out


def _others(variant: hyper.Variant, key: str) -> str:
  """The variant's name without `key`: what else distinguishes it within a by-key plot."""
  alias = hyper.short_key(key, variant.swept)
  return ",".join(p for p in variant.name.split(",") if not p.startswith(alias + "="))


def write_report(plan: Plan, variants: list[hyper.Variant], plots: bool = True,
                 out_dir: str | pathlib.Path | None = None) -> dict:
  """Writes the tables (and plots); returns {"rows", "markdown", "paths"}.

  Args:
    out_dir: where the files go; defaults to the sweep root, which must then be local.
  """
  if out_dir is None and runner.is_remote(plan.root):
    raise ValueError(f"the sweep root {plan.root} is remote: give a local --out for the report")
  out = pathlib.Path(out_dir or str(plan.root))
  rows = [variant_row(plan, v) for v in variants]
  out.mkdir(parents=True, exist_ok=True)
  md = markdown_table(rows)
  seeds = over_seeds(variants, rows)
  if seeds:
    md += "\n\nOver seeds (mean; `_spread` = max - min):\n\n" + markdown_table(seeds)
  paths = [out / "sweep_report.md", out / "sweep_report.csv"]
  paths[0].write_text(f"# Sweep {plan.config_path}\n\n{md}\n")
  paths[1].write_text(csv_table(rows))
  if plots:
    paths += write_plots(plan, variants, rows, out / "plots")
  return {"rows": rows, "markdown": md, "paths": paths}
