"""The device layout in the config: `zppo plan` reads it and prints overrides for `zppo train`.

`mesh.student` / `mesh.teacher` (data, fsdp, tensor), `student.remat` and `teacher.fp8` are what
`zppo train` builds the meshes and models from and what `zppo plan` compiles; the overrides the
plan prints for a layout that fits are run here, unchanged, on 8 CPU devices with tensor 2.
"""
import os
import pathlib
import subprocess
import sys

import pytest

from zppo_jax import cli, parallel
from zppo_jax.errors import UserError
from zppo_jax.models.qwen3_5 import config as mc
from zppo_jax.plan import report, shapes
from zppo_jax.train import model_io
from zppo_jax.train.config import load_config
from zppo_jax.train.metrics import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = str(ROOT / ".jax_cache")


def tiny_shape(config, **kwargs):
  return shapes.run_shape(config, student_preset=mc.tiny, teacher_preset=mc.tiny, **kwargs)


def test_plan_reads_the_layout_of_the_config():
  config = load_config("configs/zppo.py:2b", ["--config.mesh.student=1,-1,4",
                                               "--config.mesh.teacher=2,-1,2",
                                               "--config.teacher.fp8=True"])
  shape = tiny_shape(config)
  assert (shape.tensor, shape.teacher_tensor, shape.teacher_fp8) == (4, 2, True)
  assert shape.student.remat == "full"                    # the paper configs' remat
  assert tiny_shape(config, tensor=1, remat="dots").student.remat == "dots"  # flags win
  assert tiny_shape(load_config("configs/zppo.py:2b")).tensor == 1


def test_overrides_read_back_as_the_planned_layout():
  config = load_config("configs/zppo.py:2b")
  shape = tiny_shape(config, teacher_fp8=True)
  flags = report.train_overrides(config, shape, tensor=4, teacher_tensor=2)
  assert flags == ["--config.mesh.student=1,-1,4", "--config.mesh.teacher=1,-1,2",
                   "--config.teacher.fp8=True"]
  again = tiny_shape(load_config("configs/zppo.py:2b", flags))
  assert (again.tensor, again.teacher_tensor, again.teacher_fp8) == (4, 2, True)


def test_a_layout_that_does_not_fit_names_the_key():
  devices = list(range(6))
  with pytest.raises(UserError, match=r"config.mesh.student=\(1, -1, 4\) does not fit its 6"):
    parallel.layout_mesh((1, -1, 4), devices, "mesh.student")
  with pytest.raises(UserError, match="must be three integers"):
    parallel.layout_mesh((1, 2), devices, "mesh.teacher")


def test_hub_name_for_a_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  code = cli.main(["train", "--config=configs/zppo.py:2b", f"--workdir={tmp_path / 'run'}",
                   "--config.compilation_cache_dir="])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  assert "--config.student.checkpoint='Qwen/Qwen3.5-2B' is a Hub name" in err[0]
  assert "--config.student.checkpoint=DIR" in err[0]


def test_fp8_teacher_needs_an_fp8_checkpoint(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(UserError, match="fp8 is on but --config.teacher.checkpoint="):
    model_io.load_model(str(tmp_path), "float32", fp8=True, what="--config.teacher.checkpoint")
  with pytest.raises(UserError, match="--model='missing/dir' is a Hub name"):
    model_io.load_model("missing/dir", "float32", what="--model")


def printed_overrides(monkeypatch, capsys, config_path: str) -> list[str]:
  """The `zppo train` flags `zppo plan` prints when the config's layout does not fit and tensor 2
  does (the TPU compiles replaced by their verdicts; `test_plan` runs the real ones)."""
  monkeypatch.setattr(report, "plan", lambda shape, topo, programs, log=print, steps=None: {
      "fits": False, "programs": [{"program": "train", "fits": False}]})
  monkeypatch.setattr(report, "suggest", lambda shape, topo, failed: {
      "topology": topo.name, "tensor": 2, "teacher_tensor": 2, "fits": True})
  names = ["--override=--config.student.checkpoint=Qwen3.5-0.8B",   # the presets' shapes
           "--override=--config.teacher.checkpoint=Qwen3.5-0.8B"]
  assert report.main(["--config", config_path, "--topology", "v5e-8", *names]) == 1
  out = capsys.readouterr().out.splitlines()
  return out[out.index("to train with it (on v5e-8), add to `zppo train`:") + 1].split()


def test_planned_overrides_run_in_train_on_8_devices_with_tensor_2(tmp_path, monkeypatch, capsys):
  flags = printed_overrides(monkeypatch, capsys, "configs/demo.py:tiny")
  assert flags == ["--config.mesh.student=1,-1,2", "--config.mesh.teacher=1,-1,2"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  cmd = [sys.executable, "-m", "zppo_jax.cli", "train", "--config=configs/demo.py:tiny",
         f"--workdir={tmp_path / 'run'}", "--config.total_steps=1", "--config.method=zppo",
         f"--config.demo.cache_dir={tmp_path / 'demo'}", f"--config.compilation_cache_dir={CACHE}",
         "--config.async_checkpointing=False", *flags]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "student on 8 devices, mesh data=1 x fsdp=4 x tensor=2" in proc.stderr
  assert "teacher on 8 devices, mesh data=1 x fsdp=4 x tensor=2" in proc.stderr
  assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1]
