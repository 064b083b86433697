"""Per-step metrics: `metrics.jsonl`, TensorBoard event files, and a progress line with ETA.

`metrics.jsonl` holds one JSON object per step with `step`; wall-clock fields are named `time_*`
and everything else is deterministic for a fixed seed. On resume the file is cut back to the
restored step, so a resumed run's file reads like an uninterrupted one; the rows cut are kept in
`metrics.dropped.jsonl`.

The workdir may be any `etils.epath` location (`gs://` included). Object stores have no append,
so there `metrics.jsonl` is rewritten whole after each step (a run has a few hundred small rows;
a local file is appended to, so a reader never sees it half written), and TensorBoard event files
are written through epath too (`EpathRecordWriter`).
"""
from __future__ import annotations

import io
import json
import math
import sys
import time
from typing import Mapping, TextIO

from etils import epath

from zppo_jax.train import workdir as workdir_lib

# The progress line: label -> metric key (as the trainer writes them).
_PROGRESS = {"reward": "reward/plain", "buffer": "buffer/size", "bcq": "reform/bcq",
             "ncq": "reform/ncq", "loss": "update/loss"}


def read_metrics(workdir: epath.PathLike) -> list[dict]:
  """The rows of `WORKDIR/metrics.jsonl` (empty if there is none)."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plain(value):
  """A JSON-friendly number: numpy/JAX scalars to Python; NaN and inf as strings."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class MetricsWriter:
  """Appends step metrics to JSONL and TensorBoard; prints a progress line on a terminal.

  Args:
    workdir: run directory (local or `gs://`).
    total_steps: for the progress bar and ETA.
    start_step: the step the run (re)starts from; later rows are dropped from the JSONL file.
    tensorboard: also write TensorBoard event files under `WORKDIR/tb` (needs tensorboardX).
    stream: where progress goes; a non-terminal stream gets one plain line per step.
  """

  def __init__(self, workdir: epath.PathLike, total_steps: int, start_step: int = 0,
               tensorboard: bool = True, stream: TextIO | None = None):
    self.workdir = epath.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.path = self.workdir / "metrics.jsonl"
    self.total_steps = total_steps
    self.start_step = start_step
    self._stream = stream or sys.stderr
    self._t0 = time.time()
    self._lines = self._truncate(start_step)
    self._append = self.path.open("a") if workdir_lib.is_local(self.workdir) else None
    self._tb = None
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # Optional: TensorBoard without TensorFlow.
        from tensorboardX import record_writer
        if "://" in str(self.workdir):   # Events through epath, like every other file.
          record_writer.register_writer_factory(str(self.workdir).split(":")[0],
                                                _EpathWriterFactory())
        self._tb = SummaryWriter(str(self.workdir / "tb"))
      except ImportError:
        print("metrics: tensorboardX is not installed; writing metrics.jsonl only",
              file=self._stream)

  def _truncate(self, start_step: int) -> list[str]:
    """Keeps the rows up to `start_step` (returned, as lines); the later ones (steps that will run
    again, or a whole history when no checkpoint could be restored) are added to
    `metrics.dropped.jsonl`."""
    rows = read_metrics(self.workdir)
    dropped = [r for r in rows if r["step"] > start_step]
    if dropped:
      dropped_path = self.workdir / "metrics.dropped.jsonl"
      before = dropped_path.read_text() if dropped_path.exists() else ""
      dropped_path.write_text(before + "".join(json.dumps(r) + "\n" for r in dropped))
    kept = [json.dumps(r) + "\n" for r in rows if r["step"] <= start_step]
    if self.path.exists():
      self.path.write_text("".join(kept))
    return kept

  def write(self, step: int, metrics: Mapping[str, object]) -> None:
    """Records one step (1-based) and updates the progress display."""
    row = {"step": int(step), **{k: _plain(v) for k, v in sorted(metrics.items())}}
    self._lines.append(json.dumps(row) + "\n")
    if self._append is not None:
      self._append.write(self._lines[-1])
      self._append.flush()
    else:
      self.path.write_text("".join(self._lines))
    if self._tb is not None:
      for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key.replace(".", "/"), value, step)
    self._progress(step, row)

  def _progress(self, step: int, row: Mapping[str, object]) -> None:
    done = step - self.start_step
    elapsed = time.time() - self._t0
    eta = elapsed / max(done, 1) * (self.total_steps - step)
    shown = " ".join(f"{name}={row[k]:.3g}" for name, k in _PROGRESS.items()
                     if isinstance(row.get(k), (int, float)))
    width = 24
    filled = int(width * step / max(self.total_steps, 1))
    bar = "#" * filled + "." * (width - filled)
    line = (f"[{bar}] step {step}/{self.total_steps} {shown} "
            f"{elapsed:.0f}s elapsed, ETA {_duration(eta)}")
    if self._stream.isatty():
      end = "\n" if step >= self.total_steps else ""
      self._stream.write("\r" + line + "\x1b[K" + end)
    else:
      self._stream.write(line + "\n")
    self._stream.flush()

  def close(self) -> None:
    if self._append is not None:
      self._append.close()
    if self._tb is not None:
      self._tb.close()


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class EpathRecordWriter:
  """A TensorBoard event file at an `epath` location: records are buffered and the whole file is
  written on each flush (an object store replaces a file; it cannot append to one)."""

  def __init__(self, path: str):
    self.path = epath.Path(path)
    self.buffer = io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    self.path.write_bytes(self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _EpathWriterFactory:
  """tensorboardX's writer factory for a URI scheme (`record_writer.register_writer_factory`)."""

  def open(self, path: str) -> EpathRecordWriter:
    return EpathRecordWriter(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)
