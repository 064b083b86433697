"""`zppo export WORKDIR OUT_DIR`: the trained student of a run as an HF checkpoint directory.

Reads the run's `config.json` for the student's starting checkpoint (its architecture), restores the
newest readable training checkpoint into it, and writes `config.json`, safetensors and the tokenizer
with `save_pretrained`, so `transformers` (or `zppo train --config.student.checkpoint=OUT_DIR`)
loads it.
"""
from __future__ import annotations

import json
import pathlib
import sys

from etils import epath
import ml_collections


def export(workdir: epath.PathLike, out_dir: str | pathlib.Path, stream=None) -> int:
  """Writes the latest student of `workdir` to `out_dir`; returns the exported step."""
  from zppo_jax.models.qwen3_5.multimodal import text_decoder
  from zppo_jax.train import model_io
  from zppo_jax.train.checkpointing import RunCheckpointer
  from zppo_jax.train.learner import Learner, LearnerConfig

  stream = stream or sys.stderr
  workdir = epath.Path(workdir)   # a run directory, local or `gs://`
  config_path = workdir / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} not found: is {workdir} a `zppo train` run directory?")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  model = model_io.load_model(config.student.checkpoint, config.student.compute_dtype,
                         config.student.param_dtype)
  text = text_decoder(model)  # The learner trains the text decoder; a vision tower is frozen.
  learner = Learner(text, LearnerConfig.from_config(config))
  restored = RunCheckpointer(workdir, keep=config.keep_checkpoints, async_save=False).restore(
      learner.state)
  if restored is None:
    raise FileNotFoundError(f"no readable checkpoint under {workdir / 'checkpoints'}")
  learner.state = restored.state
  learner.update_model(text)
  tokenizer = model_io.load_tokenizer(config.data.tokenizer or config.student.checkpoint)
  model_io.save_model(model, out_dir, tokenizer)
  print(f"export: step {restored.step} of {workdir} written to {out_dir}", file=stream)
  return restored.step


def main(argv: list[str]) -> int:
  if len(argv) != 2 or any(a.startswith("-") for a in argv):
    print("usage: zppo export WORKDIR OUT_DIR", file=sys.stderr)
    return 2
  export(argv[0], argv[1])
  return 0
