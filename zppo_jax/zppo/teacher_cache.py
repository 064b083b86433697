"""An optional per-question cache of correct teacher rollouts (an option beyond the paper).

The paper samples G_T fresh teacher rollouts for every hard question on every visit (spec §2
step 3), which is this cache switched off (the default: `ReformulationConfig.cache_teacher_rollouts`
is False). Switched on, the correct rollouts of a visit are kept, and a later visit of the same
question that samples none correct can still build a BCQ from them.
"""
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from zppo_jax.zppo.reformulate import Rollout


class TeacherRolloutCache:
  """Keeps up to ``per_question`` correct teacher rollouts for up to ``max_questions`` questions.

  Args:
    enabled: off = `merge` returns the fresh rollouts untouched and nothing is stored.
    per_question: correct rollouts kept per question (the newest).
    max_questions: questions kept (least recently updated dropped first).
  """

  def __init__(self, enabled: bool = False, per_question: int = 4, max_questions: int = 10_000):
    self.enabled = enabled
    self.per_question = per_question
    self.max_questions = max_questions
    self._store: OrderedDict[Hashable, tuple[Rollout, ...]] = OrderedDict()

  def __len__(self) -> int:
    return len(self._store)

  def merge(self, qid: Hashable, fresh: Sequence[Rollout]) -> tuple[Rollout, ...]:
    """Stores this visit's correct rollouts and returns the rollouts to reformulate with.

    Args:
      qid: the question id.
      fresh: this visit's G_T teacher rollouts.

    Returns:
      ``fresh`` followed by cached correct rollouts not already in it (when enabled).
    """
    fresh = tuple(fresh)
    if not self.enabled:
      return fresh
    cached = self._store.pop(qid, ())
    texts = {r.text for r in fresh}
    extra = tuple(r for r in cached if r.text not in texts)
    keep = (tuple(r for r in fresh if r.correct) + extra)[:self.per_question]
    if keep:
      self._store[qid] = keep
      while len(self._store) > self.max_questions:
        self._store.popitem(last=False)
    return fresh + extra

  def state_dict(self) -> list:
    """The stored rollouts as plain data, least recently updated question first (checkpointed
    with the run's host state)."""
    return [[qid, [[r.text, r.reward, r.answer, None if r.token_ids is None else list(r.token_ids)]
                   for r in rollouts]] for qid, rollouts in self._store.items()]

  def load_state_dict(self, state: Sequence) -> None:
    """Continues from a `state_dict()`."""
    self._store = OrderedDict(
        (qid, tuple(Rollout(text, float(reward), answer, None if ids is None else tuple(ids))
                    for text, reward, answer, ids in rollouts)) for qid, rollouts in state)
