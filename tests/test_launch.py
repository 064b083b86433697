"""The launch scripts: --dry-run output (every step printed, nothing run), the refusal of a local
workdir for several hosts, shellcheck, and which GPU each SLURM task takes."""
import pathlib
import shutil
import subprocess
import sys

import pytest

from zppo_jax import distributed

_LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
_TPU = ("--project", "p", "--zone", "us-east5-a", "--name", "slice")


def _call(script, *args):
  return subprocess.run(["bash", str(_LAUNCH / script), *args], capture_output=True, text=True,
                        env={"PATH": "/usr/bin:/bin", "TMPDIR": "/tmp"})


def _dry_run(script, *args):
  out = _call(script, "--dry-run", *args)
  assert out.returncode == 0, out.stderr
  return [l for l in out.stdout.splitlines() if l.startswith("+ ")]


def test_tpu_run_dry_run_prints_every_step():
  lines = _dry_run("tpu_run.sh", *_TPU, "--accelerator-type", "v5p-64", "--create",
                   "--config", "configs/qwen3_5_2b_zppo.py", "--workdir", "gs://b/runs/2b")
  assert "tpu-vm create slice" in lines[0] and "v5p-64" in lines[0]
  assert lines[0].endswith("--version v2-alpha-tpuv5")   # Google's software version for v5p
  assert lines[1].startswith("+ git -C") and "archive" in lines[1]
  assert "tpu-vm scp" in lines[2] and "--worker=all" in lines[2]
  # A Python 3.11 venv (the image's python3 is 3.10) with jax's own TPU pins.
  assert "uv\\ venv\\ -q\\ --python\\ 3.11" in lines[3] and "-e\\ \\'.\\[tpu\\]\\'" in lines[3]
  assert "--worker=all" in lines[4]
  assert "ZPPO_DISTRIBUTED=1\\ PYTHONHASHSEED=0\\ zppo\\ train" in lines[4]
  assert "--workdir=gs://b/runs/2b" in lines[4] and "zppo-exit=" in lines[4]
  # One restart loop on this machine for the whole job: no per-worker loop on the workers.
  assert "until" not in lines[4] and "nohup" not in lines[4]
  assert len(lines) == 5


def test_tpu_run_passes_overrides_and_requires_flags():
  lines = _dry_run("tpu_run.sh", *_TPU, "--accelerator-type", "v6e-8", "--workdir", "gs://b/r",
                   "--", "--config.seed=3")
  assert "--workdir=gs://b/r\\ --config.seed=3" in lines[-1]
  missing = _call("tpu_run.sh", "--zone", "z", "--dry-run")
  assert missing.returncode == 2 and "--project is required" in missing.stderr


def test_tpu_run_refuses_a_local_workdir_on_several_hosts():
  for workdir in ((), ("--workdir", "runs/2b")):
    out = _call("tpu_run.sh", "--dry-run", *_TPU, "--accelerator-type", "v5p-64", *workdir)
    assert out.returncode == 2 and "--workdir gs://" in out.stderr and not out.stdout
  shared = _dry_run("tpu_run.sh", *_TPU, "--accelerator-type", "v6e-64", "--workdir",
                    "/mnt/nfs/runs/2b", "--shared-workdir")
  assert "--workdir=/mnt/nfs/runs/2b" in shared[-1]
  single_host = _dry_run("tpu_run.sh", *_TPU, "--accelerator-type", "v5p-8")
  assert "--workdir=runs/demo" in single_host[-1]


def test_gpu_run_single_node():
  single = _dry_run("gpu_run.sh", "--config", "configs/demo.py")
  assert len(single) == 1 and "zppo\\ train\\ --config=configs/demo.py" in single[0]


def test_gpu_run_slurm_runs_one_task_per_gpu_and_restarts_the_job_step():
  slurm = _dry_run("gpu_run.sh", "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu",
                   "--config", "configs/qwen3_5_9b_zppo.py", "--workdir", "/shared/runs/9b",
                   "--shared-workdir", "--", "--config.seed=2")
  sbatch = slurm[-1]
  assert sbatch.startswith("+ sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8")
  assert "--partition=gpu" in sbatch and "--config.seed=2" in sbatch
  # The loop restarts the whole job step; inside it each task is the trainer itself, so
  # --kill-on-bad-exit sees a failed task.
  wrap = sbatch.split("--wrap ", 1)[1]
  step = "srun\\ --kill-on-bad-exit=1\\ --ntasks-per-node=8\\ env\\ ZPPO_DISTRIBUTED=1"
  assert f"until\\ {step}" in wrap
  assert "bash" not in wrap and "--workdir=/shared/runs/9b" in wrap


def test_gpu_run_refuses_a_local_workdir_on_several_nodes():
  out = _call("gpu_run.sh", "--dry-run", "--nodes", "2", "--workdir", "runs/x")
  assert out.returncode == 2 and "--shared-workdir" in out.stderr and not out.stdout
  assert _dry_run("gpu_run.sh", "--nodes", "2", "--workdir", "gs://b/x")[-1].startswith("+ sbatch")


def test_launch_scripts_are_shellcheck_clean():
  shellcheck = shutil.which("shellcheck") or str(pathlib.Path(sys.executable).parent / "shellcheck")
  assert pathlib.Path(shellcheck).exists(), "shellcheck missing: pip install -e '.[test]'"
  out = subprocess.run([shellcheck, *sorted(map(str, _LAUNCH.glob("*.sh")))], capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stdout


def test_each_slurm_task_takes_its_own_gpu():
  step = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_LOCALID": "3"}
  assert distributed.local_device_ids({}) is None                  # not SLURM
  assert distributed.local_device_ids({"SLURM_JOB_ID": "7", "SLURM_LOCALID": "0"}) is None  # batch
  assert distributed.local_device_ids(step) == [3]                 # every task sees the node's GPUs
  assert distributed.local_device_ids(dict(step, CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")) == [3]
  assert distributed.local_device_ids(dict(step, CUDA_VISIBLE_DEVICES="3")) == [0]  # bound GPU
  assert distributed.local_device_ids(dict(step, ZPPO_LOCAL_DEVICE_IDS="0,1")) == [0, 1]
  with pytest.raises(ValueError, match="ZPPO_LOCAL_DEVICE_IDS='gpu0'"):
    distributed.local_device_ids({"ZPPO_LOCAL_DEVICE_IDS": "gpu0"})


_FAKE_GCLOUD = r"""#!/bin/bash
# gcloud on a slice of 2 workers: `tpu-vm ssh ... --command C` runs C for each worker (the
# trainer's start and stop commands only; creating, copying and installing are not simulated).
echo "$*" >> "$FAKE/gcloud.calls"
[[ "$4" == ssh ]] || exit 0
cmd="${*: -1}"
[[ "$cmd" == *train.pid* ]] || exit 0
pids=()
for w in 0 1; do HOME="$FAKE/home" FAKE_WORKER=$w bash -c "$cmd" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
"""

# The trainer of worker 1 crashes in the first attempt and is preempted (saves, exits 0) in the
# second; every other run finishes.
_FAKE_ZPPO = r"""#!/bin/bash
n=$(( $(cat "$FAKE/attempts-$FAKE_WORKER" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$FAKE/attempts-$FAKE_WORKER"
echo "$FAKE_WORKER $n $ZPPO_DISTRIBUTED $*" >> "$FAKE/zppo.calls"
if [[ $FAKE_WORKER == 1 && $n == 1 ]]; then exit 1; fi
if [[ $FAKE_WORKER == 1 && $n == 2 ]]; then
  echo "train: SIGTERM received (by this process); saved step 1 and stopped" >&2
fi
exit 0
"""


def test_tpu_run_restarts_every_worker_when_one_fails_or_is_preempted(tmp_path):
  bin_dir, venv_bin = tmp_path / "bin", tmp_path / "home" / "zppo-jax" / ".venv" / "bin"
  for d in (bin_dir, venv_bin):
    d.mkdir(parents=True)
  for path, text in ((bin_dir / "gcloud", _FAKE_GCLOUD), (bin_dir / "zppo", _FAKE_ZPPO),
                     (bin_dir / "hostname", 'echo "w$FAKE_WORKER"\n'),
                     (venv_bin / "activate", f'PATH="{bin_dir}:$PATH"\n')):
    path.write_text(text if text.startswith("#!") else "#!/bin/bash\n" + text)
    path.chmod(0o755)
  out = subprocess.run(
      ["bash", str(_LAUNCH / "tpu_run.sh"), *_TPU, "--accelerator-type", "v5p-16",
       "--workdir", "gs://b/r", "--restart-delay", "0"], capture_output=True, text=True,
      env={"PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path), "FAKE": str(tmp_path)})
  assert out.returncode == 0, out.stderr
  calls = (tmp_path / "zppo.calls").read_text().splitlines()
  assert sorted(c.split()[:3] for c in calls) == [[w, n, "1"] for w in "01" for n in "123"]
  assert all("train --config=configs/demo.py --workdir=gs://b/r" in c for c in calls)
  assert "zppo-exit=1" in out.stderr and "zppo-exit=preempted" in out.stderr
  assert "attempt 3" in out.stderr and "every worker finished" in out.stderr
  stops = [c for c in (tmp_path / "gcloud.calls").read_text().splitlines() if "kill -9" in c]
  assert len(stops) == 2   # after the failure and after the preemption
