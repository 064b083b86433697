"""`zppo plot WORKDIR`: PNG figures from `metrics.jsonl`, like the paper's.

- `rewards.png`: mean reward per prompt kind (plain, BCQ, NCQ, hint, prefix) over steps, and the
  held-out accuracy when it was measured.
- `buffer.png`: replay-buffer size and cumulative admissions, graduations and evictions.
- `graduation.png`: the fraction of admitted questions that graduated, by entry-accuracy bin
  (the paper's figure 4).
- `composition.png`: prompts per step: new, replayed, BCQ, NCQ, hint, prefix.
"""
from __future__ import annotations

import sys

from etils import epath

from zppo_jax.train.metrics import read_metrics

KINDS = ("plain", "bcq", "ncq", "hint", "prefix")


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
  pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
  return [p[0] for p in pts], [float(p[1]) for p in pts]


def write_plots(workdir: epath.PathLike) -> list[epath.Path]:
  """Writes the figures into `WORKDIR/plots` (local or `gs://`) and returns their paths."""
  import matplotlib  # Imported here so that `zppo --help` and training do not pay for it.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  workdir = epath.Path(workdir)
  rows = read_metrics(workdir)
  if not rows:
    raise FileNotFoundError(f"no metrics in {workdir / 'metrics.jsonl'}")
  out_dir = workdir / "plots"
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []

  from matplotlib.ticker import MaxNLocator

  def save(fig, name):
    for ax in fig.axes:
      if ax.get_xlabel() == "step":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path = out_dir / name
    fig.tight_layout()
    with path.open("wb") as f:    # Through epath: the workdir may be remote.
      fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    written.append(path)

  fig, ax = plt.subplots(figsize=(6, 4))
  for kind in KINDS:
    x, y = _series(rows, f"reward/{kind}")
    if x:
      ax.plot(x, y, marker=".", label=kind)
  for key, style in (("eval/accuracy", "k--"),):
    x, y = _series(rows, key)
    if x:
      ax.plot(x, y, style, marker="o", label="held-out accuracy")
  ax.set(xlabel="step", ylabel="mean reward", title="Rewards per prompt kind", ylim=(-0.02, 1.02))
  ax.legend(fontsize=8)
  save(fig, "rewards.png")

  fig, ax = plt.subplots(figsize=(6, 4))
  for key, label in (("buffer/size", "size"), ("buffer/admitted_total", "admitted (cum.)"),
                     ("buffer/graduated_total", "graduated (cum.)"),
                     ("buffer/evicted_total", "evicted (cum.)")):
    x, y = _series(rows, key)
    if x:
      ax.plot(x, y, marker=".", label=label)
  ax.set(xlabel="step", ylabel="questions", title="Replay buffer")
  ax.legend(fontsize=8)
  save(fig, "buffer.png")

  last = rows[-1]
  bins = sorted(k.split("/")[-1] for k in last if k.startswith("buffer/admitted_bin/"))
  fig, ax = plt.subplots(figsize=(6, 4))
  if bins:
    admitted = [float(last[f"buffer/admitted_bin/{b}"]) for b in bins]
    graduated = [float(last.get(f"buffer/graduated_bin/{b}", 0.0)) for b in bins]
    ratio = [g / a if a else 0.0 for g, a in zip(graduated, admitted)]
    ax.bar([f"{float(b):.2f}" for b in bins], ratio)
    for i, (g, a) in enumerate(zip(graduated, admitted)):
      ax.text(i, ratio[i], f"{int(g)}/{int(a)}", ha="center", va="bottom", fontsize=8)
  ax.set(xlabel="plain accuracy when admitted", ylabel="fraction graduated",
         title="Graduation by entry accuracy", ylim=(0, 1.05))
  save(fig, "graduation.png")

  fig, ax = plt.subplots(figsize=(6, 4))
  bottom = [0.0] * len(rows)
  steps = [r["step"] for r in rows]
  for key, label in (("batch/new", "new"), ("batch/replay", "replayed"), ("reform/bcq", "BCQ"),
                     ("reform/ncq", "NCQ"), ("reform/hint", "hint"), ("reform/prefix", "prefix")):
    values = [float(r.get(key, 0.0)) for r in rows]
    if any(values):
      ax.bar(steps, values, bottom=bottom, label=label)
      bottom = [b + v for b, v in zip(bottom, values)]
  ax.set(xlabel="step", ylabel="prompts", title="Batch composition")
  ax.legend(fontsize=8)
  save(fig, "composition.png")
  return written


def main(argv: list[str]) -> int:
  """`zppo plot WORKDIR`."""
  if len(argv) != 1 or argv[0].startswith("-"):
    print("usage: zppo plot WORKDIR", file=sys.stderr)
    return 2
  for path in write_plots(argv[0]):
    print(path)
  return 0
