"""The demo's task (verifiable, levelled) and tokenizer (a normal HF tokenizer directory)."""
import random

import transformers
from hypothesis import given, settings, strategies as st

from zppo_jax.data import demo_task, demo_tokenizer
from zppo_jax.rewards import extract_answer
from zppo_jax.train import augment


@given(st.integers(1, 6), st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_solution_is_correct_and_wrong_solution_is_not(level, seed):
  rng = random.Random(seed)
  a, b = demo_task.make_question(level, rng)
  assert len(str(a)) == len(str(b)) == level
  text = demo_task.solution(a, b)
  assert extract_answer(text) == str(a + b)
  assert text.count("\n") == level + 2  # <think>, one line per column, </think>
  wrong, value = demo_task.wrong_solution(a, b, rng)
  assert value != a + b and extract_answer(wrong) == str(value)


def test_records_are_levelled_seeded_and_parseable():
  rows = demo_task.records([1, 3], 10, seed=5, prefix="x")
  assert rows == demo_task.records([1, 3], 10, seed=5, prefix="x")
  assert [r["level"] for r in rows] == [1, 3] * 5
  assert len({r["id"] for r in rows}) == 10
  for r in rows:
    a, b = demo_task.operands(r["question"])
    assert str(a + b) == r["answer"]


def test_tokenizer_directory_round_trip(tmp_path):
  rows = demo_task.records([1, 2, 3], 60, seed=0)
  corpus = [augment.user_text(r["question"]) + demo_task.solution(*demo_task.operands(
      r["question"])) for r in rows]
  demo_tokenizer.build_tokenizer(corpus, tmp_path, vocab_size=512)
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  for special in demo_tokenizer.SPECIAL_TOKENS:
    ids = tok(special, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == special
  text = demo_task.solution(347, 285)
  ids = tok(text, add_special_tokens=False)["input_ids"]
  assert tok.decode(ids) == text
  assert all(len(tok.convert_ids_to_tokens(i)) == 1 for i in tok("90817", add_special_tokens=False)
             ["input_ids"])  # One digit per token.
  chat = tok.apply_chat_template([{"role": "user", "content": "What is 1 + 2?"}], tokenize=False,
                                 add_generation_prompt=True)
  assert chat == "<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n"
  assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
  stop = demo_tokenizer.stop_token_ids(tok)
  assert tok.convert_ids_to_tokens(list(stop)) == ["<|im_end|>", "<|endoftext|>"]
  prompt = tok(augment.user_text(rows[0]["question"]), add_special_tokens=False)["input_ids"]
  assert len(prompt) < 80  # The closer's words are single tokens after training.
