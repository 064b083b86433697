"""Prompt files as `zppo train` reads them: rejects counted by reason and listed, Parquet input."""
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zppo_jax.data import demo_task, demo_tokenizer, train_data
from zppo_jax.train import augment


def load_file(path, tok, build_user_text, *, max_prompt_tokens):
  return train_data.load_records(path, path.parent, tok, build_user_text, vision=None,
                                 max_prompt_tokens=max_prompt_tokens, min_image_side=32,
                                 stream=io.StringIO())


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  rows = demo_task.records([1, 2], 40, seed=0)
  corpus = [augment.user_text(r["question"]) for r in rows]
  return demo_tokenizer.build_tokenizer(corpus, tmp_path_factory.mktemp("tok"), vocab_size=300)


def write_broken(path):
  good = demo_task.records([1, 2], 10, seed=1)
  lines = [json.dumps(r) for r in good]
  lines += [
      "{this is not json",                                          # bad_record
      json.dumps([1, 2]),                                           # bad_record
      json.dumps({"question": "What is 1 + 1?", "answer": "2"}),    # no_id
      json.dumps(dict(good[0])),                                    # duplicate_id
      json.dumps({"id": "e1", "question": "  ", "answer": "2"}),    # empty_question
      json.dumps({"id": "e2", "question": "What is 1 + 1?"}),       # no_answer
      json.dumps({"id": "e3", "question": "What is 1 + 1?", "answer": ""}),  # no_answer
      json.dumps({"id": "e4", "question": "What is 1 + 1? " * 200, "answer": "2"}),  # too_long
      json.dumps({"id": "e5", "question": "What is 1 + 1?", "answer": "2",
                  "images": ["/nonexistent.png"]}),                 # broken_image
  ]
  path.write_text("\n".join(lines) + "\n\n")
  return good


def test_broken_rows_are_skipped_and_counted(tok, tmp_path):
  good = write_broken(tmp_path / "data.jsonl")
  out = load_file(tmp_path / "data.jsonl", tok, augment.user_text, max_prompt_tokens=200)
  assert [r["id"] for r in out.records] == [r["id"] for r in good]
  assert dict(out.rejects) == {"bad_record": 2, "no_id": 1, "duplicate_id": 1,
                               "empty_question": 1, "no_answer": 2, "too_long": 1,
                               "broken_image": 1}
  rejects = [json.loads(l) for l in (tmp_path / "rejects.jsonl").read_text().splitlines()]
  assert len(rejects) == 9 and {r["reason"] for r in rejects} == set(out.rejects)
  assert all(r["detail"] for r in rejects)
  assert "/nonexistent.png" in rejects[-1].pop("detail")
  assert rejects[-1].pop("file") == str(tmp_path / "data.jsonl")
  assert rejects[-1] == {"line": 18, "reason": "broken_image", "id": "e5"}
  prompt = tok.decode(out.records[0]["prompt"], skip_special_tokens=False)
  assert prompt.startswith("<|im_start|>user\nWhat is") and "\\boxed{}" in prompt
  assert prompt.endswith("<|im_start|>assistant\n")


def test_parquet_input(tok, tmp_path):
  rows = demo_task.records([1], 6, seed=2)
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
  out = load_file(tmp_path / "d.parquet", tok, augment.user_text, max_prompt_tokens=200)
  assert [r["id"] for r in out.records] == [r["id"] for r in rows] and not out.rejects


def test_no_usable_rows_is_a_clear_error(tok, tmp_path):
  from zppo_jax.train.config import load_config
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps({"id": "a", "question": " ", "answer": "1"}) + "\n")
  config = load_config("configs/demo.py:tiny", [f"--config.data.train_path={path}"])
  with pytest.raises(ValueError, match="no usable rows"):
    train_data.open_train_data(config, tok, augment.user_text, vision=None,
                               workdir=tmp_path / "run", stream=io.StringIO())
  assert json.loads((tmp_path / "run" / "rejects.jsonl").read_text())["reason"] == "empty_question"
