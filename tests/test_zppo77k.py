"""ZPPO-77K builder: every §7 rule on fixtures mirroring the two sources' published layouts."""
import io
import json

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zppo_jax.data import demo_tokenizer, records, tfds_source, zppo77k
from zppo_jax.data import generic_builder as gb

VISION_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]


def png(width=120, height=120, mode="RGB", color=(10, 200, 30)):
  buf = io.BytesIO()
  PIL.Image.new(mode, (width, height), color).save(buf, "PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  corpus = ["What is the area of the circle? Answer: 78.5", gb.default_user_text("x")]
  tok = demo_tokenizer.build_tokenizer(corpus, tmp_path_factory.mktemp("tok"), vocab_size=300)
  tok.add_tokens(VISION_TOKENS, special_tokens=True)
  return tok


def vero_row(subset, index, *, ability="stem", question=None, answer="78.5", images=None):
  """One row in Vero-600k's verl layout."""
  question = f"<image>\nQuestion {subset} {index}: what is the area?" if question is None else question
  return {
      "prompt": [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": question}],
      "images": [{"bytes": png(), "path": None}] if images is None else images,
      "data_source": subset, "ability": ability,
      "reward_model": {"ground_truth": answer, "style": "rule"},
      "extra_info": {"answer": answer, "domain": ability, "index": index, "question": question},
  }


def mmfr_row(source, rid, pass_rate=0.0, *, answer="7", image=None):
  """One row in MMFineReason-SFT-586K's layout."""
  return {"id": rid, "source": source, "question": f"<image>\nSolve problem {rid}.",
          "answer": answer, "image": {"bytes": png() if image is None else image, "path": None},
          "pass_rate": pass_rate, "qwen3vl_235b_thinking_response": "<think>...</think> 7"}


def vero_rows():
  rows = [vero_row("mmk12", i) for i in range(5)]                          # tier 1: 3 kept
  rows += [vero_row("vizwiz", i, ability="knowledge_recognition") for i in range(4)]  # tier 2: 2
  rows += [vero_row("wemath20_standard", 0)]
  rows += [
      vero_row("chartqa", 1, ability="chart_ocr", answer="x" * 512),        # kept (boundary)
      vero_row("chartqa", 2, ability="chart_ocr", answer="x" * 513),        # answer_too_long
      vero_row("chartqa", 3, ability="chart_ocr", images=[{"bytes": png(100, 300)}]),  # kept
      vero_row("chartqa", 4, ability="chart_ocr", images=[{"bytes": png(99, 300)}]),   # small
      vero_row("chartqa", 5, ability="chart_ocr", images=[{"bytes": b"\x89PNG garbage"}]),
      vero_row("chartqa", 6, ability="chart_ocr", images=[{"bytes": png()[:60]}]),   # truncated
      vero_row("chartqa", 7, ability="chart_ocr", question="<image>\n"),    # empty_question
      vero_row("chartqa", 1, ability="chart_ocr"),                          # duplicate_id
      vero_row("chartqa", 8, ability="chart_ocr", question="<image>\n" + "long " * 2000),
  ]
  return rows


def mmfr_rows():
  rows = [mmfr_row("MMK12", f"m{i}", 0.1) for i in range(2)]                # vero_priority
  rows += [mmfr_row("WeMath2-Standard", "w0", 0.1)]                         # vero_priority (alias)
  rows += [mmfr_row("BMMR", "b0", 0.8), mmfr_row("BMMR", "b1", 0.51),      # pass_rate_high
           mmfr_row("BMMR", "b2", None),                                    # no_pass_rate
           mmfr_row("BMMR", "b3", 0.5)]                                     # kept (boundary)
  rows += [mmfr_row("BMMR", f"b{i}", 0.0) for i in range(4, 6)]             # 3 survivors = cap
  rows += [mmfr_row("Euclid30K", "e0", 0.2, answer=12)]                     # numeric answer: ok
  return rows


def write_sources(root, vero=None, mmfr=None, shuffle_seed=None):
  vero, mmfr = vero or vero_rows(), mmfr or mmfr_rows()
  if shuffle_seed is not None:
    rng = np.random.default_rng(shuffle_seed)
    vero = [vero[i] for i in rng.permutation(len(vero))]
  (root / "vero" / "data").mkdir(parents=True)
  (root / "mmfr" / "data").mkdir(parents=True)
  pq.write_table(pa.Table.from_pylist(vero[:8]), root / "vero/data/train-00000-of-00002.parquet")
  pq.write_table(pa.Table.from_pylist(vero[8:]), root / "vero/data/train-00001-of-00002.parquet")
  pq.write_table(pa.Table.from_pylist([{**r, "answer": str(r["answer"])} for r in mmfr]),
                 root / "mmfr/data/sft-00000.parquet")
  # A second file whose question column is binary, with one row that is not UTF-8.
  bad = [{"id": "u0", "source": "BMMR", "question": b"\xff\xfe bad", "answer": "1",
          "image": {"bytes": png(), "path": None}, "pass_rate": 0.0}]
  pq.write_table(pa.Table.from_pylist(bad), root / "mmfr/data/sft-00001.parquet")
  return root / "vero", root / "mmfr"


SMALL_CAPS = zppo77k.Zppo77kConfig(tier_caps={1: 3, 2: 2},
                                   filters=gb.BuildConfig(num_shards=3))


@pytest.fixture(scope="module")
def built(tmp_path_factory, tok):
  root = tmp_path_factory.mktemp("zppo77k")
  vero, mmfr = write_sources(root)
  report = zppo77k.build(vero, mmfr, root / "out", tokenizer=tok, config=SMALL_CAPS)
  shards = records.shard_paths(tfds_source.find_dataset_dir(root / "out"), "zppo77k")
  return report, list(records.iter_records(shards)), root


def test_paper_constants():
  assert zppo77k.TIER_CAPS == {1: 2800, 2: 1400} and zppo77k.MAX_PASS_RATE == 0.5
  cfg = gb.BuildConfig()
  assert (cfg.max_answer_chars, cfg.min_image_side, cfg.max_prompt_tokens) == (512, 100, 4096)


def test_report_accounts_for_every_row(built):
  report, recs, _ = built
  assert report["sources"]["vero"]["rows"] == len(vero_rows())
  assert report["sources"]["mmfinereason"]["rows"] == len(mmfr_rows()) + 1
  for s in report["sources"].values():
    assert s["rows"] == s["kept"] + sum(s["dropped"].values())
  assert report["kept"] == len(recs)
  assert sum(v["kept"] for v in report["subsets"].values()) == len(recs)
  assert sum(report["kept_per_tier"].values()) == len(recs)
  assert (built[2] / "out" / "report.md").read_text().startswith("# ZPPO-77K build report")


def test_drop_reasons(built):
  report = built[0]
  assert report["sources"]["vero"]["dropped"] == {
      "answer_too_long": 1, "broken_image": 2, "duplicate_id": 1, "empty_question": 1,
      "over_cap": 4, "small_image": 1, "too_long": 1}
  assert report["sources"]["mmfinereason"]["dropped"] == {
      "no_pass_rate": 1, "non_utf8": 1, "pass_rate_high": 2, "vero_priority": 3}


def test_tier_caps_per_subset(built):
  subsets = built[0]["subsets"]
  assert subsets["vero/mmk12"] == {"source": "vero", "subset": "mmk12", "tier": 1, "rows": 5,
                                   "kept": 3, "dropped": {"over_cap": 2}}
  assert subsets["vero/vizwiz"]["tier"] == 2 and subsets["vero/vizwiz"]["kept"] == 2
  assert subsets["mmfinereason/bmmr"]["kept"] == 3          # 3 survivors, tier-1 cap 3
  assert subsets["vero/chartqa"]["tier"] == 1               # chart/OCR is tier 1


def test_boundaries_kept(built):
  ids = {r["id"] for r in built[1]}
  assert "vero/chartqa/1" in ids          # answer of exactly 512 characters
  assert "vero/chartqa/3" in ids          # image min side exactly 100
  assert "mmfinereason/b3" in ids         # pass_rate exactly 0.5
  assert not any(i.startswith("mmfinereason/m") or i == "mmfinereason/w0" for i in ids)


def test_records_content(built):
  recs = {r["id"]: r for r in built[1]}
  r = recs["mmfinereason/e0"]
  assert r["answer"] == "12" and r["question"] == "Solve problem e0." and r["tier"] == 1
  assert r["images"] == [png()] and r["subset"] == "euclid30k" and r["meta"]["pass_rate"] == 0.2
  v = next(x for x in recs.values() if x["subset"] == "vizwiz")
  assert v["source"] == "vero" and v["tier"] == 2 and not v["question"].startswith("<image>")


def test_seeded_choice(tmp_path, tok):
  """Same seed: same rows and counts, with the input order shuffled and the checks spread over
  two processes."""
  def kept(shuffle_seed, workers, name):
    vero, mmfr = write_sources(tmp_path / name, shuffle_seed=shuffle_seed)
    cfg = zppo77k.Zppo77kConfig(tier_caps={1: 3, 2: 2}, seed=0, workers=workers,
                                filters=gb.BuildConfig(num_shards=1, max_prompt_tokens=10 ** 6))
    report = zppo77k.build(vero, mmfr, tmp_path / name / "out", tokenizer=None, config=cfg)
    shards = records.shard_paths(tfds_source.find_dataset_dir(tmp_path / name / "out"), "zppo77k")
    return sorted(r["id"] for r in records.iter_records(shards)), report["sources"]
  (a, report_a), (b, report_b) = kept(None, 1, "a"), kept(5, 2, "b")
  assert a == b and report_a == report_b
  assert sum(i.startswith("vero/mmk12/") for i in a) == 3


def test_caps_choice_depends_on_seed_and_subset():
  def chosen(seed, subset="s", n=20, tier=1):
    cands = [zppo77k.Candidate("vero", gb.Locator(0, i), id=f"{i:02d}", subset=subset, tier=tier)
             for i in range(n)]
    zppo77k.apply_caps(cands, {1: 5, 2: 2}, seed)
    return [c.id for c in cands if c.reason is None]
  assert chosen(0) == chosen(0) and len(chosen(0)) == 5
  assert chosen(0) != chosen(1)
  assert chosen(0, "s") != chosen(0, "t")      # seeded per sub-set, not one shared stream
  assert len(chosen(0, tier=2)) == 2 and len(chosen(0, n=4)) == 4


def test_caps_walk_fills_the_cap_with_rows_that_pass():
  """Rows failing rule 4 free their slot for the next row in the seeded order; rows past the
  cap are never checked."""
  cands = [zppo77k.Candidate("vero", gb.Locator(0, i), id=f"{i:02d}", subset="s", tier=2)
           for i in range(10)]
  order = np.random.default_rng(zppo77k._subset_seed(4, "s")).permutation(10)
  seeded = [f"{j:02d}" for j in order]
  bad = set(seeded[:3:2])                      # the 1st and 3rd rows of the seeded order fail
  checked = []

  def check(batch):
    checked.append([c.id for c in batch])
    for c in batch:
      if c.id in bad:
        c.reason = "broken_image"
  rounds = zppo77k.apply_caps(cands, {1: 5, 2: 2}, 4, check)
  kept = [c.id for c in cands if c.reason is None]
  assert sorted(kept) == sorted([i for i in seeded if i not in bad][:2])
  assert checked == [seeded[:2], seeded[2:3], seeded[3:4]] and rounds == 3
  assert sum(c.reason == "over_cap" for c in cands) == 6


def test_canonical_map_and_tiers():
  assert zppo77k.canonical_subset("WeMath2-Standard") == zppo77k.canonical_subset("wemath20_standard")
  assert zppo77k.canonical_subset("MMK12") == "mmk12" == zppo77k.canonical_subset("mm_k12")
  assert zppo77k.vero_tier("stem") == 1 and zppo77k.vero_tier("chart_ocr") == 1
  assert zppo77k.vero_tier("knowledge_recognition") == 2 and zppo77k.vero_tier("grounding") == 2


def test_prompt_budget_counts_image_tokens(tok):
  budget = gb.PromptBudget(tok, gb.default_user_text)
  text = len(gb.prompts.encode_prompt(tok, gb.default_user_text("What is x?")))
  # 120x120 is scaled up to the 256-token minimum (512x512 px); +2 for start/end markers.
  assert budget.count("What is x?", [(120, 120)]) == text + 256 + 2
  assert budget.count("What is x?", [(120, 120), (2000, 2000)]) == text + 258 + 35 * 35 + 2


def test_tfds_data_source_reads_the_output(built):
  ds = tfds_source.tfds_data_source(built[2] / "out")
  assert len(ds) == len(built[1])
  first = ds[0]
  assert first["id"].decode() == built[1][0]["id"] and first["images"][0] == built[1][0]["images"][0]


def test_cli_build_zppo77k(tmp_path, tok):
  from zppo_jax import cli
  vero, mmfr = write_sources(tmp_path, vero=[vero_row("mmk12", 0), vero_row("vizwiz", 1)],
                             mmfr=[mmfr_row("BMMR", "b0", 0.1)])
  tok.save_pretrained(str(tmp_path / "tok"))
  rc = cli.main(["data", "build-zppo77k", "--vero", str(vero), "--mmfinereason", str(mmfr),
                 "--out", str(tmp_path / "out"), "--tokenizer", str(tmp_path / "tok"),
                 "--num-shards", "2", "--workers", "2"])
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert rc == 0 and report["kept"] == 3 and report["rules"]["max_prompt_tokens"] == 4096
  assert report["rules"]["tier_caps"] == {"1": 2800, "2": 1400}
