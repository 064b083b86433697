"""`zppo sweep`: expansion and naming, skip/resume, status, report, and the command line."""
import csv
import io
import json
import os
import pathlib
import subprocess
import sys

import pytest

from zppo_jax.sweep import hyper, main as sweep_main, runner, state as state_lib
from zppo_jax.train import config as config_lib

H = hyper.Hyper

# A sweep over three methods of a 3-step run, with a swept key that shares its last part with
# another (`seed`) and a fixed key that must stay out of the names.
CONFIG = '''
from zppo_jax.train.config import base_config


def get_config(arg=""):
  c = base_config()
  c.name = "toy"
  c.total_steps = 3
  return c


def get_hyper(h):
  return h.chainit([
      h.product([h.sweep("config.method", ["grpo", "zppo", "hint"]),
                 h.fixed("config.rl.tau", 0.5)]),
      h.product([h.sweep("config.rl.inner_updates", [1, 4])]),
  ])
'''


@pytest.fixture
def toy(tmp_path):
  path = tmp_path / "toy.py"
  path.write_text(CONFIG)
  return runner.make_plan(str(path), root=str(tmp_path / "runs"))


def write_rows(workdir, steps, reward=0.5):
  workdir.mkdir(parents=True, exist_ok=True)
  with (workdir / "metrics.jsonl").open("a") as f:
    for s in steps:
      f.write(json.dumps({"step": s, "reward/plain": reward + 0.1 * s, "buffer/size": s,
                          "buffer/admitted_total": 2 * s, "buffer/graduated_total": s,
                          "buffer/admitted_bin/0.0000": 4, "buffer/graduated_bin/0.0000": 1,
                          "buffer/admitted_bin/0.2500": s, "time_step": 1.0}) + "\n")


class FakeTrain:
  """Records calls and continues the metrics from the last step, as a resumed run does."""

  def __init__(self, code=0, stop_at=None, fail=()):
    self.calls, self.code, self.stop_at, self.fail = [], code, stop_at, set(fail)

  def __call__(self, plan, variant, log):
    workdir = plan.workdir(variant)
    start = state_lib.run_status(workdir, plan.total_steps[variant.name]).step
    self.calls.append((variant.name, start, variant.overrides()))
    if variant.name in self.fail:
      raise RuntimeError("boom")
    end = self.stop_at or plan.total_steps[variant.name]
    write_rows(workdir, range(start + 1, end + 1))
    return self.code


# --- expansion and naming ---

def test_helpers_product_zipit_chainit():
  p = H.product([H.sweep("config.a", [1, 2]), H.sweep("config.b", ["x", "y"])])
  assert p == [{"config.a": 1, "config.b": "x"}, {"config.a": 1, "config.b": "y"},
               {"config.a": 2, "config.b": "x"}, {"config.a": 2, "config.b": "y"}]
  assert H.zipit([H.sweep("config.a", [1, 2]), H.sweep("config.b", [3, 4])]) == [
      {"config.a": 1, "config.b": 3}, {"config.a": 2, "config.b": 4}]
  assert H.chainit([H.sweep("config.a", [1]), H.sweep("config.b", [2])]) == [
      {"config.a": 1}, {"config.b": 2}]
  with pytest.raises(ValueError, match="equal length"):
    H.zipit([H.sweep("config.a", [1, 2]), H.sweep("config.b", [3])])
  with pytest.raises(ValueError, match="config.a"):
    H.product([H.sweep("config.a", [1]), H.sweep("config.a", [2])])
  with pytest.raises(ValueError, match="'a'"):
    H.sweep("a", [1])


def test_names_use_aliases_suffixes_and_leave_fixed_keys_out():
  points = H.product([H.sweep("config.method", ["grpo", "zppo"]),
                      H.sweep("config.rl.inner_updates", [1, 16]),
                      H.sweep("config.teacher.checkpoint",
                              ["/ckpt/Qwen3.5-9B", "Qwen/Qwen3.5-27B"]),
                      H.sweep("config.data.seed_x", [0, 1]),
                      H.sweep("config.rl.seed_x", [0, 1]),
                      H.fixed("config.rl.tau", 0.3)])
  variants = hyper.make_variants(points)
  assert len(variants) == 32 and len({v.name for v in variants}) == 32
  assert variants[0].name == "method=grpo,I=1,teacher=Qwen3.5-9B,data.seed_x=0,rl.seed_x=0"
  assert variants[-1].overrides()[:2] == ["--config.method=zppo", "--config.rl.inner_updates=16"]
  assert "--config.rl.tau=0.3" in variants[0].overrides()
  assert all("tau" not in v.name for v in variants)


def test_names_in_a_chain_of_ablations_and_clashes():
  variants = hyper.make_variants(H.chainit([H.sweep("config.method", ["grpo", "zppo"]),
                                            H.sweep("config.rl.adv_norm", ["none"])]))
  assert [v.name for v in variants] == ["method=grpo", "method=zppo", "norm=none"]
  # The same point twice is one variant; two points that name alike are an error.
  assert len(hyper.make_variants(H.chainit([H.sweep("config.seed", [1])] * 2))) == 1
  # Short names tell apart every swept key, also in points that set only one of them.
  variants = hyper.make_variants(H.chainit([H.sweep("config.data.seed", [1, 2]),
                                            H.sweep("config.rl.seed", [1, 2])]))
  assert [v.name for v in variants] == ["data.seed=1", "data.seed=2", "rl.seed=1", "rl.seed=2"]
  with pytest.raises(ValueError, match="both get the name"):
    hyper.make_variants([{"config.x": "a/b"}, {"config.x": "c/b"}])


def test_select():
  variants = hyper.make_variants(H.product([H.sweep("config.method", ["grpo", "grpo_both", "zppo"]),
                                            H.sweep("config.rl.inner_updates", [1, 4])]))
  pick = lambda p: [v.name for v in hyper.select(variants, p)]  # noqa: E731
  assert pick("method=grpo") == ["method=grpo,I=1", "method=grpo,I=4"]
  assert pick("method=grpo*,I=4") == ["method=grpo,I=4", "method=grpo_both,I=4"]
  assert pick("I=1|method=zppo,I=4") == ["method=grpo,I=1", "method=grpo_both,I=1",
                                         "method=zppo,I=1", "method=zppo,I=4"]
  assert pick("method=ppo") == [] and len(pick(None)) == 6


def test_demo_plan_has_every_method():
  plan = runner.make_plan("configs/demo.py", ["--config.total_steps=5"])
  assert {v.point["config.method"] for v in plan.variants} == set(config_lib.METHODS)
  assert all(v.name == "method=" + v.point["config.method"] for v in plan.variants)
  assert plan.root == pathlib.Path("runs/demo")
  assert plan.workdir(plan.variants[0]) == pathlib.Path("runs/demo") / plan.variants[0].name
  assert set(plan.total_steps.values()) == {5}
  assert not any(v.same_as for v in plan.variants)


def test_paper_plan_shares_the_baseline_workdir():
  plan = runner.make_plan("configs/qwen3_5_2b_zppo.py")
  by_name = {v.name: v for v in plan.variants}
  assert {"I=1", "I=8", "I=16", "norm=with_zero", "norm=none", "method=zppo"} <= set(by_name)
  # I=4 and norm=without_zero are the defaults: the same run as method=zppo.
  assert by_name["I=4"].same_as == by_name["norm=without_zero"].same_as == "method=zppo"
  assert plan.workdir(by_name["I=4"]) == plan.workdir(by_name["method=zppo"])
  assert by_name["I=8"].same_as is None


def test_overriding_a_swept_key_is_an_error(toy):
  with pytest.raises(ValueError, match="config.method is swept"):
    runner.make_plan(toy.config_path, ["--config.method=grpo"])
  with pytest.raises(ValueError, match="no_such"):
    runner.make_plan(toy.config_path, ["--config.no_such=1"])


# --- skip, resume, states ---

def test_finished_is_skipped_and_half_finished_resumes(toy):
  names = [v.name for v in toy.variants]
  assert names == ["method=grpo", "method=zppo", "method=hint", "I=1", "I=4"]
  by_name = {v.name: v for v in toy.variants}
  write_rows(toy.workdir(by_name["method=grpo"]), [1, 2, 3])  # finished
  write_rows(toy.workdir(by_name["method=zppo"]), [1])        # half-finished
  assert toy.status(by_name["method=zppo"]).state == "stopped"
  train = FakeTrain()
  outcomes = runner.run_local(toy, toy.variants, train=train, log=io.StringIO())
  assert [(name, start) for name, start, _ in train.calls] == [
      ("method=zppo", 1), ("method=hint", 0), ("I=1", 0)]
  assert by_name["I=4"].same_as == "method=zppo"  # zppo with inner_updates=4 is the default.
  assert outcomes == {"method=grpo": "skipped", "method=zppo": "finished",
                      "method=hint": "finished", "I=1": "finished", "I=4": "skipped"}
  for v in toy.variants:
    s = toy.status(v)
    assert (s.state, s.step) == ("finished", 3)
    assert s.reward == pytest.approx(0.8)
  assert json.loads((toy.workdir(by_name["I=1"]) / "sweep_state.json").read_text())[
      "exit_code"] == 0
  # A second call trains nothing.
  again = FakeTrain()
  runner.run_local(toy, toy.variants, train=again, log=io.StringIO())
  assert again.calls == []


def test_failed_and_stopped_runs(toy):
  v = toy.variants
  out = runner.run_local(toy, v[:2], train=FakeTrain(code=3, stop_at=1), log=io.StringIO())
  assert out == {"method=grpo": "failed", "method=zppo": "failed"}
  assert toy.status(v[0]).exit_code == 3 and "exit code 3" in toy.status(v[0]).detail
  # An exception in one variant is recorded and the sweep goes on.
  out = runner.run_local(toy, v[:3], train=FakeTrain(fail={"method=zppo"}), log=io.StringIO())
  assert out == {"method=grpo": "finished", "method=zppo": "failed", "method=hint": "finished"}
  assert "boom" in toy.status(v[1]).detail
  # Exit 0 short of total_steps (the trainer after SIGTERM): stopped, resumed next time.
  out = runner.run_local(toy, [v[3]], train=FakeTrain(stop_at=2), log=io.StringIO())
  assert out == {"I=1": "stopped"} and toy.status(v[3]).step == 2
  train = FakeTrain()
  runner.run_local(toy, [v[3]], train=train, log=io.StringIO())
  assert train.calls[0][:2] == ("I=1", 2) and toy.status(v[3]).state == "finished"


def test_running_state_from_the_pid(toy):
  v = toy.variants[0]
  workdir = toy.workdir(v)
  state_lib.write_state(workdir, state="running", pid=os.getpid())
  assert toy.status(v).state == "running"
  train = FakeTrain()
  assert runner.run_local(toy, [v], train=train, log=io.StringIO()) == {v.name: "skipped"}
  assert train.calls == []
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  state_lib.write_state(workdir, state="running", pid=dead.pid)
  assert toy.status(v).state == "failed" and "died" in toy.status(v).detail
  state_lib.write_state(workdir, state="running", pid=dead.pid, host="elsewhere")
  assert toy.status(v).state == "running"


def test_a_torn_metrics_line_is_ignored(tmp_path):
  write_rows(tmp_path, [1, 2])
  with (tmp_path / "metrics.jsonl").open("a") as f:
    f.write('{"step": 3, "rew')
  assert state_lib.run_status(tmp_path, 3).step == 2


# --- report ---

def test_report_from_fabricated_workdirs(toy):
  from zppo_jax.sweep import report
  by_name = {v.name: v for v in toy.variants}
  write_rows(toy.workdir(by_name["method=grpo"]), [1, 2, 3], reward=0.1)
  write_rows(toy.workdir(by_name["method=zppo"]), [1, 2, 3], reward=0.3)
  write_rows(toy.workdir(by_name["I=1"]), [1], reward=0.2)
  (toy.workdir(by_name["method=zppo"]) / "summary.json").write_text(json.dumps(
      {"eval_before": {"eval/accuracy": 0.25}, "eval_after": {"eval/accuracy": 0.5}}))
  eval_dir = toy.workdir(by_name["method=zppo"]) / "eval"
  eval_dir.mkdir()
  (eval_dir / "report.json").write_text(json.dumps({"families": {
      "llm": {"accuracy": 41.5, "benchmarks": 10, "expected": 10},
      "vlm": {"accuracy": 55.0, "benchmarks": 3, "expected": 16}}}))
  out = report.write_report(toy, toy.variants)
  rows = list(csv.DictReader((toy.root / "sweep_report.csv").open()))
  got = {r["variant"]: r for r in rows}
  assert list(got) == [v.name for v in toy.variants]
  assert float(got["method=zppo"]["reward"]) == pytest.approx(0.6)
  assert float(got["method=grpo"]["reward"]) == pytest.approx(0.4)
  assert float(got["method=zppo"]["eval_llm"]) == pytest.approx(41.5)
  assert got["method=zppo"]["eval_vlm_partial"] == "True"
  assert got["method=grpo"]["eval_llm"] == ""
  assert float(got["method=zppo"]["heldout_after"]) == pytest.approx(0.5)
  assert got["method=grpo"]["method"] == "grpo" and got["I=1"]["I"] == "1"
  assert (got["I=1"]["state"], got["I=1"]["step"]) == ("stopped", "1")
  assert (got["method=hint"]["state"], got["method=hint"]["reward"]) == ("not started", "")
  assert report.graduation_bins(state_lib.read_rows(toy.workdir(by_name["method=grpo"]))) == {
      "0.0000": 0.25, "0.2500": 0.0}
  assert got["I=4"]["same_as"] == "method=zppo" and got["I=4"]["reward"] == got["method=zppo"][
      "reward"]
  md = (toy.root / "sweep_report.md").read_text()
  assert "| method=zppo |" in md and "55*" in md and out["markdown"] in md
  names = {p.name for p in out["paths"]}
  assert {"rewards.png", "by_method.png", "by_I.png", "graduations.png"} <= names
  for p in out["paths"]:
    assert p.exists() and (p.suffix != ".png" or p.read_bytes()[:4] == b"\x89PNG")


COMPARE_HYPER = '''def get_hyper(h, arg=""):
  if arg == "compare":
    return h.product([h.sweep("config.seed", [0, 1]),
                      h.sweep("config.method", ["grpo_replay", "zppo"])])'''


def test_compare_report_over_seeds_with_the_paper_diagnostics(tmp_path):
  """`path:compare` reaches get_hyper; the report gives each method's mean and spread over
  seeds of held-out accuracy per subset, 0%-entry graduations, BCQ/NCQ built and solved, and
  the zero-advantage fraction."""
  from zppo_jax.sweep import report
  path = tmp_path / "cmp.py"
  path.write_text(CONFIG.replace("def get_hyper(h):", COMPARE_HYPER))
  plan = runner.make_plan(f"{path}:compare", root=str(tmp_path / "runs"))
  assert [v.name for v in plan.variants] == [
      "seed=0,method=grpo_replay", "seed=0,method=zppo", "seed=1,method=grpo_replay",
      "seed=1,method=zppo"]
  for v in plan.variants:
    seed, zppo = int(v.point["config.seed"]), int(v.point["config.method"] == "zppo")
    workdir = plan.workdir(v)
    workdir.mkdir(parents=True)
    rows = [{"step": s, "reward/plain": 0.5, "groups/bcq": 2 * zppo, "solved/bcq": zppo,
             "groups/ncq": 3 * zppo, "solved/ncq": 0, "zero_adv_frac/plain": 0.5 + 0.1 * s,
             "buffer/admitted_bin/0.0000": 10, "buffer/graduated_bin/0.0000": (6 + seed) * zppo,
             "buffer/admitted_total": 12, "buffer/graduated_total": (6 + seed) * zppo}
            for s in (1, 2)]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    after = 0.1 + 0.3 * zppo + 0.1 * seed
    (workdir / "summary.json").write_text(json.dumps({
        "eval_before": {"eval/accuracy": 0.3, "eval/accuracy/level3": 0.0},
        "eval_after": {"eval/accuracy": 0.4, "eval/accuracy/level3": after}}))
  out = report.write_report(plan, plan.variants)
  got = {r["variant"]: r for r in out["rows"]}
  zppo0 = got["seed=0,method=zppo"]
  assert (zppo0["admitted_0"], zppo0["graduated_0"]) == (10, 6)
  assert got["seed=0,method=grpo_replay"]["graduated_0"] == 0
  assert (zppo0["bcq_built"], zppo0["bcq_solved"], zppo0["ncq_built"]) == (4, 2, 6)
  assert zppo0["zero_adv_plain"] == pytest.approx(0.65)
  assert zppo0["heldout_level3_before"] == 0.0
  assert zppo0["heldout_level3_after"] == pytest.approx(0.4)
  seeds = {r["variant"]: r for r in report.over_seeds(plan.variants, out["rows"])}
  # Only finished seeds count once one has finished.
  finished = [dict(r, state="finished" if r["variant"].startswith("seed=0") else "stopped")
              for r in out["rows"]]
  partial = {r["variant"]: r for r in report.over_seeds(plan.variants, finished)}
  assert partial["method=zppo"]["seeds"] == 1 and partial["method=zppo"]["graduated_0"] == 6
  assert list(seeds) == ["method=grpo_replay", "method=zppo"]
  assert seeds["method=zppo"]["seeds"] == 2
  assert seeds["method=zppo"]["graduated_0"] == pytest.approx(6.5)
  assert seeds["method=zppo"]["graduated_0_spread"] == pytest.approx(1.0)
  assert seeds["method=zppo"]["heldout_level3_after"] == pytest.approx(0.45)
  assert seeds["method=zppo"]["heldout_level3_after_spread"] == pytest.approx(0.1)
  assert "Over seeds" in out["markdown"] and "| method=zppo | 2 |" in out["markdown"]
  assert {"heldout.png", "graduations.png", "rewards.png"} <= {p.name for p in out["paths"]}


# --- the command line ---

def test_cli_dry_run_status_and_errors(toy, capsys):
  from zppo_jax import cli
  args = [f"--config={toy.config_path}", f"--workdir={toy.root}"]
  assert cli.main(["sweep", *args, "--dry-run", "--only=method=zppo|I=4",
                   "--config.total_steps=7"]) == 0
  out = capsys.readouterr().out
  assert "2 of 5 variants" in out and "same config as method=zppo" in out
  assert f"--workdir={toy.root}/method=zppo --config.total_steps=7 --config.method=zppo" in out
  write_rows(toy.workdir(toy.variants[0]), [1, 2, 3])
  assert sweep_main.main(["status", *args]) == 0
  out = capsys.readouterr().out
  assert "method=grpo" in out and "finished" in out and "3/3" in out and "not started" in out
  # The overrides of the last run are followed by status when it is given none.
  runner.write_sweep_file(runner.make_plan(toy.config_path, ["--config.total_steps=7"], toy.root))
  assert sweep_main.main(["status", *args]) == 0
  assert "3/7" in capsys.readouterr().out
  assert sweep_main.main(["status", *args, "--config.total_steps=2"]) == 0
  assert "3/2" in capsys.readouterr().out
  assert sweep_main.main([*args, "--only=method=ppo"]) == 2
  assert "matches none" in capsys.readouterr().err
  assert sweep_main.main([*args, "--bogus"]) == 2
  assert sweep_main.main([*args, "--launcher=tpu", "--dry-run"]) == 2
  assert "--project" in capsys.readouterr().err


def test_tpu_commands_are_accepted_by_the_launcher(toy, capsys):
  tpu = ["--project=p", "--zone=z", "--accelerator-type=v5p-8", "--name=sl", "--max-restarts=2"]
  args = [f"--config={toy.config_path}", f"--workdir={toy.root}", "--launcher=tpu", *tpu]
  assert sweep_main.main([*args, "--dry-run", "--only=method=zppo", "--create"]) == 0
  line = capsys.readouterr().out.splitlines()[-1].split()
  assert line[0].endswith("launch/tpu_run.sh") and "sl-1" in line and "--create" in line
  assert line[line.index("--") + 1:] == ["--config.method=zppo", "--config.rl.tau=0.5"]
  # The script itself parses these flags (its own --dry-run only prints).
  command = runner.tpu_command(toy, toy.variants[1], {k.split("=")[0][2:]: k.split("=")[1]
                                                      for k in tpu})
  done = subprocess.run(["bash", command[0], "--dry-run", *command[1:]], capture_output=True,
                        text=True, check=True)
  assert "sl-1" in done.stdout and "--config.method=zppo" in done.stdout


def test_a_remote_root_is_kept_as_a_url(toy, capsys):
  from zppo_jax.sweep import report
  plan = runner.make_plan(toy.config_path, root="gs://bucket/runs/toy")
  command = runner.tpu_command(plan, plan.variants[1], {"project": "p", "zone": "z",
                                                        "accelerator-type": "v5p-8", "name": "s"})
  assert command[command.index("--workdir") + 1] == "gs://bucket/runs/toy/method=zppo"
  with pytest.raises(ValueError, match="local --workdir"):
    runner.run_local(plan, plan.variants, train=FakeTrain(), log=io.StringIO())
  with pytest.raises(ValueError, match="local --out"):
    report.write_report(plan, plan.variants, plots=False)


# A stand-in for `zppo train` in a subprocess: appends the missing metrics rows, or fails.
FAKE_TRAINER = '''
import json, os, pathlib, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
workdir = pathlib.Path(args["workdir"])
print("fake trainer pid", os.getpid(), flush=True)
if args["config.method"] == "hint":
  sys.exit(5)
path = workdir / "metrics.jsonl"
done = len(path.read_text().splitlines()) if path.exists() else 0
with path.open("a") as f:
  for s in range(done + 1, 4):
    f.write(json.dumps({"step": s, "reward/plain": 0.25}) + "\\n")
'''


def test_subprocess_runner_records_pid_log_and_exit_code(toy, tmp_path, monkeypatch):
  script = tmp_path / "fake_train.py"
  script.write_text(FAKE_TRAINER)
  monkeypatch.setattr(runner, "TRAIN_COMMAND", [sys.executable, str(script)])
  log = io.StringIO()
  out = runner.run_local(toy, toy.variants[1:3], log=log)
  assert out == {"method=zppo": "finished", "method=hint": "failed"}
  zppo, hint = (toy.workdir(v) for v in toy.variants[1:3])
  pid = int((zppo / "train.log").read_text().split()[-1])
  record = json.loads((zppo / "sweep_state.json").read_text())
  assert record["state"] == "finished" and record["pid"] == pid != os.getpid()
  assert record["command"][:2] == [sys.executable, str(script)]
  assert f"[method=zppo] fake trainer pid {pid}" in log.getvalue()
  assert toy.status(toy.variants[2]).exit_code == 5
  assert "exit code 5" in toy.status(toy.variants[2]).detail


# --- end to end with the real trainer ---

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not os.environ.get("ZPPO_SWEEP_E2E"),
                    reason="minutes on a loaded 2-core machine; set ZPPO_SWEEP_E2E=1 to run")
def test_the_demo_comparison_end_to_end_with_the_real_trainer(tmp_path, capsys):
  """`configs/demo.py:tiny,compare` (the comparison at the smoke-test size): GRPO† and ZPPO on
  two seeds, skipped when finished, and a report over seeds."""
  common = [f"--workdir={tmp_path / 'runs'}", "--only=method=grpo_replay|method=zppo",
            "--config.total_steps=1", f"--config.demo.cache_dir={tmp_path / 'demo'}",
            f"--config.compilation_cache_dir={ROOT / '.jax_cache'}",
            "--config.async_checkpointing=False"]
  config = ["--config=configs/demo.py:tiny,compare"]
  names = [f"seed={s},method={m}" for s in (0, 1) for m in ("grpo_replay", "zppo")]
  assert sweep_main.main([*config, "--in-process", *common]) == 0
  assert sweep_main.main(["status", *config, *common]) == 0
  lines = capsys.readouterr().out.splitlines()
  for name in names:
    assert any(line.startswith(name + " ") and "finished" in line and "1/1" in line
               for line in lines), name
  # A second call trains nothing: the metrics files are untouched.
  paths = [tmp_path / "runs" / name / "metrics.jsonl" for name in names]
  stamps = [p.stat().st_mtime_ns for p in paths]
  assert sweep_main.main([*config, *common]) == 0
  assert [p.stat().st_mtime_ns for p in paths] == stamps
  assert "skipped, finished (1/1 steps)" in capsys.readouterr().err
  assert sweep_main.main(["report", *config, *common, "--no-plots"]) == 0
  out = capsys.readouterr().out
  rows = {r["variant"]: r for r in csv.DictReader((tmp_path / "runs" / "sweep_report.csv").open())}
  assert set(rows) == set(names)
  assert all(r["state"] == "finished" and r["reward"] != "" for r in rows.values())
  assert all(r["heldout_level3_after"] != "" and r["admitted_0"] != "" for r in rows.values())
  assert "Over seeds" in out and "| method=zppo | 2 |" in out
  assert "| method=grpo_replay | 2 |" in out
