"""Plans a sweep (variants, workdirs, commands) and runs it locally or submits it to TPU slices.

Each variant trains in `ROOT/<variant name>`, where ROOT defaults to `runs/<config name>`. Locally
the variants run one after another as `zppo train` subprocesses: a finished variant is skipped, a
half-finished one is started again and resumes from its latest checkpoint (the trainer does that
by itself). On TPU each variant goes to its own slice through `launch/tpu_run.sh`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence, TextIO

from etils import epath

from zppo_jax.sweep import hyper, state as state_lib
from zppo_jax.train import config as config_lib

TPU_SCRIPT = config_lib.REPO_ROOT / "launch" / "tpu_run.sh"
# Exit codes of a run stopped on purpose rather than broken: Ctrl-C and SIGTERM, as a subprocess
# return code (negative signal) or as a shell's 128 + signal.
_STOP_CODES = {-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM}


@dataclasses.dataclass
class Plan:
  """A sweep ready to run.

  Attributes:
    config_path: the config file as given (`path[:arg]`).
    overrides: `--config.x=v` flags for every variant, before the variant's own.
    root: the directory holding one workdir per variant.
    variants: all variants of the sweep, in `get_hyper` order.
    total_steps: variant name -> the `total_steps` of its resolved config.
    values: variant name -> {swept key: its value in the resolved config, as text}, so that a
      variant of one ablation also shows the values it takes of the others' keys.
  """
  config_path: str
  overrides: list[str]
  root: epath.Path
  variants: list[hyper.Variant]
  total_steps: dict[str, int]
  values: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

  def workdir(self, variant: hyper.Variant) -> epath.Path:
    return self.root / variant.run_name

  def train_args(self, variant: hyper.Variant) -> list[str]:
    """The arguments of `zppo train` for a variant."""
    return [f"--config={self.config_path}", f"--workdir={self.workdir(variant)}",
            *self.overrides, *variant.overrides()]

  def status(self, variant: hyper.Variant) -> state_lib.RunStatus:
    return state_lib.run_status(self.workdir(variant), self.total_steps[variant.name])


def make_plan(config_path: str, overrides: Sequence[str] = (), root: str | None = None) -> Plan:
  """Expands a config's `get_hyper` and resolves every variant's config.

  Args:
    config_path: `path[:arg]` of a config file with `get_hyper(h)`.
    overrides: `--config.x=v` flags applied to every variant; a swept key cannot be overridden.
    root: directory of the variant workdirs (default `runs/<config name>`).
  """
  config_path = config_lib.resolve_config_path(config_path)
  variants = hyper.make_variants(hyper.load_hyper(config_path))
  overrides = list(overrides)
  swept = {k for v in variants for k in v.point}
  for flag in overrides:
    key = flag.lstrip("-").partition("=")[0]
    if not flag.startswith("--config.") or "=" not in flag:
      raise ValueError(f"override {flag!r} is not of the form --config.KEY=VALUE")
    if key in swept:
      raise ValueError(f"{key} is swept by get_hyper of {config_path}; pick variants with --only")
  resolved, names, total_steps = [], [], {}
  for v in variants:
    try:
      config = config_lib.load_config(config_path, [*overrides, *v.overrides()])
    except Exception as err:  # absl and ml_collections raise several kinds for a bad flag.
      raise ValueError(f"variant {v.name} of {config_path}: {type(err).__name__}: {err}") from err
    resolved.append(config.to_dict())
    names.append(config.name)
    total_steps[v.name] = int(config.total_steps)
  hyper.mark_duplicates(variants, resolved)
  values = {v.name: {k: hyper.format_value(_lookup(config, k)) for k in v.swept}
            for v, config in zip(variants, resolved)}
  return Plan(config_path, overrides, epath.Path(root or os.path.join("runs", names[0])),
              variants, total_steps, values)


SWEEP_FILE = "sweep.json"


def write_sweep_file(plan: Plan) -> None:
  """Records the config and overrides of a sweep in `ROOT/sweep.json` for `status` and `report`."""
  plan.root.mkdir(parents=True, exist_ok=True)
  (plan.root / SWEEP_FILE).write_text(json.dumps(
      {"config": plan.config_path, "overrides": plan.overrides,
       "variants": [v.name for v in plan.variants]}, indent=2))


def read_sweep_file(root: epath.PathLike) -> dict:
  path = epath.Path(root) / SWEEP_FILE
  try:
    return json.loads(path.read_text()) if path.exists() else {}
  except (OSError, json.JSONDecodeError):
    return {}


def _lookup(config: dict, key: str):
  """`config["a"]["b"]` for the key `config.a.b`."""
  for part in key.split(".")[1:]:
    config = config[part]
  return config


def is_remote(path) -> bool:
  """Whether a path is a URL (`gs://...`) rather than a local directory."""
  return "://" in str(path)


# --- local runs ---

TRAIN_COMMAND = [sys.executable, "-m", "zppo_jax.cli", "train"]


def train_subprocess(plan: Plan, variant: hyper.Variant, log: TextIO) -> int:
  """Runs `zppo train` for a variant in a subprocess, echoing its output; returns the exit code.

  The output also goes to `WORKDIR/train.log`. The state file is written here, since only this
  function knows the pid.
  """
  workdir = plan.workdir(variant)
  command = [*TRAIN_COMMAND, *plan.train_args(variant)]
  with (workdir / "train.log").open("a") as out:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    state_lib.write_state(workdir, state="running", pid=proc.pid, command=command,
                          started=time.time())
    try:
      for line in proc.stdout:
        out.write(line)
        out.flush()
        log.write(f"[{variant.name}] {line}")
        log.flush()
      return proc.wait()
    except KeyboardInterrupt:
      proc.send_signal(signal.SIGTERM)  # The trainer saves a checkpoint and exits.
      proc.wait()
      raise


def train_in_process(plan: Plan, variant: hyper.Variant, log: TextIO) -> int:
  """Runs `zppo train` for a variant in this process (shares compiled programs across variants).

  Its output goes to `log`; JAX state is not reset between variants, so a crash in one can
  affect the next: the subprocess runner is the default for that reason.
  """
  from zppo_jax.train import run as train_run  # Imports JAX.
  with contextlib.redirect_stderr(log):
    return int(train_run.main(plan.train_args(variant)) or 0)


TrainFn = Callable[[Plan, hyper.Variant, TextIO], int]


def run_local(plan: Plan, variants: Sequence[hyper.Variant], train: TrainFn | None = None,
              log: TextIO | None = None) -> dict[str, str]:
  """Trains the variants one after another; returns variant name -> what happened.

  Outcomes: `skipped` (already finished, or running elsewhere, or shares the workdir of an
  earlier variant), `finished`, `stopped` (exited before `total_steps`) or `failed`. A failed
  variant does not stop the sweep; Ctrl-C does, after marking the variant stopped.

  Args:
    plan: the sweep.
    variants: the variants to run (e.g. `hyper.select(plan.variants, pattern)`).
    train: `train(plan, variant, log) -> exit code`; defaults to a `zppo train` subprocess. A
      callable other than the default writes no pid, so the state file records this process.
    log: where progress goes (default stderr).
  """
  if is_remote(plan.root):
    raise ValueError(f"--launcher=local needs a local --workdir, not {plan.root}")
  log = log or sys.stderr
  train = train or train_subprocess
  outcomes: dict[str, str] = {}
  done: set[str] = set()
  for i, variant in enumerate(variants, 1):
    workdir = plan.workdir(variant)
    status = plan.status(variant)
    head = f"sweep: [{i}/{len(variants)}] {variant.name}"
    if variant.run_name in done or status.state == "finished":
      why = (f"same config as {variant.same_as}" if variant.same_as else
             f"finished ({status.step}/{status.total_steps} steps)")
      print(f"{head}: skipped, {why}", file=log)
      outcomes[variant.name] = "skipped"
      continue
    if status.state == "running":
      print(f"{head}: skipped, running (see {workdir / state_lib.STATE_FILE})", file=log)
      outcomes[variant.name] = "skipped"
      continue
    verb = f"resuming from step {status.step}" if status.step else "starting"
    print(f"{head}: {verb} in {workdir}", file=log)
    workdir.mkdir(parents=True, exist_ok=True)
    state_lib.write_state(workdir, state="running", pid=os.getpid(), started=time.time())
    try:
      code = int(train(plan, variant, log))
    except KeyboardInterrupt:
      state_lib.write_state(workdir, state="stopped", exit_code=-int(signal.SIGINT),
                            detail="interrupted (Ctrl-C)", ended=time.time())
      outcomes[variant.name] = "stopped"
      print(f"{head}: interrupted; the sweep stops here", file=log)
      raise
    except Exception as err:  # A bad variant must not take the sweep down with it.
      state_lib.write_state(workdir, state="failed", exit_code=1, ended=time.time(),
                            detail=f"{type(err).__name__}: {err}")
      code = 1
    else:
      reached = plan.status(variant).step >= plan.total_steps[variant.name]
      started = state_lib.read_state(workdir)  # Keeps the pid and command of the run.
      keep = {k: started[k] for k in ("pid", "command", "started") if k in started}
      if code == 0 and reached:
        state_lib.write_state(workdir, state="finished", exit_code=0, ended=time.time(), **keep)
      elif code == 0 or code in _STOP_CODES:
        state_lib.write_state(workdir, state="stopped", exit_code=code, ended=time.time(),
                              detail="exited before total_steps (preempted?)", **keep)
      else:
        state_lib.write_state(workdir, state="failed", exit_code=code, ended=time.time(),
                              detail=f"exit code {code}; see {workdir / 'train.log'}", **keep)
    done.add(variant.run_name)
    outcomes[variant.name] = plan.status(variant).state
    print(f"{head}: {outcomes[variant.name]} (exit code {code})", file=log)
  return outcomes


# --- TPU slices ---

TPU_FLAGS = ("project", "zone", "accelerator-type", "name", "version", "max-restarts")


def tpu_command(plan: Plan, variant: hyper.Variant, tpu: dict[str, str], create: bool = False
                ) -> list[str]:
  """The `launch/tpu_run.sh` command of a variant, on its own slice `<name>-<index>`.

  Args:
    tpu: flag name (one of `TPU_FLAGS`) -> value; `name` is the slice-name prefix.
    create: create each slice first (`--create`).
  """
  missing = [f for f in ("project", "zone", "accelerator-type", "name") if not tpu.get(f)]
  if missing:
    raise ValueError(f"--launcher=tpu needs --{missing[0]}")
  command = [str(TPU_SCRIPT)]
  for flag in TPU_FLAGS:
    if tpu.get(flag):
      value = f"{tpu[flag]}-{variant.index}" if flag == "name" else tpu[flag]
      command += [f"--{flag}", value]
  if create:
    command.append("--create")
  command += ["--config", plan.config_path, "--workdir", str(plan.workdir(variant)), "--",
              *plan.overrides, *variant.overrides()]
  return command


def submit_tpu(plan: Plan, variants: Sequence[hyper.Variant], tpu: dict[str, str],
               create: bool = False, log: TextIO | None = None) -> dict[str, str]:
  """Submits each variant to its slice; returns variant name -> submitted / skipped / failed."""
  log = log or sys.stderr
  outcomes, done = {}, set()
  for variant in variants:
    local = not is_remote(plan.root)
    if variant.run_name in done or (local and plan.status(variant).state == "finished"):
      print(f"sweep: {variant.name}: skipped (finished or same config as an earlier one)",
            file=log)
      outcomes[variant.name] = "skipped"
      continue
    command = tpu_command(plan, variant, tpu, create)
    print(f"sweep: {variant.name}: {shlex.join(command)}", file=log)
    code = subprocess.call(command)
    outcomes[variant.name] = "submitted" if code == 0 else "failed"
    if local:
      state_lib.write_state(plan.workdir(variant), state="submitted" if code == 0 else "failed",
                            exit_code=code, command=command, slice=f"{tpu['name']}-{variant.index}")
    done.add(variant.run_name)
  return outcomes
