"""ZPPO-77K builder: every §7 rule on fixtures mirroring the two sources' published layouts."""
import io
import json

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zppo_jax.data import demo_tokenizer, records, tfds_source, zppo77k, zppo77k_subsets
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


def hf_image(data):
  """An HF `Image` feature value as both releases store it: one `{bytes, path}` struct."""
  return {"bytes": data, "path": None}


def vero_row(config, index, *, question=None, answer="78.5", image="png", layout="struct"):
  """One row of Vero-600k's `<config>/train-*.parquet` (shared/ZPPO_SPEC.md §7, "Published
  layouts"): `image` (one HF Image struct), `prompt` (chat messages, as a struct of lists
  `{content: [...], role: [...]}` or a list of messages), `data_source`, `ability` (the family),
  `reward_model {ground_truth, style}`, `extra_info {answer, question, index, reward_type, domain,
  tolerance}`."""
  family, dataset = config.split("-", 1)
  if question is None:
    question = f"<image>\nQuestion {dataset} {index}: what is the area?"
  messages = [{"role": "system", "content": "You are a helpful assistant."},
              {"role": "user", "content": question}]
  prompt = ({"content": [m["content"] for m in messages], "role": [m["role"] for m in messages]}
            if layout == "struct" else messages)
  return {
      "image": hf_image(png()) if image == "png" else image,
      "prompt": prompt, "data_source": dataset, "ability": family,
      "reward_model": {"ground_truth": answer, "style": "rule"},
      "extra_info": {"answer": answer, "question": question, "index": index,
                     "reward_type": "exact", "domain": family, "tolerance": 0.0},
  }


def mmfr_row(source, rid, pass_rate=0.0, *, answer="7", image=None):
  """One row of MMFineReason-SFT-586K's `data/train-NNNNN-of-00070.parquet` (shared/ZPPO_SPEC.md
  §7, "Published layouts"): `question`, `answer` (null for free-form rows), `image` (one HF Image
  struct), `source` (the sub-set), `id` (int64, unique only within a source), `pass_rate`, plus the
  SFT-only columns (`original_answer`, the teacher's response)."""
  return {"question": f"<image>\nSolve problem {source} {rid}.", "answer": answer,
          "image": hf_image(png() if image is None else image), "source": source, "id": rid,
          "pass_rate": pass_rate, "original_answer": answer,
          "qwen3vl_235b_thinking_response": "<think>...</think> 7"}


def vero_configs():
  """config -> train shards (lists of rows). Expected per sub-set (caps 3 / 2) in comments."""
  chart = "chart_ocr-chartqa"
  return {
      "stem-mmk12": [[vero_row("stem-mmk12", i) for i in range(5)]],        # tier 1: 3 kept
      "stem-raven": [[vero_row("stem-raven", i) for i in range(4)]],        # tier 2 (not family)
      "stem-wemath20_standard": [[vero_row("stem-wemath20_standard", 0)]],
      "stem-ai2d_merged": [[vero_row("stem-ai2d_merged", 0)]],
      "knowledge_recognition-vizwiz": [[vero_row("knowledge_recognition-vizwiz", i)
                                        for i in range(2)]],                 # not_in_mixture
      chart: [[
          vero_row(chart, 1, answer="x" * 512, layout="list"),              # kept (boundary)
          vero_row(chart, 2, answer="x" * 513, layout="list"),              # answer_too_long
          vero_row(chart, 3, image=hf_image(png(100, 300)), layout="list"),  # kept (boundary)
          vero_row(chart, 4, image=hf_image(png(99, 300)), layout="list"),   # small_image
          vero_row(chart, 5, image=hf_image(b"\x89PNG garbage"), layout="list"),  # broken
      ], [
          vero_row(chart, 6, image=hf_image(png()[:60])),                    # broken (truncated)
          vero_row(chart, 7, question="<image>\n"),                          # empty_question
          vero_row(chart, 1),                                                 # duplicate_id
          vero_row(chart, 8, question="<image>\n" + "long " * 2000),         # too_long
          vero_row(chart, 9, image=None),                                     # no_image
      ]],
  }


def mmfr_shards():
  first = [mmfr_row("MMK12", i, 0.1) for i in range(2)]                     # vero_priority
  first += [mmfr_row("FineVision-ai2d_merged", 0, 0.1),                     # vero_priority
            mmfr_row("FineVision-raven", 0, 0.1), mmfr_row("WeMath", 5, 0.1)]
  first += [mmfr_row("BMMR", 0, 0.8), mmfr_row("BMMR", 1, 0.51),           # pass_rate_high
            mmfr_row("BMMR", 2, None),                                      # no_pass_rate
            mmfr_row("BMMR", 3, 0.5),                                       # kept (boundary)
            mmfr_row("BMMR", 4, 0.0), mmfr_row("BMMR", 5, 0.0),            # 3 survivors = cap
            mmfr_row("BMMR", 6, 0.0, answer=None)]                          # free-form: no_answer
  first += [mmfr_row("Euclid30K", 0, 0.2, answer="12"),                    # id 0 again: kept
            mmfr_row("CLEVR-Math", 0, 0.0)]                                 # not_in_mixture
  second = [mmfr_row("VisualSphinx", i, 0.0) for i in range(3)]            # tier 2: 2 kept
  second += [mmfr_row("BMMR", 4, 0.0)]                                      # duplicate_id
  return [first, second]


def write_sources(root, vero=None, mmfr=None, shuffle_seed=None):
  """Writes both sources in their published layouts under `root/vero` and `root/mmfr`.

  Vero: `<config>/train-NNNNN-of-NNNNN.parquet` plus a `val-00000-of-00001.parquet` per config
  that is not Parquet at all (opening it fails the build: `val` must never be read).
  MMFineReason: `data/train-NNNNN-of-00070.parquet` (only the first shards exist here).
  """
  vero, mmfr = vero or vero_configs(), mmfr or mmfr_shards()
  rng = np.random.default_rng(shuffle_seed)
  order = (lambda rows: rows) if shuffle_seed is None else (
      lambda rows: [rows[i] for i in rng.permutation(len(rows))])
  for config, shards in vero.items():
    folder = root / "vero" / config
    folder.mkdir(parents=True)
    for k, rows in enumerate(shards):
      pq.write_table(pa.Table.from_pylist(order(rows)),
                     folder / f"train-{k:05d}-of-{len(shards):05d}.parquet")
    (folder / "val-00000-of-00001.parquet").write_bytes(b"not parquet: val is never read")
  (root / "mmfr" / "data").mkdir(parents=True)
  for k, rows in enumerate(mmfr):
    pq.write_table(pa.Table.from_pylist(order(rows)),
                   root / "mmfr" / "data" / f"train-{k:05d}-of-00070.parquet")
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
  report, recs, root = built
  assert report["sources"]["vero"]["rows"] == sum(len(rows) for shards in vero_configs().values()
                                                  for rows in shards)
  assert report["sources"]["mmfinereason"]["rows"] == sum(len(rows) for rows in mmfr_shards())
  for s in report["sources"].values():
    assert s["rows"] == s["kept"] + sum(s["dropped"].values())
  assert report["kept"] == len(recs) == 15
  assert sum(v["kept"] for v in report["subsets"].values()) == len(recs)
  assert report["kept_per_tier"] == {"tier1": 11, "tier2": 4}
  assert (root / "out" / "report.md").read_text().startswith("# ZPPO-77K build report")


def test_drop_reasons(built):
  report = built[0]
  assert report["sources"]["vero"] == {"rows": 23, "kept": 9, "dropped": {
      "answer_too_long": 1, "broken_image": 2, "duplicate_id": 1, "empty_question": 1,
      "no_image": 1, "not_in_mixture": 2, "over_cap": 4, "small_image": 1, "too_long": 1}}
  assert report["sources"]["mmfinereason"] == {"rows": 18, "kept": 6, "dropped": {
      "duplicate_id": 1, "no_answer": 1, "no_pass_rate": 1, "not_in_mixture": 1, "over_cap": 1,
      "pass_rate_high": 2, "vero_priority": 5}}
  assert set(report["sources"]["vero"]["dropped"]) <= set(zppo77k.DROP_REASONS)


def test_tier_caps_per_subset(built):
  subsets = built[0]["subsets"]
  assert subsets["vero/mmk12"] == {"source": "vero", "subset": "mmk12", "tier": 1, "rows": 5,
                                   "kept": 3, "dropped": {"over_cap": 2}}
  # Tiers come from the paper's lists, not Vero's family: `stem-raven` is tier 2.
  assert subsets["vero/raven"] == {"source": "vero", "subset": "raven", "tier": 2, "rows": 4,
                                   "kept": 2, "dropped": {"over_cap": 2}}
  assert subsets["mmfinereason/bmmr"]["kept"] == 3          # 3 survivors, tier-1 cap 3
  assert subsets["mmfinereason/visualsphinx"]["tier"] == 2
  assert subsets["mmfinereason/visualsphinx"]["kept"] == 2
  assert subsets["vero/chartqa"]["tier"] == 1 and subsets["vero/chartqa"]["kept"] == 2
  assert subsets["vero/vizwiz"]["dropped"] == {"not_in_mixture": 2}


def test_vero_priority_meets_across_spellings(built):
  subsets = built[0]["subsets"]
  assert subsets["mmfinereason/ai2d"]["dropped"] == {"vero_priority": 1}  # FineVision-ai2d_merged
  assert subsets["mmfinereason/raven"]["dropped"] == {"vero_priority": 1}    # FineVision-raven
  assert subsets["mmfinereason/wemath"]["dropped"] == {"vero_priority": 1}   # vs wemath20_standard
  assert subsets["mmfinereason/mmk12"]["dropped"] == {"vero_priority": 2}


def test_boundaries_and_keys(built):
  ids = {r["id"] for r in built[1]}
  assert "vero/chartqa/1" in ids          # answer of exactly 512 characters
  assert "vero/chartqa/3" in ids          # image min side exactly 100
  assert "mmfinereason/BMMR/3" in ids     # pass_rate exactly 0.5
  assert "mmfinereason/Euclid30K/0" in ids and "mmfinereason/BMMR/0" not in ids  # (source, id)
  assert not any(i.startswith(("mmfinereason/MMK12", "mmfinereason/FineVision")) for i in ids)


def test_every_record_has_decodable_images(built):
  for r in built[1]:
    assert len(r["images"]) == 1, r["id"]
    image = PIL.Image.open(io.BytesIO(r["images"][0]))
    image.load()
    assert min(image.size) >= 100, r["id"]


def test_records_content(built):
  recs = {r["id"]: r for r in built[1]}
  r = recs["mmfinereason/Euclid30K/0"]
  assert r["answer"] == "12" and r["question"] == "Solve problem Euclid30K 0." and r["tier"] == 1
  assert r["images"] == [png()] and r["subset"] == "euclid" and r["meta"]["pass_rate"] == 0.2
  v = recs["vero/raven/0"]
  assert v["source"] == "vero" and v["tier"] == 2
  assert v["question"] == "Question raven 0: what is the area?"
  assert v["meta"]["config"] == "stem-raven" and v["answer"] == "78.5"
  assert recs["vero/chartqa/3"]["images"] == [png(100, 300)]   # from a list-of-messages prompt


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
  c = zppo77k_subsets.canonical
  assert c("wemath20_standard") == c("WeMath") == c("wemath20_pro") == "wemath"
  assert c("ai2d_merged") == c("FineVision-ai2d_merged") == "ai2d"
  assert c("raven") == c("FineVision-raven") == "raven" and zppo77k_subsets.tier("raven") == 2
  assert c(zppo77k_subsets.vero_dataset("chart_ocr-CoSyn_400k_chart")) == "cosyn_chart"
  assert c(zppo77k_subsets.vero_dataset("counting_grounding_search-tallyqa")) == "tallyqa"
  for name in ("pathvqa", "vqarad", "evochart", "VisualSphinx", "LLaVA-CoT", "Zebra-CoT"):
    assert zppo77k_subsets.tier(c(name)) == 2, name
  for name in ("MMR1", "Euclid30K", "Geometry3K", "geo3k", "mm-openr1", "ViRL39K", "ScienceQA"):
    assert zppo77k_subsets.tier(c(name)) == 1, name
  assert c("vizwiz") is None and c("CLEVR-Math") is None


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
  vero, mmfr = write_sources(tmp_path, vero={"stem-mmk12": [[vero_row("stem-mmk12", 0)]],
                                             "stem-raven": [[vero_row("stem-raven", 1)]]},
                             mmfr=[[mmfr_row("BMMR", 0, 0.1)]])
  tok.save_pretrained(str(tmp_path / "tok"))
  rc = cli.main(["data", "build-zppo77k", "--vero", str(vero), "--mmfinereason", str(mmfr),
                 "--out", str(tmp_path / "out"), "--tokenizer", str(tmp_path / "tok"),
                 "--num-shards", "2", "--workers", "2"])
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert rc == 0 and report["kept"] == 3 and report["rules"]["max_prompt_tokens"] == 4096
  assert report["rules"]["tier_caps"] == {"1": 2800, "2": 1400}


def test_question_from_the_prompt_in_both_published_forms(tmp_path):
  """Without `extra_info.question`, the last user message of `prompt` is the question, whether
  `prompt` is stored as a struct of lists or as a list of messages."""
  struct = {"content": ["You are helpful.", "<image>\nHow many?"], "role": ["system", "user"]}
  messages = [{"role": "system", "content": "You are helpful."},
              {"role": "user", "content": "<image>\nHow many?"}]
  for prompt in (struct, messages):
    row = dict(vero_row("counting_grounding_search-tallyqa", 0), prompt=prompt)
    row["extra_info"] = dict(row["extra_info"], question=None)
    p = zppo77k._Parsed("vero", row, tmp_path / "counting_grounding_search-tallyqa" / "x", "x")
    assert p.question == "How many?" and p.subset == "tallyqa" and p.tier == 2
