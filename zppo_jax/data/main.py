"""`zppo data SUBCOMMAND ...`: the dataset builders.

  zppo data build-zppo77k ...   rebuild ZPPO-77K (`data.zppo77k`)
  zppo data build ...           shards from your own files (`data.generic_builder`)
"""
from __future__ import annotations

COMMANDS = {"build-zppo77k": "rebuild ZPPO-77K from Vero-600k and MMFineReason-SFT-586K",
            "build": "shards from your own JSONL/Parquet/HF datasets directory"}


def main(argv: list[str]) -> int:
  """Dispatches to the builder's own `main(argv)`; prints the sub-commands without one."""
  if not argv or argv[0] not in COMMANDS:
    rows = "\n".join(f"  {k:<14} {v}" for k, v in COMMANDS.items())
    print(f"usage: zppo data SUBCOMMAND [ARGS...]\n\nsubcommands:\n{rows}")
    return 0 if argv and argv[0] in ("-h", "--help") else 2
  if argv[0] == "build-zppo77k":
    from zppo_jax.data import zppo77k  # pylint: disable=import-outside-toplevel
    return zppo77k.main(argv[1:])
  from zppo_jax.data import generic_builder  # pylint: disable=import-outside-toplevel
  return generic_builder.main(argv[1:])
