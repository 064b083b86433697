"""Multi-host runs: JAX's multi-controller runtime, and what each process owns.

Every host runs the same program (`launch/tpu_run.sh`, `launch/gpu_run.sh`); JAX arrays span all
hosts' devices and jitted steps are collective. What is *not* collective is host work, split here:

- data: each process reads its own shard of the prompt stream (`shard_items`);
- rollouts: each process grades the rows its devices produced (`local_rows`);
- the replay buffer: each question belongs to one process (`owner`), which keeps its entry;
- metrics: per-process host numbers are reduced across processes (`reduce_metrics`) so that every
  process logs the same values; only process 0 writes logs (`is_main`).

    distributed.initialize()        # no-op unless ZPPO_DISTRIBUTED=1 (set by the launch scripts)
    mine = distributed.shard_items(prompts)
    metrics = distributed.reduce_metrics({"reward": local_mean, "num_rows": n}, weight="num_rows")
"""
from __future__ import annotations

import os
import zlib
from typing import Any, Mapping, Sequence, TypeVar

import jax
import numpy as np

T = TypeVar("T")
ENV_FLAG = "ZPPO_DISTRIBUTED"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cpu_collectives: str | None = None) -> bool:
  """Starts JAX's distributed runtime when asked; returns whether it did.

  With no arguments it runs only when ``ZPPO_DISTRIBUTED=1`` and lets JAX read the cluster from
  the environment (Cloud TPU metadata, SLURM, or ``JAX_COORDINATOR_ADDRESS`` /
  ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``). Explicit arguments always initialise (tests, CPU).

  Args:
    coordinator_address: "host:port" of process 0.
    num_processes: number of processes.
    process_id: this process's index.
    cpu_collectives: CPU collectives implementation ("gloo") for multi-process CPU runs.
  """
  explicit = coordinator_address is not None
  if not explicit and os.environ.get(ENV_FLAG, "0") != "1":
    return False
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  return True


def is_main() -> bool:
  """True on process 0 (the one that logs, writes plots and exports)."""
  return jax.process_index() == 0


def shard_items(items: Sequence[T], index: int | None = None, count: int | None = None
                ) -> list[T]:
  """Process `index`'s share of `items` (every `count`-th item, starting at `index`).

  The shares are disjoint, cover every item, and differ in size by at most one.
  """
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  if not 0 <= index < count:
    raise ValueError(f"process index {index} is outside [0, {count})")
  return list(items[index::count])


def owner(key: str | int, count: int | None = None) -> int:
  """The process that owns `key` (a question id) in the replay buffer: stable across runs and
  hosts (CRC-32 of its text, not Python's salted `hash`)."""
  count = jax.process_count() if count is None else count
  return zlib.crc32(str(key).encode()) % count


def owns(key: str | int, index: int | None = None, count: int | None = None) -> bool:
  """Whether process `index` (default: this one) owns `key`."""
  return owner(key, count) == (jax.process_index() if index is None else index)


def local_rows(array: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """The rows (axis 0) of a row-sharded global array that live on this process's devices.

  Returns:
    (global row indices int[r], the rows [r, ...]) in row order, each row once even when it is
    replicated over several local devices.
  """
  pieces: dict[int, np.ndarray] = {}
  for shard in array.addressable_shards:
    rows = range(*shard.index[0].indices(array.shape[0])) if shard.index else range(
        array.shape[0])
    data = np.asarray(shard.data)
    for i, r in enumerate(rows):
      pieces.setdefault(r, data[i])
  order = sorted(pieces)
  if not order:
    return np.zeros((0,), np.int64), np.zeros((0, *array.shape[1:]), array.dtype)
  return np.asarray(order), np.stack([pieces[r] for r in order])


def allgather(x: np.ndarray | float) -> np.ndarray:
  """Stacks one value per process: [P, ...] (identity plus a leading axis on one process)."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x[None]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x))


def reduce_metrics(metrics: Mapping[str, float], weight: str | None = None) -> dict[str, float]:
  """Combines per-process host metrics into the global ones (same keys on every process).

  Keys ending in ``_min``/``_max`` take the min/max, keys starting with ``num_`` or ending in
  ``_count``/``_sum`` are summed, and the rest are averaged, weighted by the `weight` metric (e.g.
  the number of rows each process graded) when given, else equally.

  Args:
    metrics: name -> number; every process must pass the same keys.
    weight: name of the metric to weight means by.
  """
  keys = sorted(metrics)
  values = np.asarray([float(metrics[k]) for k in keys], np.float64)
  table = allgather(values)                     # [P, K]
  names = allgather(np.frombuffer(",".join(keys).encode().ljust(4096, b" ")[:4096], np.uint8))
  if any(bytes(row).rstrip() != bytes(names[0]).rstrip() for row in names):
    raise ValueError(f"reduce_metrics: processes passed different metric names (here: {keys})")
  w = table[:, keys.index(weight)] if weight is not None else np.ones(len(table))
  out: dict[str, float] = {}
  for j, k in enumerate(keys):
    col = table[:, j]
    if k.endswith("_min"):
      out[k] = float(col.min())
    elif k.endswith("_max"):
      out[k] = float(col.max())
    elif k.startswith("num_") or k.endswith(("_count", "_sum")) or k == weight:
      out[k] = float(col.sum())
    else:
      out[k] = float(np.sum(col * w) / max(np.sum(w), 1e-30))
  return out


def sync(name: str = "zppo") -> None:
  """A barrier across processes (no-op on one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def to_host(tree: Any) -> Any:
  """Global arrays -> full numpy arrays on every process (gathers shards across processes)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
