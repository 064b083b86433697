"""Prompt files under hostile data: every malformed row is rejected with a reason and counted,
the load never aborts, types are strict, embedded image bytes load, and text handling is linear.

Prompt files are read as `zppo train` reads `data.train_path` / `data.eval_path`
(`train_data.load_records`: the generic builder's row rules, then the Grain pipeline);
tests/test_train_data.py runs the same rows through `run.build_trainer`."""
import base64
import io
import json
import pathlib
import tempfile
import time

from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
from PIL import Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zppo_jax.data import demo_task, demo_tokenizer, train_data
from zppo_jax.data.prompts import encode_prompt
from zppo_jax.data.rows import REJECT_REASONS
from zppo_jax.data.vision import VisionProcessorConfig
from zppo_jax.train import augment

VISION = VisionProcessorConfig(min_pixels=32 * 32, max_pixels=64 * 64)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  rows = demo_task.records([1, 2], 40, seed=0)
  corpus = [augment.user_text(r["question"]) for r in rows]
  return demo_tokenizer.build_tokenizer(corpus, tmp_path_factory.mktemp("tok"), vocab_size=300)


def png(side=64) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((side, side, 3), 120, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def load_file(path, tok, build_user_text, *, max_prompt_tokens, vision=None, workdir=None):
  """Every record of a prompt file and the rejects, the way `zppo train` reads it; each rejected
  row is in `<workdir>/rejects.jsonl` (workdir: next to the file by default)."""
  return train_data.load_records(path, workdir or path.parent, tok, build_user_text,
                                 vision=vision, max_prompt_tokens=max_prompt_tokens,
                                 min_image_side=32, stream=io.StringIO())


def row(i, **fields):
  return {"id": f"r{i}", "question": "What is 1 + 1?", "answer": "2", **fields}


# (row or raw line, reason): each of these aborted the load or was silently coerced.
BAD_ROWS = [
    (row(0, images=5), "broken_image"),
    (row(1, images=True), "broken_image"),
    (row(2, images=[None]), "broken_image"),
    (row(3, images=[{"bytes": "not base64!"}]), "broken_image"),
    (row(4, images=[{"bytes": base64.b64encode(b"not an image").decode()}]), "broken_image"),
    (row(5, answer={"x": 1}), "bad_field"),
    (row(6, answer=[]), "bad_field"),
    (row(7, answer=False), "bad_field"),
    (row(8, answer=float("nan")), "bad_field"),
    (row(9, answer=float("inf")), "bad_field"),
    (row(10, choices=5), "bad_field"),
    (row(11, choices=["A", 2]), "bad_field"),
    (row(12, choices="ABCD"), "bad_field"),
    (row(13, question=["What?"]), "bad_field"),
    (row(14, question=7), "bad_field"),
    ({"id": True, "question": "q?", "answer": "1"}, "bad_field"),
    ({"id": [1], "question": "q?", "answer": "1"}, "bad_field"),
    ({"id": "  ", "question": "q?", "answer": "1"}, "no_id"),
    (row(15, answer="   "), "no_answer"),
    (row(16, answer=None), "no_answer"),
    (row(17, images=[base64.b64encode(png()).decode()]), "broken_image"),  # Bare base64: a path.
    (b'{"id": "r18", "question": "caf\xe9?", "answer": "1"}', "non_utf8"),
    (b'{"id": "r19", "question": "What is \xe2\x82', "non_utf8"),  # Cut inside a character.
    (b"[" * 100000, "bad_record"),
    (b"NaN", "bad_record"),
    (b'"a string"', "bad_record"),
]


def write_jsonl(path, items):
  with path.open("wb") as f:
    for item in items:
      f.write(item if isinstance(item, bytes) else json.dumps(item).encode())
      f.write(b"\n")


def test_every_bad_row_is_rejected_with_its_reason(tok, tmp_path):
  good = [row(100 + i) for i in range(3)]
  write_jsonl(tmp_path / "d.jsonl", [r for r, _ in BAD_ROWS] + good)
  out = load_file(tmp_path / "d.jsonl", tok, augment.user_text, max_prompt_tokens=200,
                     vision=VISION)
  assert [r["id"] for r in out.records] == [r["id"] for r in good]
  rejects = [json.loads(l) for l in (tmp_path / "rejects.jsonl").read_text().splitlines()]
  assert [(r["line"], r["reason"]) for r in rejects] == [
      (i, reason) for i, (_, reason) in enumerate(BAD_ROWS)]
  assert all(r["detail"] and r["reason"] in REJECT_REASONS for r in rejects)
  assert sum(out.rejects.values()) == len(BAD_ROWS)


def test_strict_types_of_the_kept_rows(tok, tmp_path):
  write_jsonl(tmp_path / "d.jsonl", [
      {"id": 7, "question": "q?", "answer": 3}, {"id": "f", "question": "q?", "answer": 0.5},
      row(1, choices=["1", "2"]), row(2, choices={"A": "1", "B": "2"}), row(3, choices=[])])
  out = load_file(tmp_path / "d.jsonl", tok, augment.user_text, max_prompt_tokens=200)
  assert [(r["id"], r["answer"], r.get("choices")) for r in out.records] == [
      ("7", "3", None), ("f", "0.5", None), ("r1", "2", ["1", "2"]),
      ("r2", "2", {"A": "1", "B": "2"}), ("r3", "2", None)]
  json.dumps([augment.strip_record(r) for r in out.records])


def test_embedded_image_bytes_in_every_form(tok, tmp_path):
  data = png()
  (tmp_path / "img.png").write_bytes(data)
  b64 = base64.b64encode(data).decode()
  write_jsonl(tmp_path / "d.jsonl", [
      row(0, images=[{"bytes": b64}]), row(1, images=["data:image/png;base64," + b64]),
      row(2, images=["img.png"]), row(3, images={"bytes": b64, "path": None}),
      row(4, images=[{"path": "img.png"}])])
  pq.write_table(pa.Table.from_pylist([row(5, images=[data, data]), row(6, images=[data])]),
                 tmp_path / "binary.parquet")  # list<binary>
  pq.write_table(pa.Table.from_pylist([row(7, images=[{"bytes": data, "path": None}])]),
                 tmp_path / "struct.parquet")  # list<struct<bytes, path>>, the HF Image feature
  for name, count in (("d.jsonl", 5), ("binary.parquet", 2), ("struct.parquet", 1)):
    run = tmp_path / name.replace(".", "_")
    out = load_file(tmp_path / name, tok, augment.user_text, max_prompt_tokens=4096,
                       vision=VISION, workdir=run)
    assert len(out.records) == count and not out.rejects, (name, out.rejects,
                                                            (run / "rejects.jsonl").read_text())
    for record in out.records:
      json.dumps(record["images"])  # The replay buffer's state is JSON.
      again = encode_prompt(tok, augment.user_text(record["question"]), record["images"], VISION)
      assert list(again) == list(record["prompt"]) and len(again.image_grid_thw) >= 1


def test_rows_with_images_are_refused_for_a_text_only_model(tok, tmp_path):
  write_jsonl(tmp_path / "d.jsonl", [row(0, images=[{"bytes": base64.b64encode(png()).decode()}]),
                                     row(1)])
  out = load_file(tmp_path / "d.jsonl", tok, augment.user_text, max_prompt_tokens=200)
  assert [r["id"] for r in out.records] == ["r1"] and dict(out.rejects) == {"needs_vision": 1}


@pytest.mark.parametrize("question", [
    "a" * 5_000_000,                                   # no sentence end at all
    "solve " * 800_000 + "step by step",               # the lazy scan of the old pattern
    "What is 1 + 1? " + " " * 5_000_000 + "\n",        # trailing blanks before a newline
])
def test_a_5mb_row_is_handled_in_linear_time(tok, tmp_path, question, capsys):
  write_jsonl(tmp_path / "d.jsonl", [row(0, question=question), row(1)])
  start = time.perf_counter()
  out = load_file(tmp_path / "d.jsonl", tok, augment.user_text, max_prompt_tokens=4096)
  with capsys.disabled():  # Reported, not asserted (no timing assertions in tests).
    print(f"\n5 MB row: {time.perf_counter() - start:.3f} s")
  assert [r["id"] for r in out.records] == ["r1"] and dict(out.rejects) == {"too_long": 1}


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3), max_leaves=6)
_FIELDS = st.sampled_from(["id", "question", "answer", "choices", "images", "extra"])


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.dictionaries(_FIELDS, _VALUES, max_size=6) | st.binary(max_size=40),
                     max_size=6))
def test_fuzz_the_loader_never_aborts_and_accounts_for_every_row(tok, tmp_path, rows):
  items = [r if isinstance(r, bytes) else json.dumps(r, default=lambda b: b.hex()).encode()
           for r in rows]
  items = [i.replace(b"\n", b" ").replace(b"\r", b" ") for i in items]
  path = tmp_path / "fuzz.jsonl"
  path.write_bytes(b"".join(i + b"\n" for i in items))
  with tempfile.TemporaryDirectory() as run:   # a fresh build for every example
    out = load_file(path, tok, augment.user_text, max_prompt_tokens=200, vision=VISION,
                       workdir=pathlib.Path(run))
  nonblank = sum(1 for i in items if i.strip())
  assert len(out.records) + sum(out.rejects.values()) == nonblank
  assert set(out.rejects) <= set(REJECT_REASONS)
  for record in out.records:
    assert isinstance(record["id"], str) and isinstance(record["answer"], str)
    assert isinstance(record.get("choices", []), (list, dict))
