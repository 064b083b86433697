"""`configs/zppo.py:0.8b` under its earlier name (kept for existing launch commands)."""
import runpy

from zppo_jax.train.config import REPO_ROOT

_PAPER = runpy.run_path(str(REPO_ROOT / "configs" / "zppo.py"))


def get_config(arg: str = ""):
  if arg:
    raise ValueError(f"configs/qwen3_5_0_8b_zppo.py takes no argument, got {arg!r}")
  return _PAPER["get_config"]("0.8b")


get_hyper = _PAPER["get_hyper"]
