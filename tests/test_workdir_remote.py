"""`zppo train` with a `gs://` workdir writes every file to the bucket, nothing on the local disk.

One local fake GCS server (gcp-storage-emulator, in memory) stands in for the bucket, and both
clients a real run uses talk to it over HTTP: gcsfs (the backend of `etils.epath` for `gs://`
without TensorFlow: metrics, plots, prompt shards, Orbax's own files) through
`STORAGE_EMULATOR_HOST`, and TensorStore (Orbax's array storage, which speaks the GCS HTTP API
itself) through `TENSORSTORE_GCS_HTTP_URL`. So checkpoints are written to and resumed from the
bucket by exactly the code a real one sees.
"""
import os
import pathlib
import socket

import fsspec
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from gcp_storage_emulator.server import create_server

from zppo_jax.train import run, workdir
from zppo_jax.train.metrics import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = str(ROOT / ".jax_cache")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _clear_gcs_clients() -> None:
  """Forgets gs:// clients made for another server (epath and fsspec both cache them)."""
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  fsspec.get_filesystem_class("gs").clear_instance_cache()


@pytest.fixture
def bucket(monkeypatch):
  """`gs://bucket` on a fresh in-memory GCS server; yields a function listing what it holds."""
  url = f"http://127.0.0.1:{_free_port()}"
  server = create_server("127.0.0.1", int(url.rsplit(":", 1)[1]), in_memory=True,
                         default_bucket="bucket")
  server.start()
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)       # gcsfs, anonymous
  monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", url)    # TensorStore's gcs driver, anonymous
  _clear_gcs_clients()

  def files(root: str) -> list[str]:
    """Every object under `root` (a `gs://` directory), relative to it."""
    root = epath.Path(root)
    return sorted(str(f.relative_to(root)) for f in workdir.files_under(root))

  yield files
  _clear_gcs_clients()
  server.stop()


def local_files(root: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_train_and_resume_on_a_gs_workdir_write_nothing_locally(bucket, tmp_path, monkeypatch,
                                                                capsys):
  cwd, caches = tmp_path / "cwd", tmp_path / "caches"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setenv("XDG_CACHE_HOME", str(caches / "xdg"))   # the prompt shards' local copy

  def train(steps):
    return run.main(["--config=configs/demo.py:tiny", "--workdir=gs://bucket/run",
                     "--config.method=grpo", f"--config.total_steps={steps}",
                     "--config.checkpoint_every=1",
                     f"--config.demo.cache_dir={caches / 'demo'}",
                     f"--config.compilation_cache_dir={CACHE}",
                     "--config.async_checkpointing=False"])

  assert train(1) == 0
  written = bucket("gs://bucket/run")
  for name in ("config.json", "summary.json", "metrics.jsonl", "plots/rewards.png",
               "plots/buffer.png", "train_data/input.json", "train_data/report.json",
               "checkpoints/1/_CHECKPOINT_METADATA", "checkpoints/1/host/metadata"):
    assert name in written, written
  assert any(k.startswith("checkpoints/1/state/") and "/d/" in k for k in written), written
  assert any(k.startswith("tb/events.out.tfevents") for k in written), written
  assert any(k.startswith("train_data/prompts/") and "array_record" in k for k in written), written
  assert epath.Path("gs://bucket/run/plots/rewards.png").read_bytes().startswith(b"\x89PNG")
  capsys.readouterr()

  # The same command, one step further: it resumes from the bucket's checkpoint.
  assert train(2) == 0
  assert "train: resumed from step 1 in gs://bucket/run/checkpoints" in capsys.readouterr().err
  assert [r["step"] for r in read_metrics("gs://bucket/run")] == [1, 2]
  assert "checkpoints/2/_CHECKPOINT_METADATA" in bucket("gs://bucket/run")

  assert local_files(cwd) == []                 # no `gs:` folder, no `runs/`
  assert sorted(p.name for p in tmp_path.iterdir()) == ["caches", "cwd"]
  assert not any(p.name.startswith("gs:") for p in tmp_path.rglob("*"))
  assert os.listdir(caches / "xdg" / "zppo-jax" / "train_data")


def test_a_damaged_checkpoint_is_set_aside_in_a_bucket(bucket, tmp_path):
  step = epath.Path("gs://bucket/run/checkpoints/3")
  (step / "state").mkdir(parents=True, exist_ok=True)
  (step / "state" / "data").write_bytes(b"abc")
  (step / "_CHECKPOINT_METADATA").write_text("{}")
  aside = epath.Path("gs://bucket/run/checkpoints_corrupt/3")
  workdir.move_tree(step, aside)        # An object store has no directory to rename.
  assert bucket("gs://bucket/run") == ["checkpoints_corrupt/3/_CHECKPOINT_METADATA",
                                       "checkpoints_corrupt/3/state/data"]
  local = epath.Path(tmp_path / "copy")
  workdir.copy_tree(aside, local, last="_CHECKPOINT_METADATA")
  assert (tmp_path / "copy" / "state" / "data").read_bytes() == b"abc"
