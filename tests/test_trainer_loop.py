"""The step loop of every method with a scripted policy (no model): Algorithm 1's bookkeeping.

The scripted student answers a question correctly with a probability that depends on its level, on
the prompt kind (a BCQ shows the right answer, so it is easier) and on a learned "skill" that the
updates move; its state is a small JAX pytree so checkpoints go through orbax like the real one.
These tests check the loop's wiring fast; tests/test_trainer_e2e.py runs the real model.
"""
import json
import pathlib
import re

import jax.numpy as jnp
import numpy as np
import pytest

from zppo_jax.data import demo_task, demo_tokenizer, train_data
from zppo_jax.rewards import extract_answer
from zppo_jax.train import augment
from zppo_jax.train.config import METHODS, load_config
from zppo_jax.train.groups import Completion
from zppo_jax.train.metrics import read_metrics
from zppo_jax.train.checkpointing import CheckpointMismatch, RunCheckpointer
from zppo_jax.train.trainer import Trainer
from conftest import without_timings


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("assets")
  rows = demo_task.records([1, 2, 3, 4], 64, 0, prefix="t")
  corpus = [augment.user_text(r["question"]) + demo_task.solution(*demo_task.operands(
      r["question"])) for r in rows] + ["user assistant candidate WRONG hint summary"]
  tok = demo_tokenizer.build_tokenizer(corpus, root / "tok", vocab_size=400)
  demo_task.write_jsonl(rows, root / "train.jsonl")
  # Built once into shards, as `zppo train` builds a prompt file; every trainer reads them.
  built = train_data.prepare(root / "train.jsonl", root, min_image_side=32, vision=None)
  return tok, built, demo_task.records([4], 4, 1, prefix="e")


def prompt_batches(tok, built, config):
  """The step batches `zppo train` takes from the built prompt file."""
  return train_data.TrainData(built, tok, augment.user_text, vision=None,
                              batch_size=config.rl.batch_prompts, seed=config.seed,
                              max_prompt_tokens=256, num_workers=0)


class ScriptedPolicy:
  """Answers correctly with probability sigmoid(skill + bonus - level); deterministic per seed."""

  def __init__(self, tok, skill=2.0):
    self.tok = tok
    self.stop = tok.convert_tokens_to_ids("<|im_end|>")
    self.params = {"skill": jnp.asarray(skill, jnp.float32), "updates": jnp.asarray(0, jnp.int32)}
    self.updates_seen = []

  def generate(self, prompts, *, num_samples, max_new_tokens, seed):
    rng = np.random.default_rng(seed)
    out = []
    for ids in prompts:
      text = self.tok.decode(ids, skip_special_tokens=False)
      m = re.search(r"What is (\d+) \+ (\d+)\?", text)
      if m is None:  # A teacher text job (compression or hint): echo a short summary.
        out.append([Completion(self.tok.encode("<summary>short</summary>") + [self.stop],
                               [-1.0] * 4)] * num_samples)
        continue
      a, b = int(m.group(1)), int(m.group(2))
      level = len(m.group(1))
      bonus = 2.0 if "candidate" in text or "<hint>" in text else 0.0
      p = 1 / (1 + np.exp(-(float(self.params["skill"]) + bonus - 1.5 * level)))
      group = []
      for _ in range(num_samples):
        answer = a + b if rng.random() < p else a + b + 1 + int(rng.integers(3))
        tokens = self.tok.encode(f"<think>\nsum\n</think>\n\\boxed{{{answer}}}") + [self.stop]
        group.append(Completion(tokens, [-0.5] * len(tokens)))
      out.append(group)
    return out

  def train_step(self, parts):
    self.updates_seen.append([len(p) for p in parts])
    for part in parts:
      gain = float(np.mean([s.advantage * (1 if "\\boxed" in self.tok.decode(s.tokens) else 0)
                            for s in part]))
      self.params = {"skill": self.params["skill"] + 0.05 * abs(gain),
                     "updates": self.params["updates"] + 1}
    return [{"loss": 0.1, "skipped": 0.0} for _ in parts]

  def distill_step(self, sequences, teacher):
    self.params = {"skill": self.params["skill"] + 0.01,
                   "updates": self.params["updates"] + 1}
    return {"jsd": 0.5, "skipped": 0.0}

  def state(self):
    return self.params

  def load_state(self, state):
    self.params = {k: jnp.asarray(v) for k, v in state.items()}


def grader(responses, records):
  return [float(extract_answer(r) == rec["answer"]) for r, rec in zip(responses, records)]


def make_trainer(assets, workdir, method="zppo", steps=3, overrides=()):
  tok, train_path, eval_rows = assets
  config = load_config("configs/demo.py:tiny", [f"--config.method={method}",
                                                f"--config.total_steps={steps}", *overrides])
  config.async_checkpointing = False
  it = prompt_batches(tok, train_path, config)
  student, teacher = ScriptedPolicy(tok, skill=3.0), ScriptedPolicy(tok, skill=8.0)
  return Trainer(config, workdir, student=student, teacher=teacher, tokenizer=tok, prompts=it,
                 grader=grader, stop_ids=[student.stop], eval_records=eval_rows,
                 stream=open("/dev/null", "w"))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_and_logs(assets, tmp_path, method):
  trainer = make_trainer(assets, tmp_path, method, steps=2)
  summary = trainer.train()
  rows = read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2]
  flags = METHODS[method]
  for r in rows:
    assert r["batch/new"] == trainer.config.rl.batch_prompts
    assert all(k.startswith("time_") or not isinstance(v, float) or np.isfinite(v)
               for k, v in r.items())
    if not flags.bcq:
      assert r.get("reform/bcq", 0) == 0
    if not (flags.replay or (flags.distill and trainer.config.rl.distill_with_buffer)):
      assert r["batch/replay"] == 0
  assert summary["step"] == 2
  assert "eval_before" in summary and "eval_after" in summary


def test_zppo_turns_all_fail_questions_into_learning_signal(assets, tmp_path):
  trainer = make_trainer(assets, tmp_path, "zppo", steps=3,
                         overrides=["--config.rl.batch_prompts=16"])
  trainer.train()
  rows = read_metrics(tmp_path)
  # Some plain groups fail completely, yet BCQ/NCQ groups of hard questions carry signal.
  assert sum(r.get("groups/bcq", 0) for r in rows) > 0
  assert sum(r.get("groups/ncq", 0) for r in rows) > 0
  assert any(r.get("zero_adv/bcq", 1.0) < 1.0 for r in rows)
  # Caps: BCQ + NCQ never exceed floor(rho_aug * |X_new|).
  cap = int(trainer.config.rl.aug_ratio * trainer.config.rl.batch_prompts)
  assert all(r.get("reform/bcq", 0) + r.get("reform/ncq", 0) <= cap for r in rows)
  # I disjoint mini-batches per step, together holding every rollout exactly once.
  for sizes, r in zip(trainer.student.updates_seen, rows):
    assert len(sizes) == trainer.config.rl.inner_updates
    total = sum(r.get(f"groups/{k}", 0) for k in ("plain", "bcq", "ncq")) * \
        trainer.config.rl.group_size
    assert sum(sizes) == total and max(sizes) - min(sizes) <= 1


def test_grpo_has_no_replay_and_no_teacher_calls(assets, tmp_path):
  trainer = make_trainer(assets, tmp_path, "grpo", steps=2)
  trainer.teacher = None  # GRPO never asks the teacher.
  trainer.train()
  rows = read_metrics(tmp_path)
  assert all(r["batch/replay"] == 0 and "groups/bcq" not in r for r in rows)


def test_buffer_admits_hard_and_replays_them(assets, tmp_path):
  trainer = make_trainer(assets, tmp_path, "grpo_replay", steps=3)
  trainer.train()
  rows = read_metrics(tmp_path)
  assert rows[0]["buffer/admitted"] == rows[0]["batch/hard"]
  assert rows[1]["batch/replay"] == min(rows[0]["buffer/size"],
                                        int(round(0.25 * trainer.config.rl.batch_prompts)))
  assert rows[-1]["buffer/admitted_total"] == sum(r["buffer/admitted"] for r in rows)


def test_resume_is_exact(assets, tmp_path):
  full = make_trainer(assets, tmp_path / "full", "zppo", steps=4,
                      overrides=["--config.checkpoint_every=2"])
  full.train()
  part = make_trainer(assets, tmp_path / "part", "zppo", steps=2,
                      overrides=["--config.checkpoint_every=2"])
  part.train()
  # A new process-like trainer on the same workdir continues from step 2.
  rest = make_trainer(assets, tmp_path / "part", "zppo", steps=4,
                      overrides=["--config.checkpoint_every=2"])
  rest.train()
  assert rest.step == 4
  assert without_timings(read_metrics(tmp_path / "full")) == without_timings(
      read_metrics(tmp_path / "part"))
  assert float(full.student.params["skill"]) == float(rest.student.params["skill"])


def test_teacher_cache_is_bounded_checkpointed_and_resumes_exactly(assets, tmp_path):
  overrides = ["--config.checkpoint_every=2", "--config.rl.cache_teacher_rollouts=True"]
  full = make_trainer(assets, tmp_path / "full", "zppo", steps=4, overrides=overrides)
  full.train()
  assert len(full.teacher_cache) > 0   # correct teacher rollouts were kept
  make_trainer(assets, tmp_path / "part", "zppo", steps=2, overrides=overrides).train()
  rest = make_trainer(assets, tmp_path / "part", "zppo", steps=4, overrides=overrides)
  rest.train()
  assert rest.teacher_cache.state_dict() == full.teacher_cache.state_dict()
  assert without_timings(read_metrics(tmp_path / "full")) == without_timings(
      read_metrics(tmp_path / "part"))


def test_corrupt_latest_checkpoint_falls_back(assets, tmp_path, capfd):
  trainer = make_trainer(assets, tmp_path, "grpo_replay", steps=2,
                         overrides=["--config.checkpoint_every=1"])
  trainer.train()
  for f in (tmp_path / "checkpoints" / "2").rglob("*"):
    if f.is_file() and "host" in f.parts:
      f.write_text("{not json")
  again = make_trainer(assets, tmp_path, "grpo_replay", steps=2,
                       overrides=["--config.checkpoint_every=1"])
  again.stream = None
  again.train()
  err = capfd.readouterr().err
  assert "step 2" in err and "cannot be restored" in err
  assert again.step == 2  # Resumed at 1, re-ran step 2.


def _files(root):
  return sorted((str(p.relative_to(root)), p.read_bytes()) for p in root.rglob("*") if p.is_file())


def test_a_config_change_stops_and_loses_nothing(assets, tmp_path):
  trainer = make_trainer(assets, tmp_path, "grpo_replay", steps=2,
                         overrides=["--config.checkpoint_every=1"])
  trainer.train()
  before = _files(tmp_path)
  assert len(read_metrics(tmp_path)) == 2
  # A config change that changes the state's structure (as weight decay 0 drops an optimizer
  # link; tests/test_checkpointing.py does it with the real optimizer).
  again = make_trainer(assets, tmp_path, "grpo_replay", steps=4,
                       overrides=["--config.checkpoint_every=1", "--config.optim.weight_decay=0.0"])
  again.student.params = {**again.student.params, "decay": jnp.zeros(3)}
  with pytest.raises(CheckpointMismatch, match=r"keys only in this run: decay.*"
                     r"optim.weight_decay: 0.1 -> 0.0"):
    again.train()
  assert _files(tmp_path) == before  # Checkpoints, metrics.jsonl and config.json untouched.


@pytest.mark.parametrize("metadata", ["{}", '{"step": 2}', '{"step": 2, "buffer": 3, "data": {}, '
                                      '"totals": {}, "teacher_cache": {}}'])
def test_bad_host_metadata_falls_back_and_cuts_metrics_to_the_restored_step(
    assets, tmp_path, capfd, metadata):
  trainer = make_trainer(assets, tmp_path, "grpo_replay", steps=2,
                         overrides=["--config.checkpoint_every=1"])
  trainer.train()
  (tmp_path / "checkpoints" / "2" / "host" / "metadata").write_text(metadata)
  again = make_trainer(assets, tmp_path, "grpo_replay", steps=3,
                       overrides=["--config.checkpoint_every=100"])
  again.stream = None
  rows = []

  def stop_after_restore(step):  # Look at metrics.jsonl as the resumed run starts.
    rows.extend(read_metrics(tmp_path))
    raise KeyboardInterrupt

  again.run_step = stop_after_restore
  with pytest.raises(KeyboardInterrupt):
    again.train()
  assert "step 2" in capfd.readouterr().err and again.step == 1
  assert [r["step"] for r in rows] == [1]  # Cut back to the restored step, not emptied.
  dropped = (tmp_path / "metrics.dropped.jsonl").read_text().splitlines()
  assert [json.loads(r)["step"] for r in dropped] == [2]  # The cut rows are kept.
  assert (tmp_path / "checkpoints_corrupt" / "2").exists()
  assert RunCheckpointer(tmp_path).steps() == [1]


def test_plots_and_tensorboard(assets, tmp_path):
  from zppo_jax.train.plots import write_plots
  make_trainer(assets, tmp_path, "zppo", steps=2).train()
  paths = write_plots(tmp_path)
  assert sorted(p.name for p in paths) == ["buffer.png", "composition.png", "graduation.png",
                                           "rewards.png"]
  assert all(len(p.read_bytes()) > 1000 for p in paths)
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_step_follows_algorithm_1(assets, tmp_path):
  """Spec §2 steps 1, 3, 7-10 and §3's whole-step statistics, checked on three ZPPO steps.

  1: the new prompts are the dataset's next batch whatever is replayed (replays do not consume
  it), the replays are distinct buffered questions, min(|B|, ρ_replay·|X_new|) of them. 3: every
  hard question, new or replayed, gets G_T fresh teacher rollouts on every visit. 7: BCQ/NCQ
  rollouts are rewarded against the original gold. 8 and §3: the learner's advantages are one
  computation over the whole step with plain, BCQ and NCQ as separate groups (not per
  mini-batch). 9: I disjoint mini-batches holding every rollout once. 10: the buffer follows plain
  accuracy only and stores the question records, never responses.
  """
  from zppo_jax.rl.advantages import compute_advantages
  from zppo_jax.train.groups import flatten
  from zppo_jax.zppo.replay_buffer import ReplayBuffer

  tok, train_path, _ = assets
  trainer = make_trainer(assets, tmp_path, "zppo", steps=3,
                         overrides=["--config.rl.batch_prompts=16"])
  rl = trainer.config.rl
  dataset = prompt_batches(tok, train_path, trainer.config)
  shadow = ReplayBuffer(rl.buffer_capacity, rl.tau)
  seen = {"groups": [], "teacher": [], "parts": []}

  def spy(fn, key, pick=lambda *a, **k: a[0]):
    def wrapped(*args, **kwargs):
      out = fn(*args, **kwargs)
      value = pick(out, *args, **kwargs)
      if value is not None:
        seen[key].append(value)
      return out
    return wrapped

  trainer._rollouts = spy(trainer._rollouts, "groups")
  trainer.teacher.generate = spy(
      trainer.teacher.generate, "teacher",
      lambda out, prompts, *, num_samples, **_: ([list(p) for p in prompts], num_samples)
      if num_samples == rl.teacher_group_size else None)
  trainer.student.train_step = spy(trainer.student.train_step, "parts", lambda out, parts: parts)
  replayed_hard = signal_only_in_reformulations = 0
  for step in (1, 2, 3):
    for v in seen.values():
      v.clear()
    buffered = set(trainer.buffer.qids())
    metrics = trainer.run_step(step)
    trainer.step = step
    groups = [g for out in seen["groups"] for g in out]
    plain = [g for g in groups if g.kind == "plain"]
    new, replay = plain[:rl.batch_prompts], plain[rl.batch_prompts:]
    # Step 1.
    assert [g.qid for g in new] == [r["id"] for r in next(dataset)]
    assert len({g.qid for g in replay}) == len(replay) and {g.qid for g in replay} <= buffered
    assert len(replay) == min(len(buffered), int(round(rl.replay_ratio * rl.batch_prompts)))
    # Step 3: one teacher call with G_T samples for every hard question (new and replayed).
    hard = [g for g in plain if g.accuracy < rl.tau]
    assert seen["teacher"] == ([([list(g.prompt_ids) for g in hard], rl.teacher_group_size)]
                               if hard else [])
    replayed_hard += sum(g.qid in buffered for g in hard)
    # Step 7: reformulated groups are graded against their question's own gold.
    by_qid = {g.qid: g for g in plain}
    extra = [g for g in groups if g.kind != "plain"]
    assert extra and {g.kind for g in extra} <= {"bcq", "ncq"}
    # Every built BCQ/NCQ prompt is rolled out: the plain prompts' length limit does not apply.
    assert len(extra) == metrics["reform/bcq"] + metrics["reform/ncq"]
    for g in extra:
      assert g.record is by_qid[g.qid].record
      assert g.rewards == [float(extract_answer(t) == by_qid[g.qid].record["answer"])
                           for t in g.texts]
      signal_only_in_reformulations += (by_qid[g.qid].accuracy < rl.tau <= g.accuracy)
    # Steps 8-9 and §3: the advantages the learner got are the whole step's, computed once.
    rewards, ids = flatten(groups)
    expected = np.asarray(compute_advantages(rewards, ids, rl.adv_norm))
    want, got = {}, {}
    for g, (i, c) in zip([g for g in groups for _ in g.completions],
                         enumerate(c for g in groups for c in g.completions)):
      want.setdefault((tuple(g.prompt_ids), tuple(c.tokens)), []).append(expected[i])
    (parts,) = seen["parts"]
    assert len(parts) == rl.inner_updates
    for part in parts:
      for s in part:
        got.setdefault((tuple(s.prompt_ids), tuple(s.tokens)), []).append(s.advantage)
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_allclose(sorted(got[key]), sorted(want[key]), rtol=1e-5, atol=1e-6)
    # Step 10: plain accuracy only; records without responses.
    shadow.update({g.qid: g.accuracy for g in plain},
                  {g.qid: augment.strip_record(g.record) for g in plain})
    assert trainer.buffer.qids() == shadow.qids()
    for record in trainer.buffer.records():
      assert set(record) <= {"id", "source", "subset", "index", "question", "answer", "images",
                             "choices"}
  # The run exercised what the checks are about: a replayed question that was still hard, and a
  # hard question whose BCQ/NCQ rollouts reached τ (it must still be admitted / kept).
  assert replayed_hard > 0 and signal_only_in_reformulations > 0
