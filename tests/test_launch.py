"""The launch scripts' --dry-run output: every step printed, nothing run."""
import pathlib
import subprocess

_LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"


def _dry_run(script, *args):
  out = subprocess.run(["bash", str(_LAUNCH / script), "--dry-run", *args], capture_output=True,
                       text=True, check=True, env={"PATH": "/usr/bin:/bin", "TMPDIR": "/tmp"})
  return [l for l in out.stdout.splitlines() if l.startswith("+ ")]


def test_tpu_run_dry_run_prints_every_step():
  lines = _dry_run("tpu_run.sh", "--project", "p", "--zone", "us-east5-a",
                   "--accelerator-type", "v5p-64", "--name", "slice", "--create",
                   "--config", "configs/qwen3_5_2b_zppo.py")
  assert "tpu-vm create slice" in lines[0] and "v5p-64" in lines[0]
  assert lines[1].startswith("+ git -C") and "archive" in lines[1]
  assert "tpu-vm scp" in lines[2] and "--worker=all" in lines[2]
  assert "pip\\ install" in lines[3] and "jax\\[tpu\\]" in lines[3]
  assert "ZPPO_DISTRIBUTED=1\\ PYTHONHASHSEED=0\\ zppo\\ train" in lines[4]
  assert "--workdir=runs/qwen3_5_2b_zppo" in lines[4]
  assert len(lines) == 5


def test_tpu_run_passes_overrides_and_requires_flags():
  lines = _dry_run("tpu_run.sh", "--project", "p", "--zone", "z", "--accelerator-type", "v6e-8",
                   "--name", "s", "--workdir", "gs://b/r", "--", "--config.seed=3")
  assert "--workdir=gs://b/r\\ --config.seed=3" in lines[-1]
  missing = subprocess.run(["bash", str(_LAUNCH / "tpu_run.sh"), "--zone", "z", "--dry-run"],
                           capture_output=True, text=True)
  assert missing.returncode == 2 and "--project is required" in missing.stderr


def test_gpu_run_single_node_and_slurm():
  single = _dry_run("gpu_run.sh", "--config", "configs/demo.py")
  assert len(single) == 1 and "zppo\\ train\\ --config=configs/demo.py" in single[0]
  slurm = _dry_run("gpu_run.sh", "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu",
                   "--config", "configs/qwen3_5_9b_zppo.py", "--", "--config.seed=2")
  assert slurm[-1].startswith("+ sbatch --nodes=4") and "--partition=gpu" in slurm[-1]
  assert "ZPPO_DISTRIBUTED=1" in slurm[-1] and "--config.seed=2" in slurm[-1]
