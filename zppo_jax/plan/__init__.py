"""`zppo plan`: will a run fit on a TPU slice? Ahead-of-time compilation for a topology on any host.

    zppo plan --config configs/zppo.py:2b --topology v5p-64 [--tensor 1] [--remat full]

With libtpu installed (``pip install -e ".[tpu]"``) JAX compiles for a TPU topology it does not have
(`jax.experimental.topologies`). The plan builds the student, the teacher and the optimizer state as
shapes only (``nnx.eval_shape``, `Learner.abstract`) with the run's sharding rules, compiles the
step's programs for the topology and reports, per chip, the compiler's memory (arguments,
temporaries, outputs, plus what the other phases leave resident) against the chip's HBM, and a
roofline cost from the model's own FLOP formula. When something does not fit, it names the smallest
multiple of the slice that does.

  topology.py  TPU generations, slice names, the topology's devices;
  shapes.py    `RunShape` (what one ZPPO step compiles) and the cost formulas;
  programs.py  AOT compilation of the update, prefill and decode programs (`Program`);
  estimate.py  the step's time per phase, worst case and typical (`Assumptions`);
  report.py    `plan`, `suggest` and the `zppo plan` command (`main`).
"""
from zppo_jax.plan.programs import GIB, Program, compile_rollout, compile_train
from zppo_jax.plan.estimate import Assumptions, step_seconds
from zppo_jax.plan.report import main, plan, suggest
from zppo_jax.plan.shapes import (RunShape, auto_rows, cache_bytes_per_row, forward_flops,
                                  matmul_params, run_shape, weight_bytes)
from zppo_jax.plan.topology import (CHIPS, Chip, Topology, libtpu_available, parse_topology,
                                    scaled, topology_devices)

__all__ = ["CHIPS", "GIB", "Assumptions", "Chip", "Program", "RunShape", "Topology", "auto_rows",
           "cache_bytes_per_row", "compile_rollout", "compile_train", "forward_flops",
           "libtpu_available", "main", "matmul_params", "parse_topology", "plan", "run_shape",
           "scaled", "step_seconds", "suggest", "topology_devices", "weight_bytes"]
