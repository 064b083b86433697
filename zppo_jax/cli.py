"""The `zppo` command: parses the sub-command and hands the rest of argv to the library.

Each sub-command lives in the module that owns its work; this file only dispatches, so importing
it is cheap and `zppo --help` does not import JAX.
"""
import importlib
import sys

# name -> ("module", "function", "one-line help"). Each function takes argv (list[str]) and
# returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "eval": ("zppo_jax.eval.main", "main", "score a model on the benchmarks; eval compare A B"),
    "train": ("zppo_jax.train.run", "main", "RL post-training (default: the CPU demo); resumes"),
    "sft": ("zppo_jax.train.sft", "main", "supervised fine-tuning on question/response JSONL"),
    "export": ("zppo_jax.train.export", "main", "write a run's student as an HF checkpoint"),
    "plot": ("zppo_jax.train.plots", "main", "PNG figures of a run's metrics"),
    "data": ("zppo_jax.data.main", "main", "build ZPPO-77K or your own shards"),
    "plan": ("zppo_jax.plan", "main", "AOT-compile a run's step for a TPU topology: fits? speed?"),
    "sweep": ("zppo_jax.sweep.main", "main", "run a config's sweep; sweep status|report"),
}


def _usage() -> str:
  width = max((len(n) for n in COMMANDS), default=4)
  rows = "\n".join(f"  {n:<{width}}  {h}" for n, (_, _, h) in sorted(COMMANDS.items()))
  return f"usage: zppo COMMAND [ARGS...]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    print(f"zppo: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
    return 2
  module, function, _ = COMMANDS[name]
  return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
  sys.exit(main())
