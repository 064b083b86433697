"""The step loop's data: builder output or a prompt file, through one pipeline to prompt records."""
import base64
import io
import json

import numpy as np
import PIL.Image
import pytest

from zppo_jax.data import demo_tokenizer, prompts, record_images, records, tfds_source, vision
from zppo_jax.data import generic_builder as gb
from zppo_jax.data import train_data
from zppo_jax.train import augment

VISION = vision.VisionProcessorConfig(min_pixels=4 * 32 * 32, max_pixels=16 * 32 * 32)
N = 10


def png(i):
  buf = io.BytesIO()
  PIL.Image.new("RGB", (100 + 9 * i, 120), (i * 20, 60, 90)).save(buf, "PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  corpus = [f"What is {i} + {i}?" for i in range(N)] + [augment.user_text("x")]
  tok = demo_tokenizer.build_tokenizer(corpus, tmp_path_factory.mktemp("tok"), vocab_size=300)
  tok.add_tokens(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"], special_tokens=True)
  return tok


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("built")
  recs = (records.make_record(id=f"q{i}", source="t", subset="s", question=f"What is {i} + {i}?",
                              answer=str(2 * i), images=[png(i)] if i % 2 else [])
          for i in range(N))
  directory = tfds_source.dataset_dir(root, "t")
  tfds_source.write_metadata(directory, "t", {"train": records.write_shards(
      recs, directory, "t", num_shards=3)}, "test")
  return root


def open_data(path, tok, **kw):
  return train_data.TrainData(path, tok, augment.user_text, vision=VISION,
                              **{"batch_size": 3, "seed": 0, **kw})


def test_records_carry_the_pipeline_prompt_and_named_images(built, tok):
  batch = next(open_data(built, tok))
  assert len(batch) == 3
  for r in batch:
    assert set(r) == {"id", "source", "subset", "question", "answer", "images", "index", "prompt"}
    stored = records.deserialize(tfds_source.grain_source(built)[r["index"]])
    assert stored["id"] == r["id"]
    assert [record_images.read(u) for u in r["images"]] == stored["images"]
    # The prompt of a replayed copy (images read back by name) is the pipeline's prompt.
    replayed = augment.record_prompt(tok, augment.strip_record(r), VISION)
    assert list(replayed) == list(r["prompt"])
    if r["images"]:
      assert isinstance(r["prompt"], prompts.ImagePrompt)
      np.testing.assert_array_equal(replayed.pixel_values, r["prompt"].pixel_values)
    json.dumps(augment.strip_record(r))       # what the replay buffer checkpoints


def test_state_resumes_exactly(built, tok):
  data = open_data(built, tok)
  head = [[r["id"] for r in next(data)] for _ in range(2)]
  state = json.loads(json.dumps(data.state()))
  rest = [[r["id"] for r in next(data)] for _ in range(5)]
  again = open_data(built, tok)
  again.restore(state)
  assert [[r["id"] for r in next(again)] for _ in range(5)] == rest
  assert len({i for b in head + rest for i in b[:3]}) == N     # the epochs cover every record


def test_prompt_file_is_built_into_the_same_records(tmp_path, tok):
  (tmp_path / "img.png").write_bytes(png(3))
  rows = [{"id": "a", "question": "What is 1 + 1?", "answer": 2, "images": ["img.png"],
           "choices": ["1", "2"]},
          {"id": "b", "question": "What is 2 + 2?", "answer": "4"},
          {"id": "c", "question": "", "answer": "0"}]
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  root = train_data.prepare(path, tmp_path / "run", min_image_side=32)
  assert json.loads((root / "report.json").read_text())["rejects"] == {"empty_question": 1}
  batch = next(open_data(root, tok, batch_size=2, shuffle=False))
  a = next(r for r in batch if r["id"] == "a")
  assert a["answer"] == "2" and a["choices"] == ["1", "2"]
  assert record_images.read(a["images"][0]) == png(3)
  stamp = (root / "input.json").stat().st_mtime_ns
  assert train_data.prepare(path, tmp_path / "run", min_image_side=32) == root
  assert (root / "input.json").stat().st_mtime_ns == stamp          # unchanged: not rebuilt


def test_text_only_student_skips_image_records(built, tok):
  data = train_data.TrainData(built, tok, augment.user_text, vision=None, batch_size=2, seed=0)
  ids = [r["id"] for _ in range(3) for r in next(data)]
  assert all(int(i[1:]) % 2 == 0 for i in ids)
  assert data.rejects["text_only_model"] >= 1


def test_bad_train_path_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.txt"):
    train_data.prepare(tmp_path / "nothing.txt", tmp_path, min_image_side=32)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="empty"):
    train_data.prepare(tmp_path / "empty", tmp_path, min_image_side=32)


def test_missing_shard_image_is_named(built):
  bad = record_images.uri(built / "t" / "1.0.0", 10 ** 6, 0)
  with pytest.raises(vision.VisionInputError, match="index=1000000"):
    vision.load_image(bad, "x")


def test_zppo_train_lists_every_bad_row_of_a_prompt_file(tmp_path):
  """`run.build_trainer` (what `zppo train` runs) on a prompt file with every hostile row of
  tests/test_prompts_hostile.py, a row with an image for the text-only tiny demo student, a 5 MB
  question and an eval file with bad rows: each lands in WORKDIR/rejects.jsonl (or
  eval_rejects.jsonl) with its reason, is counted in the trainer's rejects and printed once.
  The 5 MB row is rejected on this path in ~0.05 s (the load of test_prompts_hostile's
  `test_a_5mb_row_is_handled_in_linear_time`; reported, not asserted)."""
  import os
  from test_prompts_hostile import BAD_ROWS, png as hostile_png, row, write_jsonl
  from zppo_jax.train import demo, run
  from zppo_jax.train.config import load_config

  config = load_config("configs/demo.py:tiny", [
      f"--config.demo.cache_dir={tmp_path / 'cache'}", "--config.demo.num_train=4",
      "--config.demo.num_eval=2", "--config.demo.student_sft_steps=0",
      "--config.demo.teacher_sft_steps=0", "--config.method=grpo"])
  demo.prepare(config, stream=open(os.devnull, "w"))
  good = [row(100 + i) for i in range(6)]
  extra = [(row(20, images=[{"bytes": base64.b64encode(hostile_png()).decode()}]), "needs_vision"),
           (row(21, question="a" * 5_000_000), "too_long")]
  bad = BAD_ROWS + extra
  write_jsonl(tmp_path / "train.jsonl", [r for r, _ in bad] + good)
  write_jsonl(tmp_path / "eval.jsonl", [row(0, answer={"x": 1}), row(1)])
  config.data.train_path = str(tmp_path / "train.jsonl")
  config.data.eval_path = str(tmp_path / "eval.jsonl")
  stream = io.StringIO()
  trainer, close = run.build_trainer(config, tmp_path / "run", stream=stream)
  close()
  listed = [json.loads(l) for l in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
  assert [(r["line"], r["reason"]) for r in listed] == [
      (i, reason) for i, (_, reason) in enumerate(bad)]
  assert all(r["detail"] for r in listed)
  assert sum(trainer.rejects.values()) == len(bad)
  assert stream.getvalue().count(f"skipped {len(bad)} of {len(bad) + len(good)} rows") == 1
  assert [r["id"] for r in trainer.eval_records] == ["r1"]
  (eval_reject,) = [json.loads(l) for l in
                    (tmp_path / "run" / "eval_rejects.jsonl").read_text().splitlines()]
  assert (eval_reject["id"], eval_reject["reason"]) == ("r0", "bad_field")
  batch = next(trainer.prompts)
  assert {r["id"] for r in batch} <= {r["id"] for r in good}
