"""A pool of grading processes with a hard per-item timeout.

math-verify's own timeouts use ``signal.alarm``: they stop a slow sympy call between Python
bytecodes, but not a call stuck in C (a huge integer power), and not on a non-main thread. So every
item is graded in a worker process, and the parent kills a worker whose item passes its deadline,
scores that item 0, counts it, and starts a fresh worker. Grading thousands of rollouts per step
then runs beside the device instead of stalling it, and no input can hang the trainer.

Workers are fresh interpreters (``python -m zppo_jax.rewards._worker``), never forks: the parent
usually runs JAX, whose threads make ``fork`` unsafe, and `multiprocessing`'s ``spawn`` re-runs the
user's ``__main__`` (and fails from a REPL or stdin). A worker signals "ready" once its imports are done, and an item's
clock starts only when it is sent to a ready worker, so start-up time never counts as a timeout.
"""
import dataclasses
import importlib
import logging
import multiprocessing.connection
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from zppo_jax.rewards.grading import Choices, GradeConfig, grade_local

_log = logging.getLogger(__name__)

GradeFn = Callable[[str, str, Choices, GradeConfig], float]


@dataclasses.dataclass(frozen=True)
class GradeItem:
  """One response to grade.

  Attributes:
    response: the full model response.
    gold: the reference answer.
    choices: multiple-choice options (``{"A": text}`` or a list), or None.
  """
  response: str
  gold: str
  choices: Choices = None


@dataclasses.dataclass
class PoolStats:
  """Running counters of a `GradingPool` (cumulative since creation).

  Attributes:
    graded: items that came back with a score.
    timeouts: items whose worker passed the hard timeout and was killed (scored 0).
    crashes: items whose worker died (scored 0).
    restarts: workers started after the first ones.
  """
  graded: int = 0
  timeouts: int = 0
  crashes: int = 0
  restarts: int = 0


def _resolve(grade_fn: str | None) -> GradeFn:
  """``"module:function"`` -> the function (default: `grade_local`)."""
  if not grade_fn:
    return grade_local
  module, _, name = grade_fn.partition(":")
  return getattr(importlib.import_module(module), name)


def worker_main(conn: multiprocessing.connection.Connection, config: GradeConfig,
                grade_fn: str | None) -> None:
  """Worker loop: announce readiness, then grade ``(index, item)`` messages until ``None``."""
  fn = _resolve(grade_fn)
  # Warm math-verify up (imports sympy, builds its parser) before announcing readiness: an item
  # that needs math equivalence, so the string-equality shortcut does not skip it.
  fn("\\boxed{0.5}", "\\frac{1}{2}", None, config)
  conn.send("ready")
  while True:
    try:
      message = conn.recv()
    except (EOFError, OSError):
      return
    if message is None:
      return
    index, item = message
    try:
      score = float(fn(item.response, item.gold, item.choices, config))
    except Exception:  # noqa: BLE001 - a failing item is a 0, the worker lives on.
      score = 0.0
    conn.send((index, score))


class _Worker:
  """One worker process (``python -m zppo_jax.rewards._worker``) and the parent's end of its pipes.

  A fresh interpreter rather than `multiprocessing`: nothing of the parent (JAX threads, the
  user's ``__main__`` script) is forked or re-imported, so it works from any entry point.
  """

  def __init__(self, config: GradeConfig, grade_fn: str | None, memory_limit_mb: int | None):
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    args = [sys.executable, "-m", "zppo_jax.rewards._worker", str(to_child_r), str(from_child_w)]
    # The worker imports what this process can import (the package, a test's grade_fn module).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    self.proc = subprocess.Popen(args, pass_fds=(to_child_r, from_child_w), env=env,
                                 stdin=subprocess.DEVNULL)
    os.close(to_child_r)
    os.close(from_child_w)
    self.send_conn = multiprocessing.connection.Connection(to_child_w, readable=False)
    self.conn = multiprocessing.connection.Connection(from_child_r, writable=False)
    self.send_conn.send((config, grade_fn, memory_limit_mb))
    self.ready = False
    self.index: int | None = None  # The item being graded.
    self.deadline = 0.0
    self.started = time.monotonic()

  def send(self, message) -> None:
    self.send_conn.send(message)

  def kill(self) -> None:
    for conn in (self.send_conn, self.conn):
      try:
        conn.close()
      except OSError:
        pass
    if self.proc.poll() is None:
      self.proc.kill()
    try:
      self.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
      pass


class GradingPool:
  """Grades batches of responses in worker processes, each item with a hard timeout.

  Args:
    num_workers: worker processes (on a shared host, leave cores to the trainer).
    timeout_s: hard wall-clock limit per item, counted from when it is sent to a ready worker.
    config: the in-process grader's knobs (its soft timeouts should add up to less than
      ``timeout_s``, so that the soft path normally fires first and no worker is killed).
    startup_timeout_s: a worker not ready after this long is replaced; after three replacements
      in a row fail, `grade_many` raises RuntimeError (the environment is broken).
    memory_limit_mb: address-space limit of each worker (``RLIMIT_AS``), so an answer like
      ``10^{10^{10}}`` runs into a MemoryError (a 0) instead of the host's memory; None = none.
    grade_fn: ``"module:function"`` naming the per-item function
      ``(response, gold, choices, config) -> float`` (imported in the worker). Default:
      `zppo_jax.rewards.grading.grade_local`.

  Use as a context manager, or call `close()`.
  """

  def __init__(self, num_workers: int = 2, timeout_s: float = 30.0,
               config: GradeConfig = GradeConfig(), startup_timeout_s: float = 120.0,
               memory_limit_mb: int | None = 4096, grade_fn: str | None = None):
    if num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if timeout_s <= 0:
      raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    self.timeout_s = timeout_s
    self.startup_timeout_s = startup_timeout_s
    self.stats = PoolStats()
    self._config = config
    self._grade_fn = grade_fn
    self._memory_limit_mb = memory_limit_mb
    self._lock = threading.Lock()
    self._workers = [self._spawn() for _ in range(num_workers)]
    self._closed = False

  def _spawn(self) -> _Worker:
    return _Worker(self._config, self._grade_fn, self._memory_limit_mb)

  def _replace(self, worker: _Worker) -> _Worker:
    worker.kill()
    self.stats.restarts += 1
    new = self._spawn()
    self._workers[self._workers.index(worker)] = new
    return new

  def grade_many(self, items: Sequence[GradeItem]) -> list[float]:
    """Grades every item; a timed-out or crashed item scores 0.0 and is counted in `stats`.

    Args:
      items: the responses with their gold answers.

    Returns:
      One score (1.0 or 0.0) per item, in order.

    Raises:
      RuntimeError: the pool is closed, or workers repeatedly fail to start.
    """
    with self._lock:
      if self._closed:
        raise RuntimeError("GradingPool is closed")
      scores = [0.0] * len(items)
      pending = list(range(len(items)))[::-1]  # A stack: pop() gives items in order.
      remaining = len(items)
      failed_starts = 0
      while remaining:
        now = time.monotonic()
        for worker in list(self._workers):
          if worker.index is not None and now > worker.deadline:
            _log.warning("grading item %d passed %.1fs; worker killed", worker.index,
                         self.timeout_s)
            self.stats.timeouts += 1
            remaining -= 1
            self._replace(worker)
          elif not worker.ready and now - worker.started > self.startup_timeout_s:
            failed_starts += 1
            if failed_starts > 3:
              raise RuntimeError("grading workers fail to start; see their stderr")
            self._replace(worker)
        for worker in self._workers:
          if worker.ready and worker.index is None and pending:
            index = pending.pop()
            try:
              worker.send((index, items[index]))
            except (OSError, ValueError):  # Broken pipe: the worker died while idle.
              pending.append(index)
              self._replace(worker)
              continue
            worker.index = index
            worker.deadline = time.monotonic() + self.timeout_s
        if not remaining:
          break
        waits = [w.deadline for w in self._workers if w.index is not None]
        waits += [w.started + self.startup_timeout_s for w in self._workers if not w.ready]
        wait_s = max(0.0, min(waits) - time.monotonic()) if waits else None
        ready = multiprocessing.connection.wait([w.conn for w in self._workers], timeout=wait_s)
        for conn in ready:
          worker = next(w for w in self._workers if w.conn is conn)
          try:
            message = conn.recv()
          except (EOFError, OSError):
            if worker.index is not None:
              self.stats.crashes += 1
              remaining -= 1
            elif not worker.ready:
              failed_starts += 1
              if failed_starts > 3:
                raise RuntimeError("grading workers die on start; see their stderr") from None
            self._replace(worker)
            continue
          if message == "ready":
            worker.ready = True
            failed_starts = 0
            continue
          index, score = message
          scores[index] = score
          self.stats.graded += 1
          remaining -= 1
          worker.index = None
      return scores

  def grade(self, response: str, gold: str, choices: Choices = None) -> float:
    """Grades one response (see `grade_many`)."""
    return self.grade_many([GradeItem(response, gold, choices)])[0]

  def close(self) -> None:
    """Stops the workers (idempotent)."""
    with self._lock:
      if self._closed:
        return
      self._closed = True
      for worker in self._workers:
        try:
          worker.send(None)
        except (OSError, ValueError):
          pass
      for worker in self._workers:
        try:
          worker.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
          pass
        worker.kill()

  def __enter__(self) -> "GradingPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # noqa: BLE001 - interpreter shutdown.
      pass

