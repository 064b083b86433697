"""`zppo train` with a `gs://` workdir writes every file through epath, nothing on the local disk.

The `gs` and `gcs` protocols of fsspec (the backend epath uses for `gs://` without TensorFlow) are
served from memory for this test, so the paths go through exactly the code a real bucket does.
Orbax cannot write there: it stores arrays with TensorStore, whose `gs://` driver talks to the GCS
HTTP API itself (it does not go through fsspec or epath), so the checkpoints of this run go to a
local directory; a checkpoint's own round trip is tested on local workdirs elsewhere.
"""
import importlib
import os
import pathlib

import fsspec
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem

from etils import epath

from zppo_jax.train import checkpointing, run, workdir
from zppo_jax.train import trainer as trainer_lib
from zppo_jax.train.metrics import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = str(ROOT / ".jax_cache")


class FakeGCS(MemoryFileSystem):
  """An in-memory bucket for `gs://` paths."""
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]


@pytest.fixture
def fake_gcs():
  saved = {name: fsspec.registry.get(name) for name in FakeGCS.protocol}
  for name in FakeGCS.protocol:
    fsspec.register_implementation(name, FakeGCS, clobber=True)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # epath caches the file system.
  FakeGCS.store.clear()
  yield FakeGCS.store
  FakeGCS.store.clear()
  for name, impl in saved.items():
    if impl is None:
      # Back to importing gcsfs on first use (`fsspec.registry` itself is a read-only view).
      importlib.import_module("fsspec.registry")._registry.pop(name, None)
    else:
      fsspec.register_implementation(name, impl, clobber=True)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()


def local_files(root: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_train_on_a_gs_workdir_writes_nothing_locally(fake_gcs, tmp_path, monkeypatch):
  cwd, checkpoints = tmp_path / "cwd", tmp_path / "checkpoints"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))   # the prompt shards' local copy

  class LocalCheckpoints(checkpointing.RunCheckpointer):
    def __init__(self, workdir, **kwargs):
      assert str(workdir) == "gs://bucket/run"
      super().__init__(checkpoints, **kwargs)

  monkeypatch.setattr(trainer_lib, "RunCheckpointer", LocalCheckpoints)
  code = run.main(["--config=configs/demo.py:tiny", "--workdir=gs://bucket/run",
                   "--config.method=grpo", "--config.total_steps=1",
                   f"--config.demo.cache_dir={tmp_path / 'demo_cache'}",
                   f"--config.compilation_cache_dir={CACHE}",
                   "--config.async_checkpointing=False"])
  assert code == 0
  assert local_files(cwd) == []                 # no `gs:` folder, no `runs/`
  assert not any(p.name.startswith("gs:") for p in tmp_path.rglob("*"))
  written = sorted(k[len("gs://bucket/run/"):] for k in fake_gcs)
  for name in ("config.json", "summary.json", "metrics.jsonl", "plots/rewards.png",
               "plots/buffer.png", "train_data/input.json", "train_data/report.json"):
    assert name in written, written
  assert any(k.startswith("tb/events.out.tfevents") for k in written), written
  assert any(k.startswith("train_data/prompts/") and "array_record" in k for k in written), written
  assert [r["step"] for r in read_metrics("gs://bucket/run")] == [1]
  assert fake_gcs["gs://bucket/run/plots/rewards.png"].getvalue().startswith(b"\x89PNG")
  assert "checkpoints/1" in local_files(checkpoints)
  assert os.listdir(tmp_path / "xdg" / "zppo-jax" / "train_data")


def test_a_damaged_checkpoint_is_set_aside_in_a_bucket(fake_gcs, tmp_path):
  step = epath.Path("gs://bucket/run/checkpoints/3")
  (step / "state").mkdir(parents=True, exist_ok=True)
  (step / "state" / "data").write_bytes(b"abc")
  (step / "_CHECKPOINT_METADATA").write_text("{}")
  aside = epath.Path("gs://bucket/run/checkpoints_corrupt/3")
  workdir.move_tree(step, aside)        # An object store has no directory to rename.
  assert sorted(fake_gcs) == ["gs://bucket/run/checkpoints_corrupt/3/_CHECKPOINT_METADATA",
                              "gs://bucket/run/checkpoints_corrupt/3/state/data"]
  local = epath.Path(tmp_path / "copy")
  workdir.copy_tree(aside, local, last="_CHECKPOINT_METADATA")
  assert (tmp_path / "copy" / "state" / "data").read_bytes() == b"abc"
