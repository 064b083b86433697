"""`zppo eval` with a real (tiny, random) model: the sampler-backed generator, end to end, resumed."""
import json

import numpy as np
import pytest
from flax import nnx

from test_eval_benchmarks import write_suite
from zppo_jax import cli
from zppo_jax.data import demo_tokenizer
from zppo_jax.eval import benchmarks, runner
from zppo_jax.eval.generate import SamplerGenerator, resolve_checkpoint
from zppo_jax.eval.items import EvalPrompt, Media
from zppo_jax.eval.prompts import build_prompt
from zppo_jax.models import qwen3_5
from zppo_jax.models.qwen3_5 import config as config_lib
from zppo_jax.zppo import templates

DECODING = runner.DecodingConfig(temperature=0.0, max_new_tokens=6, max_prompt_tokens=250,
                                 batch_size=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A workdir holding an exported tiny checkpoint with the demo tokenizer."""
  workdir = tmp_path_factory.mktemp("workdir")
  path = workdir / "hf" / "step_1"
  corpus = [templates.RL_CLOSER, "Find $1+1$.", "What is H2O?\nA. water\nB. salt", "0123456789"]
  tokenizer = demo_tokenizer.build_tokenizer(corpus, path, vocab_size=320)
  model = qwen3_5.Qwen3_5ForCausalLM(config_lib.tiny(vocab_size=320), rngs=nnx.Rngs(0))
  qwen3_5.save_pretrained(model, path)
  return workdir, path, tokenizer


@pytest.fixture(scope="module")
def generator(checkpoint):
  return SamplerGenerator.from_path(checkpoint[0], DECODING)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("eval_data")
  write_suite(d)
  return d


def test_workdir_resolves_to_its_export(checkpoint):
  workdir, path, _ = checkpoint
  assert resolve_checkpoint(workdir) == path == resolve_checkpoint(path)


def test_greedy_responses_equal_the_sampler(generator, checkpoint, data_dir):
  _, _, tokenizer = checkpoint
  items = runner.load_items(benchmarks.BENCHMARKS["aime25"], data_dir).items
  prompts = [build_prompt("aime25", it) for it in items]
  responses = generator.generate(prompts)
  for prompt, response in zip(prompts, responses):
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}],
                                         tokenize=False, add_generation_prompt=True)
    assert text.endswith(templates.RL_CLOSER + "<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = generator.sampler.generate([ids], generator.params, seed=0)
    tokens = [t for t in out.tokens[0][0] if t not in generator.stop_ids]
    assert response == tokenizer.decode(tokens, skip_special_tokens=False)
    assert 0 < len(out.tokens[0][0]) <= DECODING.max_new_tokens


def test_multimodal_prompt_is_refused_by_name(generator):
  prompt = EvalPrompt("ai2d/7", ({"role": "user", "content": "x"},), images=(Media(data=b"1"),))
  with pytest.raises(ValueError, match="ai2d/7: image/video prompts"):
    generator.generate([prompt])


def test_eval_with_a_model_resumes(generator, data_dir, tmp_path):
  chosen = [benchmarks.BENCHMARKS["aime25"], benchmarks.BENCHMARKS["gpqa_diamond"]]
  scorer_pool = __import__("zppo_jax.rewards", fromlist=["GradingPool"]).GradingPool(1, 30.0)
  try:
    from zppo_jax.eval.scoring import Scorer
    scorer = Scorer(pool=scorer_pool)
    calls = generator.calls
    runner.run_eval(chosen, data_dir, tmp_path, generator, scorer, DECODING)
    assert generator.calls - calls == 2  # One batch of two per benchmark.
    first = {n: runner.read_verdicts(tmp_path / f"samples/{n}.jsonl") for n in ("aime25",
                                                                                  "gpqa_diamond")}
    assert [len(v) for v in first.values()] == [2, 2]
    assert all(v.path in ("parser:math", "parser:choice", "no_judge")
               for vs in first.values() for v in vs.values())
    runner.run_eval(chosen, data_dir, tmp_path, generator, scorer, DECODING)
    assert generator.calls - calls == 2  # Nothing left to generate.
  finally:
    scorer_pool.close()


def test_cli_with_model(checkpoint, data_dir, tmp_path):
  workdir, _, _ = checkpoint
  argv = ["eval", "--model", str(workdir), "--benchmarks", "aime25", "--data-dir", str(data_dir),
          "--out", str(tmp_path / "run"), "--temperature", "0", "--max-new-tokens", "4",
          "--max-prompt-tokens", "250"]
  assert cli.main(argv) == 0
  run = json.loads((tmp_path / "run/run.json").read_text())
  assert run["decoding"]["temperature"] == 0.0 and run["decoding"]["top_k"] == 20
  report = json.loads((tmp_path / "run/report.json").read_text())
  assert report["benchmarks"]["aime25"]["scored"] == 2
  assert np.isfinite(report["families"]["llm"]["accuracy"])
