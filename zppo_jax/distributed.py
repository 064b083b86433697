"""Multi-host runs: JAX's multi-controller runtime, and what each process owns.

Every host runs the same program (`launch/tpu_run.sh`, `launch/gpu_run.sh`); JAX arrays span all
hosts' devices and jitted steps are collective. What is *not* collective is host work, split here:

- rollouts: the rows are split over every host's devices (`replicate` places the sampler's host
  inputs); each process grades its own contiguous block of them (`block`, `map_blocks`);
- the replay buffer: each question belongs to one process (`ReplayBuffer.owns`), which keeps its
  entry;
- metrics: per-process host numbers are reduced across processes (`reduce_metrics`,
  `sum_counts`) so that every process logs the same values; only process 0 writes logs
  (`is_main`);
- preemption: a SIGTERM seen by any process stops every process after the same step
  (`any_process`), each saving its part of that step's checkpoint.

The trainer keeps the global computation independent of the process count: every process holds
the step's (small) host data in the same global order, so that the ZPPO decisions that span the
whole step (the pre-cap, the reformulation plan, advantages, the mini-batch split, packing) are
taken identically everywhere, and splits the heavy work: rollout rows over every host's devices,
grading by contiguous blocks (`map_blocks`), the replay buffer by owner, drawn from with
per-question keys (`draw_replay`) so that the draw does not depend on the partition.

    distributed.initialize()        # no-op unless ZPPO_DISTRIBUTED=1 (set by the launch scripts)
    rewards = distributed.map_blocks(grade, responses, answers)
    metrics = distributed.reduce_metrics({"reward": local_mean, "num_rows": n}, weight="num_rows")
"""
from __future__ import annotations

import hashlib
import os
import pickle
from typing import Any, Callable, Mapping, Sequence, TypeVar

import jax
import numpy as np

T = TypeVar("T")
ENV_FLAG = "ZPPO_DISTRIBUTED"


def local_device_ids(env: Mapping[str, str] | None = None) -> list[int] | None:
  """The GPUs this process drives in a SLURM job step with one task per GPU; None elsewhere.

  JAX's SLURM detection gives task `SLURM_LOCALID` the device of that index, which is right when
  every task sees all GPUs of its node. A cluster that binds one GPU to each task
  (``--gpus-per-task=1``, ``--gpu-bind``) leaves a single visible device, index 0, for every task.
  ``ZPPO_LOCAL_DEVICE_IDS=0,1`` overrides both.

  Args:
    env: the environment (default ``os.environ``).
  """
  env = os.environ if env is None else env
  if env.get("ZPPO_LOCAL_DEVICE_IDS"):
    ids = env["ZPPO_LOCAL_DEVICE_IDS"].split(",")
    if not all(i.strip().isdigit() for i in ids):
      raise ValueError(f"ZPPO_LOCAL_DEVICE_IDS={env['ZPPO_LOCAL_DEVICE_IDS']!r}: expected device "
                       "indices separated by commas, e.g. 0,1")
    return [int(i) for i in ids]
  if "SLURM_JOB_ID" not in env or "SLURM_LOCALID" not in env or "SLURM_STEP_ID" not in env:
    return None
  visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  return [0] if len(visible) == 1 else [int(env["SLURM_LOCALID"])]


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cpu_collectives: str | None = None) -> bool:
  """Starts JAX's distributed runtime when asked; returns whether it did.

  Call it before anything touches a JAX device. It runs when given a coordinator address, or when
  ``ZPPO_DISTRIBUTED=1``, or when ``JAX_NUM_PROCESSES`` > 1; a single process needs nothing.
  Missing arguments come from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
  ``JAX_PROCESS_ID``, and what those leave unset JAX detects itself (Cloud TPU metadata, SLURM).
  In a SLURM job step with one task per GPU each process takes its own GPU (`local_device_ids`).
  On the CPU backend several processes need CPU collectives: ``gloo`` unless
  ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` says otherwise.

  Args:
    coordinator_address: "host:port" of process 0.
    num_processes: number of processes.
    process_id: this process's index.
    cpu_collectives: CPU collectives implementation ("gloo") for multi-process CPU runs.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  asked = (env.get(ENV_FLAG, "0") == "1" or (num_processes or 1) > 1
           or (coordinator_address is not None and num_processes is not None))
  if not asked:
    return False
  if cpu_collectives is None and (num_processes or 1) > 1 and env.get(
      "JAX_PLATFORMS", "").split(",")[0] == "cpu":
    cpu_collectives = env.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION", "gloo")
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  cpu_or_tpu = env.get("JAX_PLATFORMS", "").split(",")[0] in ("cpu", "tpu")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=None if cpu_or_tpu else local_device_ids(env))
  return True


def is_main() -> bool:
  """True on process 0 (the one that logs, writes plots and exports)."""
  return jax.process_index() == 0


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


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process: the same answer everywhere (a collective on several).

  Preemption sends SIGTERM to hosts at different moments, so a host's own "SIGTERM seen" flag
  can differ from its peers' at a given step; the training loop passes that flag here once per
  step, at the same point on every process, so that all hosts save the same step and stop
  together instead of one waiting forever in a collective the others have left.
  """
  if jax.process_count() == 1:
    return bool(flag)
  return bool(allgather(np.int32(bool(flag))).max())


def sync(name: str = "zppo") -> None:
  """A barrier across processes (no-op on one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def barrier(name: str, timeout_s: float = 3600.0) -> None:
  """Waits until every process reaches `name` (no-op on one), through the coordination service.

  Unlike `sync` it runs no device collective, so a long wait (one process building a cache,
  compiling, or writing logs) cannot time out the set-up of a CPU collective (gloo gives its
  peers 30 s); the trainer calls it where the processes' host work may drift apart.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel
  jax_distributed.global_state.client.wait_at_barrier(f"zppo/{name}", int(timeout_s * 1000))


def to_host(tree: Any) -> Any:
  """Global arrays -> full numpy arrays on every process (gathers shards across processes)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Host or local values (the same on every process) as arrays replicated over `mesh`; the
  tree unchanged when `mesh` has only this process's devices."""
  if all(d.process_index == jax.process_index() for d in mesh.devices.flat):
    return tree
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def one(x):
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x   # Already a global array (computed on the mesh).
    host = np.asarray(x)   # device_put takes host values (not local arrays) for global shardings
    return jax.device_put(host, replicated)

  return jax.tree.map(one, tree)


def allgather_objects(obj: Any) -> list[Any]:
  """One picklable object from every process, in process order (``[obj]`` on one process)."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = allgather(np.int64(data.size))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  table = allgather(padded)
  return [pickle.loads(table[i, :int(n)].tobytes()) for i, n in enumerate(sizes)]


def block(num_items: int, index: int | None = None, count: int | None = None) -> slice:
  """Process `index`'s contiguous block of `num_items` (sizes differ by at most one, lower
  indices first), so that the blocks in process order are the items in order."""
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  if not 0 <= index < count:
    raise ValueError(f"process index {index} is outside [0, {count})")
  size, extra = divmod(num_items, count)
  start = index * size + min(index, extra)
  return slice(start, start + size + (index < extra))


def map_blocks(fn: Callable[..., Sequence[T]], *columns: Sequence[Any]) -> list[T]:
  """Splits work over processes: `fn(*block_of_each_column)` on this process's block, and every
  process's results concatenated in order (the same list on every process).

  Args:
    fn: maps equally long sequences to one result per item.
    columns: sequences of the same length.
  """
  n = len(columns[0])
  if any(len(c) != n for c in columns):
    raise ValueError(f"map_blocks: columns of lengths {[len(c) for c in columns]}")
  mine = block(n)
  out = list(fn(*(c[mine] for c in columns))) if mine.stop > mine.start else []
  if len(out) != mine.stop - mine.start:
    raise ValueError(f"map_blocks: {len(out)} results for {mine.stop - mine.start} items")
  return [x for part in allgather_objects(out) for x in part]


def sum_counts(counts: Mapping[str, float]) -> dict[str, float]:
  """Per-process counts summed over processes; keys missing on a process count as zero."""
  out: dict[str, float] = {}
  for part in allgather_objects(dict(counts)):
    for k, v in part.items():
      out[k] = out.get(k, 0) + v
  return dict(sorted(out.items()))


def draw_replay(records: Sequence[Mapping[str, Any]], n: int, seed: Sequence[int]
                ) -> list[Mapping[str, Any]]:
  """`n` records drawn uniformly without replacement from the union of every process's
  `records` (each process passes its own replay-buffer partition), the same on every process
  and for every number of processes.

  Each record gets a key hashed from (`seed`, its id); the draw is the `n` smallest keys, in key
  order, so it depends on the buffer's content only, not on how it is partitioned.

  Args:
    records: this process's records, each with an "id".
    n: how many to draw in all (fewer when the buffers hold fewer).
    seed: e.g. (run seed, step).
  """
  prefix = "/".join(str(s) for s in seed) + "/"

  def key(record):
    digest = hashlib.blake2b((prefix + str(record["id"])).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little"), str(record["id"])

  local = sorted(((key(r), r) for r in records), key=lambda kr: kr[0])[:max(n, 0)]
  pooled = sorted((kr for part in allgather_objects(local) for kr in part), key=lambda kr: kr[0])
  return [r for _, r in pooled[:max(n, 0)]]


def split_devices(fraction: float) -> tuple[list, list]:
  """(student devices, teacher devices): `parallel.split_devices` applied to every process's own
  devices, so that both models span every host (each process can feed and read both)."""
  from zppo_jax import parallel  # pylint: disable=import-outside-toplevel (keeps this module light)
  by_process: dict[int, list] = {}
  for d in jax.devices():
    by_process.setdefault(d.process_index, []).append(d)
  student, teacher = [], []
  for p in sorted(by_process):
    s, t = parallel.split_devices(fraction, by_process[p])
    student += s
    teacher += t
  return student, teacher
