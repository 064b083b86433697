"""The `zppo` command: parses the sub-command and hands the rest of argv to the library.

Each sub-command lives in the module that owns its work; this file only dispatches, so importing
it is cheap and `zppo --help` does not import JAX. `zppo COMMAND --help` works for every command,
and a `zppo_jax.errors.UserError` (a bad flag, an unknown method, a checkpoint that does not match
the config) is printed as one line, without a traceback.
"""
import importlib
import importlib.util
import sys

from zppo_jax.errors import UserError

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


# Commands without an argument parser of their own: `--help` prints their module's docstring.
DOC_HELP = {"train": "zppo_jax.train.run", "export": "zppo_jax.train.export",
            "plot": "zppo_jax.train.plots"}
TRAIN_HELP_TAIL = """
Every field of the run config can be set with --config.KEY=VALUE (e.g. --config.rl.group_size=8,
--config.method=grpo_replay); the fields, with the paper's defaults, are declared in
zppo_jax/train/config.py (base_config) and the methods in its METHODS table."""


def _help(name: str) -> str:
  """The docstring of a command's module, as its `--help`, without importing JAX."""
  import ast  # The module is read, not imported: its imports may be heavy.
  spec = importlib.util.find_spec(DOC_HELP[name])
  with open(spec.origin, encoding="utf-8") as f:
    doc = ast.get_docstring(ast.parse(f.read())) or f"zppo {name}"
  return doc + (TRAIN_HELP_TAIL if name == "train" else "")


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
  if name in DOC_HELP and any(a in ("-h", "--help", "-help", "help") for a in rest):
    print(_help(name))
    return 0
  module, function, _ = COMMANDS[name]
  try:
    return int(getattr(importlib.import_module(module), function)(rest) or 0)
  except UserError as err:
    print(f"zppo {name}: error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
