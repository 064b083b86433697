"""What each variant of a sweep has done: its state file and its metrics.

The sweep runner writes `WORKDIR/sweep_state.json` around each training run:
`{"state": "running", "pid", "host", "started", "command"}` when it starts the run and
`{"state": "finished" | "stopped" | "failed", "exit_code", "ended", ...}` when the run exits.
`metrics.jsonl` (written by the trainer) says how far a run got. Together they give the state:

- finished:    the metrics reached `total_steps`.
- running:     the state file says running and its process is alive (or on another host).
- failed:      the run exited with an error, or its runner died while it was running.
- stopped:     interrupted (Ctrl-C, SIGTERM / preemption) before `total_steps`; resumable.
- submitted:   handed to a TPU slice; that slice's workers write the metrics.
- not started: no metrics and no state file.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time

from etils import epath

STATE_FILE = "sweep_state.json"
REWARD_KEY = "reward/plain"


@dataclasses.dataclass
class RunStatus:
  """The state of one variant's workdir.

  Attributes:
    state: one of the states in the module docstring.
    step: the last step in `metrics.jsonl` (0 when there is none).
    total_steps: the step the run trains to.
    reward: `reward/plain` of the last step that has it, or None.
    exit_code: the training process's exit code, when it exited.
    detail: why a run is failed or stopped, for the status table.
  """
  state: str
  step: int
  total_steps: int
  reward: float | None = None
  exit_code: int | None = None
  detail: str = ""


def read_rows(workdir: epath.PathLike) -> list[dict]:
  """`metrics.jsonl` rows; a torn last line (a run killed mid-write) is left out."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and isinstance(row.get("step"), int):
      rows.append(row)
  return rows


def number(value) -> float | None:
  """A finite float from a metrics value (the trainer writes NaN and inf as strings), else None."""
  if isinstance(value, bool) or not isinstance(value, (int, float, str)):
    return None
  try:
    out = float(value)
  except ValueError:
    return None
  return out if math.isfinite(out) else None


def last_value(rows: list[dict], key: str) -> float | None:
  """The value of `key` in the last row that has a finite one."""
  for row in reversed(rows):
    value = number(row.get(key))
    if value is not None:
      return value
  return None


def read_state(workdir: epath.PathLike) -> dict:
  path = epath.Path(workdir) / STATE_FILE
  if not path.exists():
    return {}
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError:
    return {}


def write_state(workdir: epath.PathLike, **fields) -> dict:
  """Replaces the state file atomically with `fields` plus the host and time."""
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  record = {"host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
  tmp = workdir / (STATE_FILE + ".tmp")
  tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
  tmp.replace(workdir / STATE_FILE)
  return record


def pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def run_status(workdir: epath.PathLike, total_steps: int) -> RunStatus:
  """The state of one workdir (see the module docstring); "unreadable" when it cannot be read."""
  try:
    rows = read_rows(workdir)
    record = read_state(workdir)
  except Exception as err:  # A remote workdir without a filesystem backend, a permission error.
    return RunStatus("unreadable", 0, total_steps, detail=f"{type(err).__name__}: {err}"[:200])
  step = rows[-1]["step"] if rows else 0
  reward = last_value(rows, REWARD_KEY)
  kind = record.get("state")
  code = record.get("exit_code")
  out = RunStatus("not started", step, total_steps, reward, code)
  if step >= total_steps > 0:
    out.state = "finished"
  elif kind == "running":
    here = record.get("host") == socket.gethostname()
    if not here or pid_alive(int(record.get("pid", -1))):
      out.state = "running"
    else:
      out.state, out.detail = "failed", "its runner died while it was running"
  elif kind == "failed":
    out.state, out.detail = "failed", record.get("detail") or f"exit code {code}"
  elif kind == "submitted":
    out.state = "submitted"
  elif kind in ("stopped", "finished") or rows:
    # A run that exited 0 short of total_steps was preempted; rows without a state file are a run
    # started by hand and interrupted.
    out.state, out.detail = "stopped", record.get("detail", "")
  return out
