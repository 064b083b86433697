"""ZPPO on Qwen3.5-4B with the Qwen3.5-27B teacher, the paper's hyperparameters (Table 8).

  zppo train --config configs/qwen3_5_4b_zppo.py --workdir gs://BUCKET/runs/4b \
      --config.student.checkpoint=/ckpt/Qwen3.5-4B --config.teacher.checkpoint=/ckpt/Qwen3.5-27B \
      --config.data.train_path=/data/zppo77k
"""
import ml_collections

from zppo_jax.train import config as base


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"configs/qwen3_5_4b_zppo.py takes no argument, got {arg!r}")
  return base.paper_config("4B")


def get_hyper(h):
  return base.paper_hyper(h)
