"""Shared test set-up: fp32 on CPU, a persistent XLA compilation cache, and the tiny-model fixtures.

Compilation dominates small-model tests on a 2-core CPU, so compiled executables are cached on disk
(``.jax_cache`` at the repository root) and reused across test files, xdist workers and CI runs.
"""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_ROOT = pathlib.Path(__file__).resolve().parents[1]
jax.config.update("jax_compilation_cache_dir", str(_ROOT / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_default_matmul_precision", "highest")
