"""The prompt replay buffer B (shared/ZPPO_SPEC.md §2 steps 1 and 10).

Rules, in the paper's symbols (τ = 0.5, |B|max = 10,000):
  * Refresh uses plain-rollout accuracy r̄_x only. Every x of the batch with r̄_x < τ is admitted;
    every buffered x with r̄_x ≥ τ graduates (is removed; exactly τ graduates); then the oldest
    entries are evicted until |B| ≤ |B|max.
  * An x already in B keeps its place: no duplicate, its age is not refreshed (Decision).
  * B stores the question only (the caller's record: image + text + gold + id), never responses.
  * Sampling is uniform without replacement; all of B when it holds fewer than asked (Decision).
  * Counters: admitted, graduated, evicted, and admitted/graduated per entry-accuracy bin (the
    plain accuracy a question had when admitted; the paper's figure 4).

Multi-host partition: with P processes, process p owns the questions whose stable hash (BLAKE2b of
the id) mod P equals p, with capacity ⌊|B|max/P⌋ (+1 for the first |B|max mod P processes). Every
process is given the whole step's accuracies and ignores the ids it does not own, so admission,
graduation and membership are exactly those of one global buffer (each question's fate depends
only on its own accuracy, and it lives in exactly one partition). Eviction is stratified: each
partition evicts its own oldest, which matches a global FIFO up to the hash's balance (and only
matters when the buffer is full). The trainer draws the replay batch over every partition with
`distributed.draw_replay` (the n smallest per-question keys of (seed, step, id)), so the draw is the
same for any number of processes.
"""
import hashlib
import random
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

_STATE_VERSION = 1


def stable_hash(qid: Hashable) -> int:
  """A hash of a question id that is the same in every process and run (unlike `hash`)."""
  digest = hashlib.blake2b(repr(qid).encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little")


def accuracy_bin(accuracy: float) -> str:
  """The counter key of an entry accuracy (exact for G_S up to 10,000: 4 decimals)."""
  return f"{accuracy:.4f}"


def _new_counters() -> dict[str, Any]:
  return {"admitted": 0, "graduated": 0, "evicted": 0, "admitted_by_entry_accuracy": {},
          "graduated_by_entry_accuracy": {}, "evicted_by_entry_accuracy": {}}


class ReplayBuffer:
  """FIFO prompt replay buffer with graduation.

  Args:
    capacity: |B|max, over all processes.
    threshold: τ; admit below it, graduate at or above it.
    num_processes: P, the number of processes sharing the buffer (see the module docstring).
    process_index: p, this process's index in [0, P).
  """

  def __init__(self, capacity: int = 10_000, threshold: float = 0.5, *, num_processes: int = 1,
               process_index: int = 0):
    if capacity < 0:
      raise ValueError(f"capacity must be >= 0, got {capacity}")
    if not 0 <= process_index < num_processes:
      raise ValueError(f"process_index {process_index} not in [0, {num_processes})")
    self.capacity = capacity
    self.threshold = threshold
    self.num_processes = num_processes
    self.process_index = process_index
    self.local_capacity = capacity // num_processes + (process_index < capacity % num_processes)
    # qid -> (record, entry accuracy), oldest first.
    self._entries: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()
    self.counters = _new_counters()

  def owns(self, qid: Hashable) -> bool:
    """Whether this process's partition is responsible for ``qid``."""
    return self.num_processes == 1 or stable_hash(qid) % self.num_processes == self.process_index

  def __len__(self) -> int:
    return len(self._entries)

  def __contains__(self, qid: Hashable) -> bool:
    return qid in self._entries

  def records(self) -> list[Any]:
    """The buffered records, oldest first."""
    return [record for record, _ in self._entries.values()]

  def qids(self) -> list[Hashable]:
    """The buffered ids, oldest first."""
    return list(self._entries)

  def entry_accuracy(self, qid: Hashable) -> float:
    """The plain accuracy ``qid`` had when it was admitted."""
    return self._entries[qid][1]

  def _bump(self, name: str, accuracy: float) -> None:
    self.counters[name.split("_by_")[0]] += 1
    bins = self.counters[name]
    key = accuracy_bin(accuracy)
    bins[key] = bins.get(key, 0) + 1

  def update(self, accuracies: Mapping[Hashable, float],
             questions: Mapping[Hashable, Any] | None = None) -> dict[str, int]:
    """Refreshes the buffer with one step's plain accuracies.

    Args:
      accuracies: ``{qid: r̄_x}`` for every question of the step's batch (new and replayed; plain
        rollouts only). Ids owned by other processes are ignored.
      questions: ``{qid: record}``, the record stored on admission; needed for every owned id
        with r̄_x < τ that is not buffered yet.

    Returns:
      This step's ``{"admitted", "graduated", "evicted"}`` counts.

    Raises:
      ValueError: an id to admit has no record in ``questions`` (the id is named).
    """
    questions = questions or {}
    step = {"admitted": 0, "graduated": 0, "evicted": 0}
    for qid, accuracy in accuracies.items():
      if not self.owns(qid):
        continue
      accuracy = float(accuracy)
      if accuracy < self.threshold:
        if qid in self._entries:
          continue  # Keeps its place and its entry accuracy.
        if qid not in questions:
          raise ValueError(f"question {qid!r} must be admitted but has no record in `questions`")
        self._entries[qid] = (questions[qid], accuracy)
        self._bump("admitted_by_entry_accuracy", accuracy)
        step["admitted"] += 1
      elif qid in self._entries:
        _, entry_accuracy = self._entries.pop(qid)
        self._bump("graduated_by_entry_accuracy", entry_accuracy)
        step["graduated"] += 1
    while len(self._entries) > self.local_capacity:
      _, (_, entry_accuracy) = self._entries.popitem(last=False)
      self._bump("evicted_by_entry_accuracy", entry_accuracy)
      step["evicted"] += 1
    return step

  def sample(self, n: int, rng: random.Random | Any) -> list[Any]:
    """Draws ``n`` records uniformly without replacement (all of them when fewer are buffered).

    Args:
      n: how many to draw from this process's partition.
      rng: a seeded `random.Random`, or a `numpy.random.Generator`.

    Returns:
      The records, in the order drawn.
    """
    if n < 0:
      raise ValueError(f"n must be >= 0, got {n}")
    records = self.records()
    k = min(n, len(records))
    if isinstance(rng, random.Random):
      return rng.sample(records, k)
    return [records[i] for i in rng.choice(len(records), size=k, replace=False)]

  def state_dict(self) -> dict[str, Any]:
    """A JSON-serialisable snapshot (when the records and ids are), oldest entry first."""
    return {
        "version": _STATE_VERSION,
        "capacity": self.capacity,
        "threshold": self.threshold,
        "num_processes": self.num_processes,
        "process_index": self.process_index,
        "entries": [[qid, record, accuracy] for qid, (record, accuracy) in self._entries.items()],
        "counters": {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.counters.items()},
    }

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    """Restores a snapshot taken by `state_dict` (e.g. after a JSON round trip).

    Raises:
      ValueError: unknown version, or a different partition (P or p) than this buffer's.
    """
    if state.get("version") != _STATE_VERSION:
      raise ValueError(f"unknown replay-buffer state version {state.get('version')!r}")
    if (state["num_processes"], state["process_index"]) != (self.num_processes,
                                                            self.process_index):
      raise ValueError(
          f"state is for process {state['process_index']} of {state['num_processes']}, this "
          f"buffer is process {self.process_index} of {self.num_processes}")
    entries = OrderedDict()
    for qid, record, accuracy in state["entries"]:
      entries[_hashable(qid)] = (record, float(accuracy))
    counters = _new_counters()
    for key, value in state["counters"].items():
      counters[key] = dict(value) if isinstance(value, Mapping) else int(value)
    self._entries = entries
    self.counters = counters
    while len(self._entries) > self.local_capacity:  # The capacity may have shrunk.
      _, (_, entry_accuracy) = self._entries.popitem(last=False)
      self._bump("evicted_by_entry_accuracy", entry_accuracy)

  def load_partitions(self, states: Sequence[Mapping[str, Any]]) -> None:
    """Restores this partition from the snapshots of every partition of a run with any number of
    processes (a run resumed on a different slice).

    Keeps the entries this partition owns, each old partition's order preserved (the old
    partitions' entries are interleaved oldest-first by their rank in their partition). The
    counters of all the old partitions are summed into process 0, so that their sum over the
    processes is unchanged.

    Raises:
      ValueError: unknown version, or snapshots that are not one run's complete set of partitions.
    """
    states = list(states)
    if len(states) == 1 and states[0].get("num_processes") == self.num_processes:
      self.load_state_dict(states[0])
      return
    for state in states:
      if state.get("version") != _STATE_VERSION:
        raise ValueError(f"unknown replay-buffer state version {state.get('version')!r}")
    if sorted(s["process_index"] for s in states) != list(range(states[0]["num_processes"])):
      raise ValueError(f"{len(states)} replay-buffer snapshots are not the partitions of one run "
                       f"({[(s['process_index'], s['num_processes']) for s in states]})")
    ranked = sorted((rank, i, entry) for i, s in enumerate(states)
                    for rank, entry in enumerate(s["entries"]))
    counters = _new_counters()
    if self.process_index == 0:
      for state in states:
        for key, value in state["counters"].items():
          if isinstance(value, Mapping):
            for bin_, count in value.items():
              counters[key][bin_] = counters[key].get(bin_, 0) + int(count)
          else:
            counters[key] += int(value)
    self.load_state_dict({
        "version": _STATE_VERSION, "num_processes": self.num_processes,
        "process_index": self.process_index, "counters": counters,
        "entries": [entry for _, _, entry in ranked if self.owns(_hashable(entry[0]))]})


def _hashable(qid: Any) -> Hashable:
  """JSON turns tuple ids into lists; turn them back."""
  return tuple(_hashable(x) for x in qid) if isinstance(qid, list) else qid
