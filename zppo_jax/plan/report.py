"""`zppo plan --config C --topology T`: compile the step's programs for a slice, report, suggest.

`plan` splits the slice between student and teacher, compiles each program (`programs`), adds what
the other phases leave resident in HBM, and prints one row per program plus the step estimates
(`estimate`: worst case and typical); `suggest` retries with more tensor parallelism and on 2x,
4x, ... the chips when something does not fit; `main` is the command.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Sequence

import numpy as np

from zppo_jax import parallel
from zppo_jax.plan import estimate
from zppo_jax.plan import programs as programs_lib
from zppo_jax.plan import shapes
from zppo_jax.plan import topology as topology_lib
from zppo_jax.plan.programs import GIB, Program
from zppo_jax.plan.shapes import RunShape
from zppo_jax.plan.topology import Topology

HEADER = (f"{'program':<10} {'chips':>5} {'rows':>5} {'args':>7} {'temp':>7} {'out':>7} "
          f"{'resid':>7} {'total':>7} {'HBM':>6} {'fits':>4} {'TFLOP':>9} {'est s':>8} "
          f"{'tok/s':>10} {'MFU':>5}")


def format_row(r: dict[str, Any]) -> str:
  """One line of the report under `HEADER` (GiB per chip)."""
  if r["error"]:
    return f"{r['program']:<10} {r['chips']:>5} {r['rows']:>5}  error: {r['error']}"
  return (f"{r['program']:<10} {r['chips']:>5} {r['rows']:>5} {r['args_gib']:>7.2f} "
          f"{r['temp_gib']:>7.2f} {r['out_gib']:>7.2f} {r['resident_gib']:>7.2f} "
          f"{r['total_gib']:>7.2f} {r['hbm_gib']:>6.1f} {'yes' if r['fits'] else 'NO':>4} "
          f"{r['tflop']:>9.1f} {r['est_s']:>8.3f} {r['tokens_per_s']:>10.0f} {r['mfu']:>5.2f}")


def plan(shape: RunShape, topo: Topology, programs=("train", "rollout", "teacher"),
         log=print, steps: dict[str, estimate.Assumptions] | None = None) -> dict[str, Any]:
  """Compiles the step's programs for `topo`.

  Args:
    shape: the run's shapes (`shapes.run_shape`).
    topo: the slice.
    programs: any of "train", "rollout" (student prefill + decode), "teacher".
    log: called with each report line.
    steps: step estimates to print, by label (`estimate.from_flags`).

  Returns:
    {topology, desc, chips, hbm_gib, fits, programs: [`Program.row`], step_s: {label: {phase:
    seconds}}}.
  """
  devices = topology_lib.topology_devices(topo)
  per_chip = len(devices) // topo.chips or 1
  hbm = topo.chip.hbm_gib * GIB / per_chip
  student_devices, teacher_devices = parallel.split_devices(shape.teacher_fraction, devices)
  shared = student_devices is teacher_devices
  chip = topo.chip
  # What stays resident while another program runs (the trainer keeps all of it on device): the
  # learner's state (params or their fp32 masters or Kahan buffers, + Adam moments) and the
  # sampler's weight copy on the student's chips, and the teacher's weights on the teacher's (on
  # every chip when they share the slice).
  weights = shapes.weight_bytes(shape.student)
  moments = 2 * weights * np.dtype(shape.opt_state_dtype).itemsize \
      / np.dtype(shape.student.param_dtype).itemsize
  train_state = (weights * shape.learner_weights + moments) / len(student_devices)
  sampler_weights = weights / shape.tensor
  teacher_weights = shapes.weight_bytes(shape.teacher, shape.teacher_fp8) / shape.teacher_tensor
  done: list[Program] = []

  def add(p: Program, resident: float, rows: int = 0):
    p.resident, p.rows = resident, rows
    done.append(p)
    log(format_row(p.row(chip)))

  def rollout(name, cfg, rows, group, devices, resident, fp8, tensor):
    """Compiles at `rows` if given, else at `auto_rows`, halving while it does not fit."""
    n = rows or shapes.auto_rows(cfg, shape, len(devices), hbm, shape.prompts * group, group,
                                 fp8, tensor)
    while True:
      pre, dec = programs_lib.compile_rollout(name, cfg, n, group, shape, devices, hbm, fp8=fp8,
                                              tensor=tensor)
      pre.resident = dec.resident = resident
      if rows or (pre.fits and dec.fits) or n // 2 < group or (n // 2) % group:
        break
      log(f"-- {name}prefill/{name}decode at {n} rows do not fit "
          f"({pre.error or dec.error or 'total > HBM'}); trying {n // 2}")
      n //= 2
    add(pre, resident, n)
    add(dec, resident, n)
    if not name and pre.fits and dec.fits:
      log(f"-- the student's rollouts fit in calls of {n} rows: --config.sampling.rows_per_call={n}")

  if "train" in programs:
    add(programs_lib.compile_train(shape, student_devices, hbm),
        sampler_weights + (teacher_weights if shared else 0.0))
  if "rollout" in programs:
    rollout("", shape.student, shape.rollout_rows, shape.group, student_devices,
            train_state + (teacher_weights if shared else 0.0), False, shape.tensor)
  if "teacher" in programs:
    rollout("t_", shape.teacher, shape.teacher_rows, shape.teacher_group, teacher_devices,
            (train_state + sampler_weights) if shared else 0.0, shape.teacher_fp8,
            shape.teacher_tensor)
  rows = [p.row(chip) for p in done]
  step = {}
  for label, assumed in (steps or {}).items():
    phases = estimate.step_phases(shape, {p.name: p for p in done}, chip, assumed)
    if phases:
      step[label] = {p.name: p.seconds for p in phases}
      log(f"{label} assumptions: {assumed.describe()}")
      log(estimate.format_step(label, phases))
  return dict(topology=topo.name, desc=topo.desc, chips=topo.chips, hbm_gib=chip.hbm_gib,
              fits=all(r["fits"] for r in rows), programs=rows, step_s=step)


def suggest(shape: RunShape, topo: Topology, failed: Sequence[str] = (), max_factor: int = 16,
            max_tensor: int = 4, log=print) -> dict | None:
  """The smallest layout on which every program fits (None if none does).

  More chips do not shrink an update's activations (one packed row per batch shard) nor a
  prefill's per-prompt attention scores; tensor parallelism splits both by heads. So on each
  slice, from `topo` up to `max_factor` times its chips, it tries the asked tensor sizes first,
  then doubles the tensor size of the side (student or teacher) whose programs in `failed` did not
  fit, up to `max_tensor`. The asked layout itself is not retried.

  Returns:
    The first fitting plan's result, with "tensor" and "teacher_tensor" added.
  """
  student = any(not name.startswith("t_") for name in failed) or not failed
  teacher = any(name.startswith("t_") for name in failed) or not failed
  factor = 1
  while factor <= max_factor:
    bigger = topology_lib.scaled(topo, factor) if factor > 1 else topo
    scale = 1
    while scale <= max_tensor:
      tried = dataclasses.replace(shape, tensor=shape.tensor * (scale if student else 1),
                                  teacher_tensor=shape.teacher_tensor * (scale if teacher else 1))
      if (factor, scale) != (1, 1) and max(tried.tensor, tried.teacher_tensor) <= max_tensor:
        log(f"-- trying {bigger.name} ({bigger.chips} chips), tensor={tried.tensor}, "
            f"teacher tensor={tried.teacher_tensor}")
        result = plan(tried, bigger, log=log)
        if result["fits"]:
          return dict(result, tensor=tried.tensor, teacher_tensor=tried.teacher_tensor)
      scale *= 2
    factor *= 2
  return None


def train_overrides(config, shape: RunShape, tensor: int, teacher_tensor: int) -> list[str]:
  """The `zppo train` flags of a planned layout: `--config.mesh.student=D,-1,T` (the config's data
  size; FSDP takes the chips left over), `--config.mesh.teacher=...`, and `student.remat` /
  `teacher.fp8` where the plan's differ from the config's. Ready to paste; the config reads them
  back as the same layout (`shapes.run_shape`)."""
  def layout(configured, size):   # FSDP (or data, when it is the -1 axis) takes the rest.
    return f"-1,1,{size}" if int(configured[0]) == -1 else f"{int(configured[0])},-1,{size}"
  out = [f"--config.mesh.student={layout(config.mesh.student, tensor)}",
         f"--config.mesh.teacher={layout(config.mesh.teacher, teacher_tensor)}"]
  if shape.student.remat != config.student.remat:
    out.append(f"--config.student.remat={shape.student.remat}")
  if shape.teacher_fp8 != bool(config.teacher.fp8):
    out.append(f"--config.teacher.fp8={shape.teacher_fp8}")
  return out


def main(argv: list[str]) -> int:
  """`zppo plan`; returns 0 when everything fits, 1 when not, 2 without libtpu."""
  from zppo_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="zppo plan", description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--topology", required=True, help="e.g. v5p-128, v6e-64, v5e-16, v4-32")
  parser.add_argument("--tensor", type=int, default=None,
                      help="tensor-parallel size (default: the config's mesh.student)")
  parser.add_argument("--teacher-tensor", type=int, default=None,
                      help="tensor-parallel size of the teacher's mesh (default --tensor, else "
                      "the config's mesh.teacher)")
  parser.add_argument("--remat", default=None, choices=("none", "dots", "full"),
                      help="the student's remat (default: the config's student.remat)")
  parser.add_argument("--rollout-rows", type=int, default=0, help="0 = the largest that fits")
  parser.add_argument("--teacher-rows", type=int, default=0, help="0 = the largest that fits")
  parser.add_argument("--train-rows", type=int, default=0,
                      help="packed rows per micro-batch (0 = one per batch shard)")
  parser.add_argument("--teacher-fp8", action=argparse.BooleanOptionalAction, default=None,
                      help="teacher weights in FP8 (default: the config's teacher.fp8, or when "
                      "its checkpoint name says FP8)")
  parser.add_argument("--teacher-fraction", type=float, default=None,
                      help="share of the chips for the teacher (default: the config's; 0 = shared)")
  parser.add_argument("--programs", default="train,rollout,teacher")
  parser.add_argument("--no-suggest", action="store_true")
  parser.add_argument("--json", default="", help="also write the result here")
  parser.add_argument("--override", action="append", default=[],
                      help="config override, e.g. --override=--config.rl.pack_row_len=8192")
  estimate.add_flags(parser)
  args = parser.parse_args(argv)
  reason = topology_lib.libtpu_available()
  if reason:
    print(f"zppo plan: {reason}", file=sys.stderr)
    return 2
  config = config_lib.load_config(args.config, args.override)
  if args.teacher_fraction is not None:
    config.teacher.device_fraction = args.teacher_fraction
  teacher_tensor = args.tensor if args.teacher_tensor is None else args.teacher_tensor
  shape = shapes.run_shape(config, tensor=args.tensor, teacher_tensor=teacher_tensor,
                           remat=args.remat, rollout_rows=args.rollout_rows,
                           teacher_rows=args.teacher_rows, train_rows=args.train_rows,
                           teacher_fp8=args.teacher_fp8)
  topo = topology_lib.parse_topology(args.topology)
  print(f"plan {config.name} on {topo.name} ({topo.chips} chips {topo.desc}, "
        f"{topo.chip.hbm_gib:g} GiB HBM each): student {config.student.checkpoint} remat "
        f"{shape.student.remat}, teacher {config.teacher.checkpoint}"
        f"{' fp8' if shape.teacher_fp8 else ''}, "
        f"tensor={shape.tensor}, teacher tensor={shape.teacher_tensor}, "
        f"teacher fraction {shape.teacher_fraction}")
  print(HEADER)
  result = plan(shape, topo, tuple(args.programs.split(",")),
                steps=estimate.from_flags(args, shape, config))
  result["suggested"] = None
  if result["fits"]:
    print(f"fits on {topo.name}")
  else:
    print(f"does NOT fit on {topo.name}")
    if not args.no_suggest:
      failed = [r["program"] for r in result["programs"] if not r["fits"]]
      found = suggest(shape, topo, failed)
      result["suggested"] = found and {k: found[k] for k in ("topology", "tensor",
                                                               "teacher_tensor")}
      if found:
        result["suggested"]["overrides"] = train_overrides(config, shape, found["tensor"],
                                                           found["teacher_tensor"])
        print(f"smallest that fits: {found['topology']} --tensor {found['tensor']} "
              f"--teacher-tensor {found['teacher_tensor']}\n"
              f"to train with it (on {found['topology']}), add to `zppo train`:\n  "
              + " ".join(result["suggested"]["overrides"]))
      else:
        print("nothing up to 16x the chips and tensor 4 fits: lower --rollout-rows/--train-rows")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1, default=str)
  return 0 if result["fits"] else 1
