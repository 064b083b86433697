"""``zppo eval``: evaluate a model on the benchmark suite, or compare two runs.

    zppo eval --model DIR_OR_WORKDIR --benchmarks NAMES|all --data-dir DIR --out DIR
    zppo eval --responses RESPONSES.jsonl --benchmarks ... --data-dir DIR --out DIR
    zppo eval compare RUN_A RUN_B [--resamples 10000] [--out DIR]

``--benchmarks`` takes comma-separated names (``mmlu,ai2d``), family names (``vlm``, ``llm``,
``video``) or ``all``. ``--responses`` scores recorded responses (``{"uid": "<benchmark>/<uid>",
"response": ...}`` per line) instead of generating. A judge decides what the deterministic parsers
cannot: an OpenAI-compatible endpoint (``--judge-url``) or a checkpoint run in process
(``--judge-checkpoint``, greedy, 512 new tokens); without one those samples are wrong.
Re-running the same command continues an interrupted run.
"""
import argparse
import dataclasses
import json
import logging
import pathlib
import sys

from zppo_jax.eval import benchmarks as benchmarks_lib
from zppo_jax.eval import report, runner
from zppo_jax.eval.scoring import GeneratorJudge, Scorer


def _eval_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="zppo eval", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--model", help="HF checkpoint directory or a training workdir")
  source.add_argument("--responses", help="JSONL of recorded responses to score")
  p.add_argument("--benchmarks", default="all", help="names, families or 'all'")
  p.add_argument("--data-dir", required=True, help="holds one sub-directory per benchmark")
  p.add_argument("--out", required=True, help="run directory (resumed when it exists)")
  p.add_argument("--limit", type=int, default=None, help="first N items per benchmark")
  judge = p.add_mutually_exclusive_group()
  judge.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL, e.g. .../v1")
  judge.add_argument("--judge-checkpoint", default=None,
                     help="HF checkpoint of a judge (the teacher) to run in process")
  p.add_argument("--judge-model", default="judge", help="model name sent to the judge endpoint")
  p.add_argument("--judge-api-key", default=None)
  p.add_argument("--judge-max-prompt-tokens", type=int, default=8192)
  p.add_argument("--grading-workers", type=int, default=1)
  p.add_argument("--grading-timeout", type=float, default=15.0, help="seconds per math item")
  for f in dataclasses.fields(runner.DecodingConfig):
    p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                   help=f"decoding (default {f.default})")
  return p


def _judge(args):
  """The judge the flags ask for: an HTTP endpoint, an in-process checkpoint, or none."""
  if args.judge_url is not None:
    from zppo_jax.rewards import OpenAICompatibleJudge
    return OpenAICompatibleJudge(args.judge_url, args.judge_model, api_key=args.judge_api_key)
  if args.judge_checkpoint is not None:
    from zppo_jax.eval.generate import SamplerGenerator
    from zppo_jax.rewards.judge import JUDGE_MAX_TOKENS
    # The paper's judge decoding: greedy, 512 new tokens, no filters or penalties.
    decoding = runner.DecodingConfig(temperature=0.0, top_p=1.0, top_k=0, presence_penalty=0.0,
                                     max_new_tokens=JUDGE_MAX_TOKENS,
                                     max_prompt_tokens=args.judge_max_prompt_tokens)
    return GeneratorJudge(SamplerGenerator.from_path(args.judge_checkpoint, decoding))
  return None


def evaluate(argv: list[str]) -> int:
  """``zppo eval`` (not ``compare``): returns an exit code."""
  args = _eval_parser().parse_args(argv)
  try:
    chosen = benchmarks_lib.select(args.benchmarks)
  except ValueError as e:
    print(f"zppo eval: {e}", file=sys.stderr)
    return 2
  decoding = runner.DecodingConfig(**{f.name: getattr(args, f.name)
                                      for f in dataclasses.fields(runner.DecodingConfig)})
  if args.responses:
    generator = runner.RecordedGenerator(pathlib.Path(args.responses))
    run_info = {"responses": str(pathlib.Path(args.responses).resolve())}
  else:
    from zppo_jax.eval.generate import SamplerGenerator  # Imports JAX; only when generating.
    generator = SamplerGenerator.from_path(args.model, decoding)
    run_info = {"model": str(pathlib.Path(args.model).resolve()),
                "decoding": dataclasses.asdict(decoding)}
  run_info["judge"] = args.judge_url or (str(pathlib.Path(args.judge_checkpoint).resolve())
                                         if args.judge_checkpoint else None)
  from zppo_jax.rewards import GradingPool
  pool = GradingPool(num_workers=args.grading_workers, timeout_s=args.grading_timeout)
  scorer = Scorer(judge=_judge(args), pool=pool)
  try:
    counts = runner.run_eval(chosen, args.data_dir, args.out, generator, scorer, decoding,
                             run_info=run_info, limit=args.limit)
  except (ValueError, KeyError, FileNotFoundError) as e:
    print(f"zppo eval: {e}", file=sys.stderr)
    return 1
  finally:
    pool.close()
  summary = report.write_report(args.out)
  print(json.dumps(counts, indent=2))
  print(report.markdown(summary))
  return 0


def compare(argv: list[str]) -> int:
  """``zppo eval compare RUN_A RUN_B``: per-family differences with bootstrap intervals."""
  p = argparse.ArgumentParser(prog="zppo eval compare")
  p.add_argument("run_a", help="run directory or its report.json (the baseline)")
  p.add_argument("run_b", help="run directory or its report.json")
  p.add_argument("--resamples", type=int, default=10_000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="directory for compare.json and compare.md")
  args = p.parse_args(argv)
  try:
    result = report.compare(args.run_a, args.run_b, args.resamples, args.seed)
  except (FileNotFoundError, ValueError) as e:
    print(f"zppo eval compare: {e}", file=sys.stderr)
    return 1
  text = report.compare_markdown(result, pathlib.Path(args.run_a).name,
                                 pathlib.Path(args.run_b).name)
  if args.out:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    (out / "compare.md").write_text(text)
  print(text)
  return 0


def main(argv: list[str]) -> int:
  """Entry point of the ``eval`` command in `zppo_jax.cli.COMMANDS`."""
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  if argv and argv[0] == "compare":
    return compare(argv[1:])
  return evaluate(argv)
