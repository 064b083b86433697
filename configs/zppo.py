"""ZPPO on Qwen3.5-{0.8B, 2B, 4B, 9B} with the Qwen3.5-27B teacher, the paper's hyperparameters
(Table 8). The argument is the student's size (default 2b):

  zppo train --config configs/zppo.py:2b --workdir gs://BUCKET/runs/2b \
      --config.student.checkpoint=/ckpt/Qwen3.5-2B --config.teacher.checkpoint=/ckpt/Qwen3.5-27B \
      --config.data.train_path=/data/zppo77k
"""
import ml_collections

from zppo_jax.train import config as base

SIZES = ("0.8B", "2B", "4B", "9B")


def get_config(arg: str = "2b") -> ml_collections.ConfigDict:
  size = (arg or "2b").upper().replace("_", ".")
  if size not in SIZES:
    raise ValueError(f"configs/zppo.py: unknown student size {arg!r}; choose one of "
                     f"{', '.join(s.lower() for s in SIZES)}")
  return base.paper_config(size)


def get_hyper(h):
  return base.paper_hyper(h)
