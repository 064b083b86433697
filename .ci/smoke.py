"""The install smoke test: one ZPPO prompt through the package in a venv without extras.

Run by `.ci/run` in a venv made with `pip install -e .` only (no torch, no test extra), so an
import that only a test dependency used to bring in fails here. The path: the demo's byte-level
tokenizer (tokenizers, transformers), the spec's RL prompt under its chat template (jinja2), and
a few greedy tokens from a tiny random Qwen3.5 through the rollout sampler (jax, flax).
"""
import sys
import tempfile

from flax import nnx

from zppo_jax.data import demo_task, demo_tokenizer
from zppo_jax.data.prompts import encode_prompt
from zppo_jax.models import qwen3_5
from zppo_jax.sampling import Sampler, SamplingParams
from zppo_jax.zppo import templates


def main() -> int:
  question = "What is 12 + 30?"
  with tempfile.TemporaryDirectory() as out:
    corpus = [templates.rl_prompt(question), *demo_task.__doc__.split()]
    tokenizer = demo_tokenizer.build_tokenizer(corpus, out, vocab_size=320)
  ids = encode_prompt(tokenizer, templates.rl_prompt(question))
  text = tokenizer.decode(ids)
  if text.count("<|im_start|>") != 2:
    raise AssertionError(f"the chat template did not open the assistant turn: {text!r}")
  model = qwen3_5.Qwen3_5ForCausalLM(qwen3_5.tiny(vocab_size=len(tokenizer)), rngs=nnx.Rngs(0))
  out = Sampler(model, max_total_len=256).generate(
      [ids], SamplingParams(temperature=0.0, max_new_tokens=4), seed=0)
  tokens = out.tokens[0][0]
  if not 1 <= len(tokens) <= 4:
    raise AssertionError(f"expected 1 to 4 generated tokens, got {tokens}")
  print(f"smoke: {len(ids)} prompt tokens -> {tokenizer.decode(tokens)!r}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
