"""Multi-host correctness of the whole trainer: `zppo train` as 2 processes x 4 CPU devices (JAX
distributed on localhost, gloo collectives) takes the same ZPPO steps as 1 process x 8 devices.

Preemption: SIGTERM reaching one of the 2 processes stops both after the same step, and the
resumed run ends exactly where the uninterrupted one does.

Each run executes this file as a script (the device count must be fixed before JAX starts); the
processes of a run share one workdir. The single-process run goes first and builds the demo cache
(tiny tokenizer, student and teacher), which the two-process run then finds.
"""
import json
import os
import zlib
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 2


def run_args(workdir: str, cache: str) -> list[str]:
  return ["--config", "configs/demo.py:tiny", f"--workdir={workdir}",
          f"--config.total_steps={STEPS}", f"--config.checkpoint_every={STEPS}",
          "--config.async_checkpointing=False", f"--config.demo.cache_dir={cache}",
          f"--config.compilation_cache_dir={ROOT / '.jax_cache'}",
          # Few shapes, few programs: 3 new + 1 replayed prompts and the 4 held-out ones all take
          # the 4-prompt bucket; the teacher's rollouts reuse the student's sampling programs; the
          # models keep their random initialisation (no warm-start compile).
          "--config.rl.batch_prompts=3", "--config.demo.num_eval=4",
          "--config.rl.teacher_group_size=4", "--config.demo.student_sft_steps=0",
          "--config.demo.teacher_sft_steps=0",
          # 8 devices: every update's rows split over the (data x fsdp) = 8 shards.
          "--config.rl.min_rows_per_update=8"]


def hashed_grades(items, pool=None, judge=None):
  """Stands in for grading: the untrained tiny models never answer right, and all-zero rewards
  would leave nothing to learn; a reward from the response's hash is mixed and deterministic."""
  del pool
  if judge is None:   # The per-process block (`run.make_grader` then calls once more with the judge).
    hashed_grades.count += len(items)
  return [float(zlib.crc32(item.response.encode()) % 3 == 0) for item in items]


hashed_grades.count = 0


def worker(workdir: str, cache: str, out: str):
  """One process of a run: `zppo train` (which initialises JAX's distributed runtime from the
  environment), then this process's copy of the final parameters."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_default_matmul_precision", "highest")
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from zppo_jax import distributed  # pylint: disable=import-outside-toplevel
  from zppo_jax import rewards  # pylint: disable=import-outside-toplevel
  from zppo_jax.train import run  # pylint: disable=import-outside-toplevel

  rewards.grade_batch = hashed_grades   # `run.make_grader` still splits the work over processes.
  built = {}
  build = run.build_trainer

  def keep(*args, **kwargs):
    built["trainer"], close = build(*args, **kwargs)
    return built["trainer"], close

  run.build_trainer = keep
  sigterm_step = int(os.environ.get("SIGTERM_AT_STEP", "0"))
  if sigterm_step and os.environ.get("JAX_PROCESS_ID") == "1":   # (JAX is not initialised yet)
    # Preemption reaching one host only: this process gets SIGTERM as step `sigterm_step` starts.
    from zppo_jax.train import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
    run_step = trainer_lib.Trainer.run_step

    def run_step_then_signal(self, step):
      if step == sigterm_step:
        os.kill(os.getpid(), signal.SIGTERM)
      return run_step(self, step)

    trainer_lib.Trainer.run_step = run_step_then_signal
  assert run.main(run_args(workdir, cache)) == 0
  assert jax.device_count() == 8
  trainer = built["trainer"]
  params = distributed.to_host(trainer.student.state().params)
  flat = {"/".join(map(str, path)): np.asarray(v.get_value() if hasattr(v, "get_value") else v)
          for path, v in nnx.to_flat_state(params)}
  np.savez(f"{out}.{jax.process_index()}.npz", **flat)
  with open(f"{out}.{jax.process_index()}.json", "w") as f:
    json.dump({"process_count": jax.process_count(), "buffer_owned": trainer.buffer.qids(),
               "totals": trainer.totals, "mesh": dict(trainer.student.mesh.shape),
               "graded": hashed_grades.count}, f)
  distributed.sync("done")


def _wait(procs, timeout: float) -> list[str]:
  """Waits for every process; when one fails the others are stopped (they would wait forever
  for it in their next collective). Returns each process's output."""
  outs = [tempfile.TemporaryFile() for _ in procs]
  readers = [threading.Thread(target=lambda p=p, o=o: o.write(p.stdout.read()), daemon=True)
             for p, o in zip(procs, outs)]
  for r in readers:
    r.start()
  deadline = time.monotonic() + timeout
  while any(p.poll() is None for p in procs):
    if any(p.returncode not in (None, 0) for p in procs) or time.monotonic() > deadline:
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.5)
  logs = []
  for r, o in zip(readers, outs):
    r.join()
    o.seek(0)
    logs.append(o.read().decode(errors="replace"))
  assert time.monotonic() <= deadline, f"a run took more than {timeout} s:\n{logs[0][-3000:]}"
  return logs


def _run(num_processes: int, tmp: pathlib.Path, cache: pathlib.Path, attempts: int = 3,
         name: str = "", sigterm_at_step: int = 0, resume: bool = False):
  """Runs `zppo train` as `num_processes` processes in `tmp/run<name or num_processes>`.

  Args:
    sigterm_at_step: when > 0, process 1 receives SIGTERM as this step starts.
    resume: the workdir holds a run to resume (kept if the attempt is repeated).
  """
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  name = name or str(num_processes)
  workdir = tmp / f"run{name}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             SIGTERM_AT_STEP=str(sigterm_at_step),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // num_processes}")
  procs = []
  for i in range(num_processes):
    if num_processes > 1:
      env = dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                 JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(
        [sys.executable, __file__, str(workdir), str(cache), str(tmp / f"out{name}")],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  logs = _wait(procs, timeout=900)
  failed = [log for p, log in zip(procs, logs) if p.returncode != 0]
  # Gloo gives a peer 30 s to join a new communicator; on a loaded 2-core host one process can
  # still be compiling by then. That is the transport's set-up failing, not the computation, so
  # such a run is started again (with the programs of the first attempt in the compilation cache).
  if failed and attempts > 1 and any("Gloo" in log.rsplit("Traceback", 1)[-1] for log in failed):
    if not resume:
      import shutil  # pylint: disable=import-outside-toplevel
      shutil.rmtree(workdir, ignore_errors=True)
    return _run(num_processes, tmp, cache, attempts - 1, name, sigterm_at_step, resume)
  assert not failed, max(failed, key=lambda log: "Traceback" in log)[-4000:]
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  outs = [(dict(np.load(tmp / f"out{name}.{i}.npz")),
           json.loads((tmp / f"out{name}.{i}.json").read_text()))
          for i in range(num_processes)]
  return dict(workdir=workdir, metrics=metrics, outs=outs, log=logs[0], logs=logs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost_trainer")
  cache = tmp / "demo_cache"
  return _run(1, tmp, cache), _run(2, tmp, cache)


@pytest.fixture(scope="module")
def preempted(runs):
  """The 2-process run again, with SIGTERM reaching process 1 only, at step 1; then resumed.
  After `runs`, which builds the demo cache and fills the compilation cache."""
  tmp = runs[1]["workdir"].parent
  stopped = _run(2, tmp, tmp / "demo_cache", name="2_preempted", sigterm_at_step=1)
  stopped["saved"] = sorted(p.name for p in (stopped["workdir"] / "checkpoints").iterdir()
                            if p.name.isdigit())
  resumed = _run(2, tmp, tmp / "demo_cache", name="2_preempted", resume=True)
  return stopped, resumed


def _compared(row):
  return {k: v for k, v in row.items() if not k.startswith("time_")}


def test_two_processes_log_the_same_steps(runs):
  single, multi = runs
  assert [r["step"] for r in single["metrics"]] == list(range(1, STEPS + 1))
  assert [r["step"] for r in multi["metrics"]] == list(range(1, STEPS + 1))
  for one, two in zip(single["metrics"], multi["metrics"]):
    one, two = _compared(one), _compared(two)
    assert sorted(one) == sorted(two)
    for k in one:
      if not isinstance(one[k], (int, float)):
        assert two[k] == one[k], k
      elif isinstance(one[k], float) and np.isnan(one[k]):
        assert np.isnan(two[k]), k
      else:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-4, atol=1e-6, err_msg=k)
  first, last = single["metrics"]
  assert last["batch/replay"] > 0 and last["update/num_tokens"] > 0   # replay and updates ran
  assert 0 < first["reward/plain"] < 1 and first["update/grad_norm"] > 0   # something learnt
  assert first["update/loss"] != last["update/loss"]


def test_two_processes_end_with_the_same_parameters(runs):
  single, multi = runs
  (params, _), = single["outs"]
  assert len(multi["outs"]) == 2
  for other, info in multi["outs"]:
    assert info["process_count"] == 2 and info["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert sorted(other) == sorted(params)
    for k in params:
      np.testing.assert_allclose(other[k], params[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_buffer_is_partitioned_and_state_is_shared(runs):
  single, multi = runs
  (_, one), = single["outs"]
  (_, a), (_, b) = multi["outs"]
  assert one["buffer_owned"] and not set(a["buffer_owned"]) & set(b["buffer_owned"])
  assert sorted(a["buffer_owned"] + b["buffer_owned"]) == sorted(one["buffer_owned"])
  assert a["totals"] == b["totals"] == one["totals"]
  # Each process graded its own block: the two shares add up to the single process's work.
  assert a["graded"] > 0 and b["graded"] > 0 and a["graded"] + b["graded"] == one["graded"]


def test_only_the_main_process_writes_and_the_checkpoint_is_collective(runs):
  _, multi = runs
  workdir = multi["workdir"]
  assert (workdir / "checkpoints" / str(STEPS)).is_dir()
  # The host state (one JSON file) holds every process's replay-buffer partition.
  host = json.loads((workdir / "checkpoints" / str(STEPS) / "host" / "metadata").read_text())
  assert [b["process_index"] for b in host["buffer"]] == [0, 1]
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == STEPS   # One writer: no duplicated rows.


def test_sigterm_on_one_process_stops_every_process_at_the_same_step(preempted):
  stopped, _ = preempted
  # Both processes stopped after step 1 (checkpoints are due only every 2 steps), saved it, and
  # exited with status 0.
  assert [r["step"] for r in stopped["metrics"]] == [1]
  for index, log in enumerate(stopped["logs"]):
    who = "this process" if index == 1 else "another process"
    assert f"SIGTERM received (by {who}); saved step 1 and stopped" in log, log[-3000:]
  assert stopped["saved"] == ["1"]


def test_the_resumed_run_equals_the_uninterrupted_one(runs, preempted):
  _, multi = runs
  _, resumed = preempted
  assert "resumed from step 1" in resumed["log"]
  assert [_compared(r) for r in resumed["metrics"]] == [_compared(r) for r in multi["metrics"]]
  for (params, _), (other, _) in zip(multi["outs"], resumed["outs"]):
    assert sorted(other) == sorted(params)
    for k in params:
      np.testing.assert_array_equal(other[k], params[k], err_msg=k)


if __name__ == "__main__":
  worker(sys.argv[1], sys.argv[2], sys.argv[3])
