"""`zppo train` on the paper config, straight from a `zppo data build-zppo77k` output directory.

The two sources are written in their published layouts (Vero config folders, MMFineReason
`data/train-*` shards, one image struct per row), built with the CLI, and trained on with
`configs/qwen3_5_2b_zppo.py` plus tiny-model overrides: the visual demo's random multimodal
student and teacher (so every prompt carries its image through the Grain pipeline). A run killed
after its first step resumes with the same batches: same per-step metrics and the same questions,
in the same order, in the replay buffer as an uninterrupted run.
"""
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zppo_jax.data import records, tfds_source
from zppo_jax.train import demo
from zppo_jax.train.config import load_config
from zppo_jax.train.metrics import read_metrics
from conftest import without_timings

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = str(ROOT / ".jax_cache")


def png(seed, size=120):
  buf = io.BytesIO()
  PIL.Image.new("RGB", (size, size), (seed * 40 % 256, 90, 200)).save(buf, "PNG")
  return buf.getvalue()


def write_sources(root):
  """Vero `stem-mmk12/train-*.parquet` (+ a `val` shard that is not Parquet) and MMFineReason
  `data/train-00000-of-00070.parquet`, columns as shared/ZPPO_SPEC.md §7 publishes them."""
  vero = []
  for i in range(3):
    q = f"<image>\nWhat is {i} + {i}?"
    vero.append({"image": {"bytes": png(i), "path": None},
                 "prompt": {"content": [q], "role": ["user"]}, "data_source": "mmk12",
                 "ability": "stem", "reward_model": {"ground_truth": str(2 * i), "style": "rule"},
                 "extra_info": {"answer": str(2 * i), "question": q, "index": i,
                                "reward_type": "exact", "domain": "stem", "tolerance": 0.0}})
  folder = root / "vero" / "stem-mmk12"
  folder.mkdir(parents=True)
  pq.write_table(pa.Table.from_pylist(vero), folder / "train-00000-of-00001.parquet")
  (folder / "val-00000-of-00001.parquet").write_bytes(b"never read")
  mmfr = [{"question": f"<image>\nHow many sides has shape {i}?", "answer": str(i + 3),
           "image": {"bytes": png(10 + i), "path": None}, "source": "BMMR", "id": i,
           "pass_rate": 0.25, "original_answer": str(i + 3)} for i in range(3)]
  (root / "mmfr" / "data").mkdir(parents=True)
  pq.write_table(pa.Table.from_pylist(mmfr),
                 root / "mmfr" / "data" / "train-00000-of-00070.parquet")
  return root / "vero", root / "mmfr"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(demo cache root with the tiny multimodal models, built ZPPO-77K output directory)."""
  tmp = tmp_path_factory.mktemp("zppo77k_train")
  config = load_config("configs/demo.py:visual", [
      f"--config.demo.cache_dir={tmp / 'cache'}", "--config.demo.num_train=4",
      "--config.demo.num_eval=0", "--config.demo.student_sft_steps=0",
      "--config.demo.teacher_sft_steps=0"])
  cache = demo.prepare(config, stream=open(os.devnull, "w"))
  vero, mmfr = write_sources(tmp)
  out = tmp / "zppo77k"
  subprocess.run([sys.executable, "-m", "zppo_jax.cli", "data", "build-zppo77k", "--vero",
                  str(vero), "--mmfinereason", str(mmfr), "--out", str(out), "--tokenizer",
                  str(cache / "tokenizer"), "--num-shards", "2"], cwd=ROOT, env=_env(),
                 check=True, capture_output=True)
  return cache, out


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


def _train_cmd(workdir, cache, data):
  return [sys.executable, "-m", "zppo_jax.cli", "train", "--config=configs/qwen3_5_2b_zppo.py",
          f"--workdir={workdir}", f"--config.data.train_path={data}",
          f"--config.student.checkpoint={cache / 'student'}",
          f"--config.teacher.checkpoint={cache / 'teacher'}",
          f"--config.data.tokenizer={cache / 'tokenizer'}",
          # Tiny-model overrides: CPU, one device, a few tokens, the demo's 64 x 64 image budget.
          f"--config.compilation_cache_dir={CACHE}", "--config.total_steps=2",
          "--config.checkpoint_every=1", "--config.async_checkpointing=False",
          "--config.teacher.device_fraction=0", "--config.data.num_workers=0",
          "--config.student.param_dtype=float32", "--config.student.compute_dtype=float32",
          "--config.teacher.param_dtype=float32", "--config.teacher.compute_dtype=float32",
          "--config.optim.state_dtype=float32",
          f"--config.data.image_min_pixels={64 * 64}", f"--config.data.image_max_pixels={64 * 64}",
          "--config.rl.batch_prompts=2", "--config.rl.group_size=2",
          "--config.rl.teacher_group_size=2", "--config.rl.inner_updates=1",
          "--config.rl.pack_row_len=512", "--config.rl.compress=False",
          "--config.sampling.max_new_tokens=8", "--config.sampling.teacher_max_new_tokens=8"]


def _host(workdir, step):
  return json.loads(next((workdir / "checkpoints" / str(step) / "host").glob("*")).read_text())


def _buffer_ids(workdir, step):
  host = _host(workdir, step)
  return [entry[0] for entry in host["buffer"]["entries"]], host["data"]


def test_paper_config_trains_on_the_build_and_resumes_after_kill(setup, tmp_path):
  cache, data = setup
  built = list(records.iter_records(records.shard_paths(tfds_source.find_dataset_dir(data),
                                                        "zppo77k")))
  assert len(built) == 6 and all(len(r["images"]) == 1 for r in built)

  full, killed = tmp_path / "full", tmp_path / "killed"
  subprocess.run(_train_cmd(full, cache, data), cwd=ROOT, env=_env(), check=True,
                 capture_output=True)
  rows = read_metrics(full)
  assert [r["step"] for r in rows] == [1, 2]
  assert all(r["batch/new"] == 2 and r["update/skipped"] == 0 for r in rows)
  ids, _ = _buffer_ids(full, 2)
  # Random models fail every question: all four fresh questions of the two steps are buffered.
  assert len(set(ids)) == 4 and set(ids) <= {r["id"] for r in built}
  # Each buffered question names its image in the shards (what replays and BCQ/NCQ prompts use).
  for _, record, _ in _host(full, 2)["buffer"]["entries"]:
    assert len(record["images"]) == 1 and record["images"][0].startswith("shard-image:")

  proc = subprocess.Popen(_train_cmd(killed, cache, data), cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  while proc.poll() is None and not (killed / "checkpoints" / "1" / "host").exists():
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode != 0 and len(read_metrics(killed)) < 2
  resumed = subprocess.run(_train_cmd(killed, cache, data), cwd=ROOT, env=_env(),
                           capture_output=True, text=True, check=True)
  assert "resumed from step" in resumed.stderr
  assert without_timings(read_metrics(killed)) == without_timings(rows)
  assert _buffer_ids(killed, 2) == _buffer_ids(full, 2)
