"""`zppo sweep`: run, follow and compare the variants of a config's `get_hyper()` sweep.

  zppo sweep --config=C [--launcher=local|tpu] [--dry-run] [--only=PATTERN] [--workdir=ROOT]
             [--in-process] [--config.KEY=V ...] [TPU flags]
  zppo sweep status --config=C [--only=PATTERN] [--workdir=ROOT] [--config.KEY=V ...]
  zppo sweep report --config=C [--only=PATTERN] [--workdir=ROOT] [--out=DIR] [--no-plots]
                    [--config.KEY=V ...]

Each variant trains in `ROOT/<variant>` (ROOT defaults to `runs/<config name>`), named from its
swept keys, e.g. `runs/demo/method=zppo`. Locally the variants run one after another; a second call
skips the finished ones and resumes the half-finished one. `--launcher=tpu` submits each variant to
its own slice `<--name>-<index>` through `launch/tpu_run.sh` (TPU flags: --project --zone
--accelerator-type --name [--version] [--max-restarts] [--create]). `--only` picks variants:
`method=zppo` (every variant whose name has that item), `'method=grpo*'` (a glob over names),
alternatives separated by `|`. `--config.KEY=V` overrides apply to every variant (a smaller
`total_steps`, say); they are kept in `ROOT/sweep.json`, which `status` and `report` read when
given no overrides of their own.

  zppo sweep --config=configs/demo.py --config.total_steps=4   # every method, one after another
  zppo sweep status --config=configs/demo.py
  zppo sweep report --config=configs/demo.py                   # runs/demo/sweep_report.md, plots/
"""
from __future__ import annotations

import argparse
import shlex
import sys

from zppo_jax.sweep import hyper, runner


def _parser(action: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=f"zppo sweep {action}".strip(), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              allow_abbrev=False)
  p.add_argument("--config", required=True, help="config file with get_hyper(h), PATH[:ARG]")
  p.add_argument("--workdir", default=None, help="root of the variant workdirs")
  p.add_argument("--only", default=None, help="variants to act on (see above)")
  if action == "run":
    p.add_argument("--launcher", choices=("local", "tpu"), default="local")
    p.add_argument("--dry-run", action="store_true", help="print variants and commands only")
    for flag in runner.TPU_FLAGS:
      p.add_argument(f"--{flag}", default="", help="for --launcher=tpu")
    p.add_argument("--create", action="store_true", help="create each TPU slice first")
    p.add_argument("--in-process", action="store_true",
                   help="local: train in this process instead of a subprocess per variant")
  if action == "report":
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--out", default=None, help="report directory (default: the sweep root)")
  return p


def _parse(action: str, argv: list[str]):
  args, rest = _parser(action).parse_known_args(argv)
  bad = [a for a in rest if not (a.startswith("--config.") and "=" in a)]
  if bad:
    raise ValueError(f"unknown argument {bad[0]!r} (overrides are --config.KEY=VALUE)")
  plan = runner.make_plan(args.config, rest, args.workdir)
  if action != "run" and not rest:  # Follow the overrides the sweep was run with.
    saved = runner.read_sweep_file(plan.root)
    if saved.get("overrides") and saved.get("config") == plan.config_path:
      plan = runner.make_plan(args.config, saved["overrides"], args.workdir)
  chosen = hyper.select(plan.variants, args.only)
  if not chosen:
    raise ValueError(f"--only={args.only!r} matches none of: "
                     + " ".join(v.name for v in plan.variants))
  return args, plan, chosen


def _status_table(plan: runner.Plan, variants: list[hyper.Variant]) -> str:
  rows = [("variant", "state", "step", "reward", "note")]
  for v in variants:
    s = plan.status(v)
    note = s.detail or (f"same config as {v.same_as}" if v.same_as else "")
    rows.append((v.name, s.state, f"{s.step}/{s.total_steps}",
                 "" if s.reward is None else f"{s.reward:.3f}", note))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def run(argv: list[str]) -> int:
  """`zppo sweep [...]`: trains (or submits) the chosen variants."""
  args, plan, chosen = _parse("run", argv)
  tpu = {f: getattr(args, f.replace("-", "_")) for f in runner.TPU_FLAGS}
  if args.dry_run:
    print(f"sweep {plan.config_path}: {len(chosen)} of {len(plan.variants)} variants in "
          f"{plan.root}")
    for v in chosen:
      if args.launcher == "tpu":
        command = runner.tpu_command(plan, v, tpu, args.create)
      else:
        command = ["zppo", "train", *plan.train_args(v)]
      note = f"  (same config as {v.same_as}; not run again)" if v.same_as else ""
      print(f"{v.name}{note}\n  {shlex.join(command)}")
    return 0
  if not runner.is_remote(plan.root):
    runner.write_sweep_file(plan)
  if args.launcher == "tpu":
    outcomes = runner.submit_tpu(plan, chosen, tpu, args.create)
  else:
    try:
      train = runner.train_in_process if args.in_process else runner.train_subprocess
      outcomes = runner.run_local(plan, chosen, train)
    except KeyboardInterrupt:
      print("sweep: interrupted; run the same command again to continue", file=sys.stderr)
      return 130
  print(_status_table(plan, chosen))
  return 1 if "failed" in outcomes.values() else 0


def status(argv: list[str]) -> int:
  """`zppo sweep status`: one line per variant."""
  _, plan, chosen = _parse("status", argv)
  print(f"sweep {plan.config_path} in {plan.root}")
  print(_status_table(plan, chosen))
  return 0


def report(argv: list[str]) -> int:
  """`zppo sweep report`: the comparison tables and plots."""
  args, plan, chosen = _parse("report", argv)
  from zppo_jax.sweep import report as report_lib  # matplotlib is imported only here.
  out = report_lib.write_report(plan, chosen, plots=not args.no_plots, out_dir=args.out)
  print(out["markdown"])
  for path in out["paths"]:
    print(f"wrote {path}", file=sys.stderr)
  return 0


def main(argv: list[str]) -> int:
  """`zppo sweep`, `zppo sweep status`, `zppo sweep report`."""
  argv = list(argv)
  action = argv.pop(0) if argv and argv[0] in ("run", "status", "report") else "run"
  try:
    return {"run": run, "status": status, "report": report}[action](argv)
  except (ValueError, FileNotFoundError) as err:
    print(f"zppo sweep: {err}", file=sys.stderr)
    return 2
