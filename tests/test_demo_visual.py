"""The visual demo variant (`configs/demo.py:visual`): a few ZPPO steps on image questions.

Student and teacher are multimodal checkpoints (random tiny towers, no warm start, to keep the
test short); every prompt the loop samples, the teacher's included, must carry the question's
image, and the learner's packed rows must carry the image features.
"""
import os
import pathlib

from zppo_jax.data.prompts import ImagePrompt
from zppo_jax.train import demo, run
from zppo_jax.train.config import load_config
from zppo_jax.train.metrics import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_visual_demo_runs_zppo_steps(tmp_path):
  overrides = [f"--config.demo.cache_dir={tmp_path / 'cache'}",
               f"--config.compilation_cache_dir={ROOT / '.jax_cache'}",
               "--config.total_steps=2", "--config.checkpoint_every=2",
               "--config.async_checkpointing=False", "--config.demo.num_train=16",
               "--config.demo.num_eval=0", "--config.demo.student_sft_steps=0",
               "--config.demo.teacher_sft_steps=0",
               "--config.rl.group_size=2", "--config.sampling.max_new_tokens=8",
               "--config.sampling.teacher_max_new_tokens=8",
               # No replays: step 2 has step 1's shapes, so it compiles nothing new.
               "--config.rl.replay_ratio=0"]
  config = load_config("configs/demo.py:visual", overrides)
  devnull = open(os.devnull, "w")
  root = demo.prepare(config, stream=devnull)
  assert len(list((root / "images").glob("*.png"))) == 16
  trainer, close = run.build_trainer(config, tmp_path / "run", stream=devnull)
  student, teacher = trainer.student, trainer.teacher
  assert student.vision is not None and teacher.vision is not None

  seen = {"student": [], "teacher": [], "packed": []}

  def spy(name, fn):
    def wrapped(prompts, **kwargs):
      seen[name].extend(prompts)
      return fn(prompts, **kwargs)
    return wrapped

  student.generate = spy("student", student.generate)
  teacher.generate = spy("teacher", teacher.generate)
  pack = student.pack

  def spy_pack(parts, *a, **k):   # One packed batch per mini-batch.
    out = pack(parts, *a, **k)
    seen["packed"].extend(out)
    return out

  student.pack = spy_pack
  try:
    summary = trainer.train()
  finally:
    close()

  assert summary["step"] == 2
  rows = read_metrics(tmp_path / "run")
  assert len(rows) == 2
  # Random models fail every question: all are hard, each gets an NCQ prompt (one slot of
  # rho_aug * |X_new| = 1), the teacher rolls out on them, and the learner still updates.
  assert sum(r.get("groups/ncq", 0) for r in rows) >= 1
  assert all(r["update/skipped"] == 0 for r in rows)
  assert seen["student"] and seen["teacher"]
  assert all(isinstance(p, ImagePrompt) and p.image_grid_thw.tolist() == [[1, 4, 4]]
             for p in seen["student"] + seen["teacher"])
  for batch in seen["packed"]:   # Every packed sequence has its image's 4 feature columns.
    assert batch["vision_mask"].sum() == 4 * batch["segment_ids"].max(axis=1).sum()
