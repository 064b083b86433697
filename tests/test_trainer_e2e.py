"""The step loop on the real tiny Qwen3.5 (sampler, learner, teacher), end to end on CPU.

One module-scoped demo cache (tokenizer, warm-started student and teacher of one shape) is shared,
so the sampler, learner and teacher programs compile once for the whole file. Resume after SIGKILL
and SIGTERM run `zppo train` in subprocesses.
"""
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zppo_jax.train import demo, run
from zppo_jax.train.config import load_config
from zppo_jax.train.metrics import read_metrics
from zppo_jax.train.trainer import TrainSequence
from conftest import without_timings

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = str(ROOT / ".jax_cache")


def tiny_overrides(cache_dir, method="zppo", steps=1):
  return [f"--config.method={method}", f"--config.total_steps={steps}",
          f"--config.demo.cache_dir={cache_dir}", f"--config.compilation_cache_dir={CACHE}",
          "--config.async_checkpointing=False"]


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
  cache = tmp_path_factory.mktemp("demo_cache")
  config = load_config("configs/demo.py:tiny", tiny_overrides(cache))
  demo.prepare(config, stream=open(os.devnull, "w"))
  return cache


@pytest.fixture(scope="module")
def trainer_factory(demo_cache, tmp_path_factory):
  """Builds trainers that share one student/teacher pair (their compiled programs included)."""
  shared = {}

  def make(method, steps=1):
    config = load_config("configs/demo.py:tiny", tiny_overrides(demo_cache, method, steps))
    demo.prepare(config, stream=open(os.devnull, "w"))
    workdir = tmp_path_factory.mktemp(method)
    if not shared:
      trainer, close = run.build_trainer(config, workdir, stream=open(os.devnull, "w"))
      shared.update(student=trainer.student, teacher=trainer.teacher, tokenizer=trainer.tokenizer,
                    grader=trainer.grader, prompts=trainer.prompts, close=close, state=None)
      shared["state"] = jax.device_get(trainer.student.state())  # A host copy: updates donate.
      return trainer
    from zppo_jax.train.trainer import Trainer
    # Every method starts from the same weights.
    shared["student"].load_state(jax.tree.map(jnp.asarray, shared["state"]))
    return Trainer(config, workdir, student=shared["student"], teacher=shared["teacher"],
                   tokenizer=shared["tokenizer"], prompts=shared["prompts"],
                   grader=shared["grader"], stop_ids=sorted(trainer_stop(shared["tokenizer"])),
                   stream=open(os.devnull, "w"))

  yield make
  if shared:
    shared["close"]()


def trainer_stop(tok):
  return {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}


def test_effect_line_names_the_lowest_subset_and_zero_entry_graduations():
  summary = {"method": "zppo",
             "eval_before": {"eval/accuracy": 0.5, "eval/accuracy/level1": 0.9,
                             "eval/accuracy/level3": 0.02},
             "eval_after": {"eval/accuracy": 0.6, "eval/accuracy/level1": 0.9,
                            "eval/accuracy/level3": 0.35}}
  last = {"buffer/admitted_bin/0.0000": 20, "buffer/graduated_bin/0.0000": 14}
  assert run.effect_line(summary, last) == (
      "effect (zppo): level3 held-out 0.02 -> 0.35; 14 of 20 questions that entered the buffer "
      "at 0% accuracy graduated")
  summary = {"method": "grpo", "eval_before": {"eval/accuracy": 0.1},
             "eval_after": {"eval/accuracy": 0.2}}
  assert run.effect_line(summary, {}) == "effect (grpo): held-out 0.10 -> 0.20"
  assert run.effect_line({"method": "grpo"}, {}) == ""


@pytest.mark.parametrize("method", ["zppo", "prefix", "off_distill", "on_distill"])
def test_methods_on_the_tiny_model(trainer_factory, method):
  trainer = trainer_factory(method)
  summary = trainer.train()
  rows = read_metrics(trainer.workdir)
  assert [r["step"] for r in rows] == [1] and summary["step"] == 1
  row = rows[0]
  assert row["groups/plain"] == row["batch/new"] + row["batch/replay"]
  if method.endswith("distill"):
    assert "distill/sequences" in row
  else:
    assert np.isfinite(row["update/loss"]) and row["update/skipped"] == 0
    assert row["update/num_tokens"] > 0


def test_non_finite_update_is_skipped(trainer_factory):
  trainer = trainer_factory("grpo")
  student = trainer.student
  before = [np.asarray(x) for x in _leaves(student.state().params)]
  seq = TrainSequence([1, 2, 3], [4, 5], [-1.0, -1.0], float("nan"))
  metrics = student.train_step([[seq], [seq]])
  assert [m["skipped"] for m in metrics] == [1.0, 1.0]
  after = [np.asarray(x) for x in _leaves(student.state().params)]
  assert all(np.array_equal(a, b) for a, b in zip(before, after))


def _leaves(tree):
  return jax.tree.leaves(tree)


def _train_cmd(workdir, cache_dir, steps):
  return [sys.executable, "-m", "zppo_jax.cli", "train", "--config=configs/demo.py:tiny",
          f"--workdir={workdir}", *tiny_overrides(cache_dir, "zppo", steps),
          "--config.checkpoint_every=1"]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


def _wait_for_rows(workdir, proc, n):
  while proc.poll() is None and len(read_metrics(workdir)) < n:
    time.sleep(0.2)


def test_resume_after_sigkill_and_sigterm_is_exact_then_export(demo_cache, tmp_path):
  full, killed = tmp_path / "full", tmp_path / "killed"
  first = subprocess.run(_train_cmd(full, demo_cache, 3), cwd=ROOT, env=_env(), check=True,
                         capture_output=True, text=True)
  # The end of a run names the effect: per-level held-out accuracy, 0%-entry graduations.
  assert "held-out accuracy (level3):" in first.stderr
  assert "effect (zppo): level" in first.stderr and "held-out" in first.stderr
  # SIGKILL during the run: nothing is saved on the way out.
  proc = subprocess.Popen(_train_cmd(killed, demo_cache, 3), cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_rows(killed, proc, 1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode != 0 and len(read_metrics(killed)) < 3
  # Resume, then SIGTERM: the run saves the step it is in and exits cleanly.
  proc = subprocess.Popen(_train_cmd(killed, demo_cache, 3), cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  done = len(read_metrics(killed))
  _wait_for_rows(killed, proc, done + 1)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-2000:]
  steps = len(read_metrics(killed))
  if steps < 3:  # The signal arrived before the last step ended.
    assert "SIGTERM received" in err
    saved = [int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit()]
    assert max(saved) == steps
  # Resume to the end: the same per-step metrics as the uninterrupted run.
  resumed = subprocess.run(_train_cmd(killed, demo_cache, 3), cwd=ROOT, env=_env(),
                           capture_output=True, text=True, check=True)
  assert "resumed from step" in resumed.stderr
  assert without_timings(read_metrics(killed)) == without_timings(read_metrics(full))

  from flax import nnx
  from zppo_jax.train.export import export
  assert export(full, tmp_path / "hf", stream=open(os.devnull, "w")) == 3
  exported = run.load_model(str(tmp_path / "hf"), "float32")
  start = run.load_model(str(next(pathlib.Path(demo_cache).glob("*/student"))), "float32")
  a = jax.tree.leaves(nnx.state(exported, nnx.Param))
  b = jax.tree.leaves(nnx.state(start, nnx.Param))
  assert len(a) == len(b) and any(not np.array_equal(x, y) for x, y in zip(a, b))
  assert (tmp_path / "hf" / "tokenizer_config.json").exists()
