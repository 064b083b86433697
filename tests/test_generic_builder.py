"""Generic builder: field maps over JSONL / Parquet / HF `datasets` dirs, bad rows counted."""
import io
import json

import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zppo_jax import cli
from zppo_jax.data import records, tfds_source
from zppo_jax.data import generic_builder as gb


def png(width=120, height=120):
  buf = io.BytesIO()
  PIL.Image.new("RGB", (width, height), (200, 10, 10)).save(buf, "PNG")
  return buf.getvalue()


def read_out(out, name):
  return list(records.iter_records(records.shard_paths(tfds_source.dataset_dir(out, name), name)))


def test_jsonl_with_field_map_and_bad_rows(tmp_path):
  (tmp_path / "img").mkdir()
  (tmp_path / "img" / "a.png").write_bytes(png())
  (tmp_path / "img" / "small.png").write_bytes(png(120, 40))
  rows = [
      {"uid": 1, "problem": "<image>\nWhat colour?", "sol": {"final": "red"}, "pic": "img/a.png"},
      {"uid": 2, "problem": "What is 2 + 2?", "sol": {"final": 4}},         # numeric answer, no image
      {"uid": 3, "problem": "Q?", "sol": {"final": "x" * 513}},             # answer_too_long
      {"uid": 4, "problem": "Q?", "sol": {"final": "1"}, "pic": "img/small.png"},  # small_image
      {"uid": 5, "problem": "Q?", "sol": {"final": "1"}, "pic": "img/missing.png"},  # broken_image
      {"uid": 6, "problem": ["not", "text"], "sol": {"final": "1"}},         # bad_field
      {"uid": 7, "sol": {"final": "1"}},                                     # empty_question
      {"uid": 8, "problem": "Q?"},                                           # no_answer
      {"problem": "Q?", "sol": {"final": "1"}},                              # no_id
      {"uid": 1, "problem": "Again?", "sol": {"final": "1"}},                # duplicate_id
  ]
  lines = [json.dumps(r).encode() for r in rows] + [b"{broken json", b"[1, 2]",
                                                    b'{"uid": 9, "problem": "\xff\xfe"}']
  (tmp_path / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  fields = gb.parse_field_map("id=uid,question=problem,answer=sol.final,images=pic")
  report = gb.build(tmp_path / "data.jsonl", tmp_path / "out", name="mine", fields=fields,
                    config=gb.BuildConfig(num_shards=2))
  assert report["rows"] == 13 and report["written"] == 2
  assert report["rejects"] == {"answer_too_long": 1, "bad_field": 1, "bad_record": 2,
                               "broken_image": 1, "duplicate_id": 1, "empty_question": 1,
                               "no_answer": 1, "no_id": 1, "non_utf8": 1, "small_image": 1}
  recs = {r["id"]: r for r in read_out(tmp_path / "out", "mine")}
  assert recs["1"]["question"] == "What colour?" and recs["1"]["images"] == [png()]
  assert recs["2"]["answer"] == "4" and recs["2"]["images"] == [] and recs["2"]["source"] == "mine"
  assert json.loads((tmp_path / "out" / "report.json").read_text())["written"] == 2


def test_parquet_and_hf_datasets_dir(tmp_path):
  rows = [{"id": f"p{i}", "question": f"Q{i}?", "answer": str(i),
           "images": [{"bytes": png(), "path": None}]} for i in range(3)]
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
  gb.build(tmp_path / "d.parquet", tmp_path / "o1", name="pq", config=gb.BuildConfig(num_shards=1))
  assert sorted(r["id"] for r in read_out(tmp_path / "o1", "pq")) == ["p0", "p1", "p2"]
  # `datasets.Dataset.save_to_disk` layout: Arrow IPC stream files plus JSON metadata.
  hf = tmp_path / "hf"
  hf.mkdir()
  table = pa.Table.from_pylist(rows)
  with pa.ipc.new_stream(str(hf / "data-00000-of-00001.arrow"), table.schema) as w:
    w.write_table(table)
  (hf / "state.json").write_text("{}")
  report = gb.build(hf, tmp_path / "o2", name="hf", config=gb.BuildConfig(num_shards=1))
  assert report["written"] == 3
  assert read_out(tmp_path / "o2", "hf")[0]["images"] == [png()]


def test_prompt_budget_needs_a_tokenizer_and_is_reported(tmp_path):
  (tmp_path / "d.jsonl").write_text(json.dumps({"id": "a", "question": "Q?", "answer": "1"}) + "\n")
  report = gb.build(tmp_path / "d.jsonl", tmp_path / "o", name="x",
                    config=gb.BuildConfig(num_shards=1))
  assert report["prompt_budget"] == "skipped (no tokenizer)"


def test_a_subset_column_is_read_and_defaults_to_the_name(tmp_path):
  rows = [{"id": "a", "question": "Q?", "answer": "1", "subset": "level3"},
          {"id": "b", "question": "Q?", "answer": "2"}]
  (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  gb.build(tmp_path / "d.jsonl", tmp_path / "o", name="x", config=gb.BuildConfig(num_shards=1))
  assert {r["id"]: r["subset"] for r in read_out(tmp_path / "o", "x")} == {"a": "level3", "b": "x"}


def test_field_map_errors_and_cli(tmp_path):
  with pytest.raises(ValueError, match="bad --field-map"):
    gb.parse_field_map("question")
  (tmp_path / "d.jsonl").write_text(json.dumps({"k": "a", "question": "Q?", "answer": "1"}) + "\n")
  rc = cli.main(["data", "build", "--input", str(tmp_path / "d.jsonl"), "--out",
                 str(tmp_path / "o"), "--name", "c", "--field-map", "id=k", "--num-shards", "1"])
  assert rc == 0 and [r["id"] for r in read_out(tmp_path / "o", "c")] == ["a"]
  assert cli.main(["data"]) == 2


def test_image_sources_and_strict_answers(tmp_path):
  import base64
  data = b"\x89PNG not decoded here"
  (tmp_path / "a.png").write_bytes(data)
  b64 = base64.b64encode(data).decode()
  assert gb.image_bytes([{"bytes": b64}, "data:image/png;base64," + b64, "a.png",
                         {"bytes": data, "path": None}, {"path": "a.png"}], tmp_path) == [data] * 5
  for bad in (5, True, [None], [{"bytes": "not base64!"}]):
    with pytest.raises(gb.RowError, match="broken_image"):
      gb.image_bytes(bad, tmp_path)
  assert gb.text_field(0.5, "answer", missing="no_answer") == "0.5"
  for bad in (float("nan"), float("inf"), {"x": 1}, [], False):
    with pytest.raises(gb.RowError, match="bad_field"):
      gb.text_field(bad, "answer", missing="no_answer")
