"""`configs/zppo.py:4b` under its earlier name (kept for existing launch commands)."""
import runpy

from zppo_jax.train.config import REPO_ROOT

_PAPER = runpy.run_path(str(REPO_ROOT / "configs" / "zppo.py"))


def get_config(arg: str = ""):
  if arg:
    raise ValueError(f"configs/qwen3_5_4b_zppo.py takes no argument, got {arg!r}")
  return _PAPER["get_config"]("4b")


get_hyper = _PAPER["get_hyper"]
