"""Run checkpoints with orbax: device state (params, optimizer state) and host state (replay buffer,
data-iterator position, RNG, step, counters) saved together, asynchronously, keeping the last N.

A run directory resumes from its latest checkpoint. Two failures are told apart:
- a damaged checkpoint (a crash in the middle of a write, an unreadable file, host metadata that is
  not what `save` writes, `{}` included): it is moved to `checkpoints_corrupt/` and the previous one
  is tried, and the message says so;
- a checkpoint that does not match the run (the state's structure or shapes differ, e.g. after a
  config change that adds or removes optimizer state): `CheckpointMismatch`, naming the
  differing keys, and nothing in the run directory is touched.
SIGTERM (preemption) is turned into a flag the loop checks, so it saves and exits between steps.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import sys
from typing import Any, Callable, Mapping

from etils import epath
import jax
import orbax.checkpoint as ocp

from zppo_jax.errors import UserError
from zppo_jax.train import workdir as workdir_lib


class CheckpointMismatch(UserError):
  """The newest intact checkpoint was written by a run with a different state structure."""


@dataclasses.dataclass
class Restored:
  """What `RunCheckpointer.restore` found: the step, device pytree and host dict."""
  step: int
  state: Any
  host: dict


class RunCheckpointer:
  """Saves and restores one run's checkpoints under `WORKDIR/checkpoints`.

  Args:
    workdir: run directory (local or `gs://`; see `train.workdir`).
    keep: how many recent checkpoints to keep.
    async_save: write in a background thread while training continues.
  """

  def __init__(self, workdir: epath.PathLike, keep: int = 3, async_save: bool = True):
    self.directory = workdir_lib.as_path(workdir) / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    # Handlers given up front, so metadata can be read before anything is saved or restored.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "host": ocp.JsonCheckpointHandler()})

  def save(self, step: int, state: Any, host: dict, *, force: bool = False) -> None:
    """Starts saving `state` (a pytree of arrays) and `host` (JSON-serialisable) as `step`."""
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     host=ocp.args.JsonSave(host)), force=force)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, abstract_state: Any, check_host: Callable[[dict], None] | None = None,
              run_config: Mapping[str, Any] | None = None) -> Restored | None:
    """The newest intact checkpoint, or None when there is none.

    Damaged checkpoints on the way are set aside (`checkpoints_corrupt/STEP`) and the next older
    one is tried; a checkpoint whose structure does not match `abstract_state` stops the search.

    Args:
      abstract_state: a pytree with the structure, shapes, dtypes (and shardings) to restore into,
        e.g. the live state or `jax.eval_shape` of its constructor.
      check_host: raises (any exception) when a host dict cannot be loaded; such a checkpoint is
        damaged. `host["step"]` is always checked against the step.
      run_config: this run's config as a dict; on a mismatch, its values that differ from the
        run directory's `config.json` are named too.

    Raises:
      CheckpointMismatch: naming the differing state keys (and config keys), with how to resume
        or start fresh; no file has been changed.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    for step in reversed(self.steps()):
      try:
        saved = self._manager.item_metadata(step)["state"].tree
        differences = structure_differences(saved, abstract)
      except Exception as err:  # noqa: BLE001 - unreadable metadata: a damaged checkpoint.
        self._damaged(step, err)
        continue
      if differences:
        raise CheckpointMismatch(self._mismatch_message(step, differences, run_config))
      try:
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), host=ocp.args.JsonRestore()))
        host = out["host"]
        if not isinstance(host, dict) or host.get("step") != step:
          raise ValueError(f"host metadata has no step {step}: {str(host)[:100]}")
        if check_host is not None:
          check_host(host)
        return Restored(step, out["state"], dict(host))
      except MemoryError:
        raise  # Not the checkpoint's fault: keep it where it is.
      except Exception as err:  # noqa: BLE001 - the structure matched: the files are damaged.
        if "RESOURCE_EXHAUSTED" in str(err):
          raise
        self._damaged(step, err)
    return None

  def _damaged(self, step: int, err: BaseException) -> None:
    aside = self.directory.parent / "checkpoints_corrupt" / str(step)
    print(f"checkpoint: step {step} in {self.directory} cannot be restored "
          f"({type(err).__name__}: {str(err)[:200]}); moved to {aside}, trying the previous "
          "checkpoint", file=sys.stderr)
    self._set_aside(step, aside)

  def _mismatch_message(self, step: int, differences: list[str],
                        run_config: Mapping[str, Any] | None) -> str:
    changed = config_differences(self.directory.parent / "config.json", run_config)
    shown = "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more"
                                          if len(differences) > 8 else "")
    return (f"checkpoint step {step} in {self.directory} does not match this run: {shown}."
            + (f" Config values changed since the run was started: {', '.join(changed)}."
               if changed else "")
            + f" To resume, rerun with the config the run was started with "
            f"({self.directory.parent / 'config.json'}); to start fresh, use another --workdir. "
            "Nothing was changed.")

  def _set_aside(self, step: int, aside: epath.Path) -> None:
    """Moves a damaged step out of the manager's directory, so the run can write it again."""
    aside.parent.mkdir(parents=True, exist_ok=True)
    if aside.exists():
      aside.rmtree()
    workdir_lib.move_tree(self.directory / str(step), aside)
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def host_fields(**types: type | tuple[type, ...]) -> Callable[[dict], None]:
  """A `check_host` that requires each named field with its type, e.g.
  `host_fields(step=int, data=dict)`; a missing or mistyped field is damaged metadata."""
  def check(host: dict) -> None:
    for name, kind in types.items():
      if name not in host:
        raise KeyError(f"host metadata has no {name!r}")
      if not isinstance(host[name], kind) or isinstance(host[name], bool):
        raise TypeError(f"host metadata {name!r} is {type(host[name]).__name__}")
  return check


def _paths(tree: Any) -> dict[str, Any]:
  """'a/b/0' -> leaf, for every leaf of a pytree (dict keys, sequence indices, attributes).

  An empty node (None, `{}`, optax's `EmptyState()`) counts as a leaf: orbax compares whole tree
  structures, so an optimizer chain that gains or loses a stateless link no longer restores.
  """
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda node: not jax.tree.leaves(node))[0]
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in leaves}


def _shape(leaf: Any) -> tuple[int, ...] | None:
  """An array leaf's shape; None for an empty node."""
  return tuple(leaf.shape) if hasattr(leaf, "shape") else None


def structure_differences(saved: Any, abstract: Any) -> list[str]:
  """What differs between a checkpoint's tree metadata and the state to restore into.

  Returns:
    One line per difference: keys only in the checkpoint, keys only in this run, and shapes that
    differ (dtypes may differ: a restore casts).
  """
  saved, wanted = _paths(saved), _paths(abstract)
  out = []
  only_saved = sorted(set(saved) - set(wanted))
  only_wanted = sorted(set(wanted) - set(saved))
  if only_saved:
    out.append(f"keys only in the checkpoint: {', '.join(only_saved[:6])}"
               + (f" (+{len(only_saved) - 6})" if len(only_saved) > 6 else ""))
  if only_wanted:
    out.append(f"keys only in this run: {', '.join(only_wanted[:6])}"
               + (f" (+{len(only_wanted) - 6})" if len(only_wanted) > 6 else ""))
  for key in sorted(set(saved) & set(wanted)):
    if _shape(saved[key]) != _shape(wanted[key]):
      out.append(f"{key} has shape {_shape(saved[key])} in the checkpoint, "
                 f"{_shape(wanted[key])} here")
  return out


def config_differences(config_json: epath.Path, run_config: Mapping[str, Any] | None
                       ) -> list[str]:
  """`key: old -> new` for each config value that differs from the saved `config.json` (empty
  when either is unavailable)."""
  if run_config is None or not config_json.exists():
    return []
  try:
    old = json.loads(config_json.read_text())
  except (OSError, ValueError):
    return []

  def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
      return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}
  old, new = flat(old), flat(json.loads(json.dumps(dict(run_config), default=str)))
  return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)]


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
