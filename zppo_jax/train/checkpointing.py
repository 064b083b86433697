"""Run checkpoints with orbax: device state (params, optimizer state) and host state (replay buffer,
data-iterator position, RNG, step, counters) saved together, asynchronously, keeping the last N.

A run directory resumes from its latest checkpoint. If that checkpoint cannot be read (a crash in
the middle of a write, a damaged file), the previous one is used and the message says so.
SIGTERM (preemption) is turned into a flag the loop checks, so it saves and exits between steps.
"""
from __future__ import annotations

import dataclasses
import pathlib
import shutil
import signal
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp


@dataclasses.dataclass
class Restored:
  """What `RunCheckpointer.restore` found: the step, device pytree and host dict."""
  step: int
  state: Any
  host: dict


class RunCheckpointer:
  """Saves and restores one run's checkpoints under `WORKDIR/checkpoints`.

  Args:
    workdir: run directory.
    keep: how many recent checkpoints to keep.
    async_save: write in a background thread while training continues.
  """

  def __init__(self, workdir: str | pathlib.Path, keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(workdir).resolve() / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "host"))

  def save(self, step: int, state: Any, host: dict, *, force: bool = False) -> None:
    """Starts saving `state` (a pytree of arrays) and `host` (JSON-serialisable) as `step`."""
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     host=ocp.args.JsonSave(host)), force=force)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, abstract_state: Any) -> Restored | None:
    """The newest readable checkpoint, or None when there is none.

    Args:
      abstract_state: a pytree with the structure, shapes, dtypes (and shardings) to restore into,
        e.g. the live state or `jax.eval_shape` of its constructor.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    for step in reversed(self.steps()):
      try:
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), host=ocp.args.JsonRestore()))
        return Restored(step, out["state"], dict(out["host"]))
      except Exception as err:  # A damaged checkpoint: say so and fall back to the previous one.
        aside = self.directory.parent / "checkpoints_corrupt" / str(step)
        print(f"checkpoint: step {step} in {self.directory} cannot be restored "
              f"({type(err).__name__}: {str(err)[:200]}); moved to {aside}, trying the previous "
              "checkpoint", file=sys.stderr)
        self._set_aside(step, aside)
    return None

  def _set_aside(self, step: int, aside: pathlib.Path) -> None:
    """Moves a damaged step out of the manager's directory, so the run can write it again."""
    aside.parent.mkdir(parents=True, exist_ok=True)
    if aside.exists():
      shutil.rmtree(aside)
    shutil.move(str(self.directory / str(step)), str(aside))
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class PreemptionFlag:
  """Set by SIGTERM; the training loop checkpoints and stops when it sees it."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
    return False
