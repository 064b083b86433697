"""Scoring, judge fallback, resume, reports and the CLI of `zppo eval`, on the fixture releases.

Responses are recorded (a `RecordedGenerator`), so every expected score below is computed by hand.
The judge is the real `OpenAICompatibleJudge` talking to a stub HTTP server on 127.0.0.1.
"""
import itertools
import json
import re

import numpy as np
import pytest

from conftest import serve_judge
from test_eval_benchmarks import write_suite
from zppo_jax import cli
from zppo_jax.eval import benchmarks, report, runner
from zppo_jax.eval.items import EvalItem, Mode
from zppo_jax.eval.prompts import build_prompt
from zppo_jax.eval.scoring import GeneratorJudge, Scorer
from zppo_jax.rewards import GradingPool, OpenAICompatibleJudge

# Judge stub: the reply for a response (the text between <response> tags). Anything not listed is
# judged wrong with a well-formed verdict.
JUDGE_REPLIES = {
    "The answer is A.": '{"verdict": "correct"}',
    "\\boxed{blue}": '{"verdict": "correct"}',                       # well-formed: correct
    "\\boxed{purple}": 'Sure! {"verdict": "correct"}',               # prose around JSON: wrong
    "\\boxed{green}": '{"verdict": "correct", "confidence": 1}',      # extra key: wrong
    "\\boxed{orange}": '<think>hmm</think>{"verdict": "correct"}',   # reasoning removed: correct
    "La capitale de l'Italie est Rome.": '{"verdict": "correct"}',
}


def _reply(prompt):
  response = re.search(r"<response>\n(.*)\n</response>", prompt, re.DOTALL).group(1)
  return JUDGE_REPLIES.get(response, '{"verdict": "wrong"}')


JUDGE_PROMPTS: list = []   # what the stub judge was asked, in order


@pytest.fixture(scope="module")
def judge_url():
  with serve_judge(_reply) as (url, prompts):
    global JUDGE_PROMPTS
    JUDGE_PROMPTS = prompts
    yield url


@pytest.fixture(scope="module")
def pool():
  p = GradingPool(num_workers=1, timeout_s=30.0)
  yield p
  p.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("eval_data")
  write_suite(d)
  return d


def _uids(name, data_dir):
  bench = benchmarks.BENCHMARKS[name]
  return [build_prompt(name, it).uid for it in runner.load_items(bench, data_dir).items]


# Recorded responses per benchmark, in item order, and the score each must get.
RESPONSES = {
    "mmlu": [("<think>1+1 is 2, so \\boxed{A}?</think> It is \\boxed{B}", 1.0, "parser:choice"),
             ("\\boxed{3}", 0.0, "parser:choice"),         # option text "3" is C; gold D
             ("The answer is A.", 1.0, "judge")],           # no box: the judge decides
    "ai2d": [("\\boxed{larva}", 1.0, "parser:choice"), ("\\boxed{(B)}", 0.0, "parser:choice")],
    "mathvista": [("\\boxed{7}", 1.0, "parser:choice"), ("\\boxed{4.0}", 1.0, "parser:numeric"),
                  ("\\boxed{0.34}", 0.0, "parser:numeric"), ("\\boxed{Red.}", 1.0, "parser:exact")],
    "infovqa": [("\\boxed{1991}", 1.0, "parser:anls"),
                ("\\boxed{united state}", 12 / 13, "parser:anls")],
    "gpqa_diamond": None,  # Filled from the shuffled gold letters: right, then wrong.
    "aime25": [("\\boxed{2}", 1.0, "parser:math"), ("x = \\boxed{0.5}", 1.0, "parser:math")],
    "mmvet": [("\\boxed{A red square}", 1.0, "parser:match"), ("\\boxed{blue}", 1.0, "judge")],
    "ocrbench_v2_en": [("\\boxed{STOP}", 1.0, "parser:ocr_vqa"),
                       ("\\boxed{[10, 10, 20, 20]}", 1.0, "parser:ocr_iou")],
    "ocrbench_v2_zh": [("\\boxed{你们好}", 0.0, "parser:ocr_vqa")],
    "mvbench": [("\\boxed{B}", 1.0, "parser:choice")],
    "videomme": [("\\boxed{C}", 1.0, "parser:choice")],
    "videomme_sub": [("\\boxed{A}", 0.0, "parser:choice")],
    "multichallenge": [("La capitale de l'Italie est Rome.", 1.0, "judge")],
    "mmlu_redux": [("\\boxed{B}", 1.0, "parser:choice")],
}


@pytest.fixture(scope="module")
def recorded(data_dir):
  """(responses by prompt uid, expected (score, path) by prompt uid)."""
  responses, expected = {}, {}
  gpqa = runner.load_items(benchmarks.BENCHMARKS["gpqa_diamond"], data_dir).items
  wrong = "A" if gpqa[1].gold != "A" else "B"
  table = dict(RESPONSES, gpqa_diamond=[(f"\\boxed{{{gpqa[0].gold}}}", 1.0, "parser:choice"),
                                        (f"\\boxed{{{wrong}}}", 0.0, "parser:choice")])
  for name, rows in table.items():
    uids = _uids(name, data_dir)
    assert len(uids) == len(rows), name
    for uid, (response, score, path) in zip(uids, rows):
      responses[uid], expected[uid] = response, (score, path)
  return responses, expected


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data_dir, recorded, judge_url, pool):
  out = tmp_path_factory.mktemp("run")
  scorer = Scorer(judge=OpenAICompatibleJudge(judge_url, "stub", max_retries=0), pool=pool)
  chosen = [benchmarks.BENCHMARKS[n] for n in RESPONSES]
  counts = runner.run_eval(chosen, data_dir, out, runner.RecordedGenerator(recorded[0]), scorer,
                           runner.DecodingConfig(batch_size=2))
  return out, counts


def test_every_sample_scores_exactly(full_run, recorded):
  out, counts = full_run
  expected = recorded[1]
  seen = 0
  for name in RESPONSES:
    for uid, verdict in runner.read_verdicts(out / "samples" / f"{name}.jsonl").items():
      assert (verdict.score, verdict.path) == pytest.approx(expected[f"{name}/{uid}"]), uid
      seen += 1
  assert seen == len(expected)
  assert counts["mmlu_redux"]["skipped"] == {"excluded": 1, "bad_row": 1}


def test_report_accuracies_and_family_averages(full_run):
  out, _ = full_run
  summary = report.write_report(out)
  acc = {n: b["accuracy"] for n, b in summary["benchmarks"].items()}
  assert acc["mmlu"] == pytest.approx(200 / 3)
  assert acc["infovqa"] == pytest.approx(100 * (1 + 12 / 13) / 2)
  assert acc["mathvista"] == 75.0 and acc["ocrbench_v2_zh"] == 0.0
  vlm = ["ai2d", "mathvista", "infovqa", "mmvet", "ocrbench_v2_en", "ocrbench_v2_zh"]
  assert summary["families"]["vlm"]["accuracy"] == pytest.approx(np.mean([acc[n] for n in vlm]))
  assert summary["families"]["vlm"]["benchmarks"] == 6
  assert summary["families"]["video"]["accuracy"] == pytest.approx(200 / 3)
  assert summary["benchmarks"]["mmlu"]["paths"] == {"parser:choice": 2, "judge": 1}
  md = (out / "report.md").read_text()
  assert "| MMLU | LLM | 66.7 | 3 / 3 | 1 |" in md
  assert "| VLM |" in md and "(partial)" in md
  assert json.loads((out / "report.json").read_text()) == summary


def test_judge_contract_malformed_is_wrong(judge_url, pool):
  items = [EvalItem(str(k), "Which color?", "red", Mode.JUDGE) for k in range(5)]
  responses = ["\\boxed{blue}", "\\boxed{purple}", "\\boxed{green}", "\\boxed{orange}",
               "\\boxed{grey}"]
  judge = OpenAICompatibleJudge(judge_url, "stub", max_retries=0)
  verdicts = Scorer(judge=judge, pool=pool).score(items, responses)
  assert [v.score for v in verdicts] == [1.0, 0.0, 0.0, 1.0, 0.0]
  assert {v.path for v in verdicts} == {"judge"}
  assert judge.stats.malformed == 2


class _StubJudgeGenerator:
  """Replies to judge prompts like the HTTP stub (the in-process judge path)."""

  def generate(self, prompts):
    replies = []
    for p in prompts:
      response = re.search(r"<response>\n(.*)\n</response>", p.text, re.DOTALL).group(1)
      replies.append(JUDGE_REPLIES.get(response, '{"verdict": "wrong"}'))
    return replies


def test_in_process_judge_has_the_same_contract(pool):
  items = [EvalItem(str(k), "Which color?", "red", Mode.JUDGE) for k in range(5)]
  responses = ["\\boxed{blue}", "\\boxed{purple}", "\\boxed{green}", "\\boxed{orange}",
               "\\boxed{grey}"]
  judge = GeneratorJudge(_StubJudgeGenerator())
  verdicts = Scorer(judge=judge, pool=pool).score(items, responses)
  assert [v.score for v in verdicts] == [1.0, 0.0, 0.0, 1.0, 0.0]
  assert judge.malformed == 2


def test_judge_sees_options_and_gold_text(judge_url, pool):
  JUDGE_PROMPTS.clear()
  item = EvalItem("q", "Pick one.", "B", Mode.CHOICE, choices=("cat", "dog"))
  Scorer(judge=OpenAICompatibleJudge(judge_url, "stub", max_retries=0), pool=pool).score(
      [item], ["<think>...</think>I pick the dog"])
  (prompt,) = JUDGE_PROMPTS
  assert "Pick one.\nA. cat\nB. dog" in prompt
  assert "<reference_answer>\nB. dog\n</reference_answer>" in prompt
  assert "<response>\nI pick the dog\n</response>" in prompt  # Reasoning removed.


def test_unreachable_judge_and_no_judge_are_wrong(pool):
  item = EvalItem("q", "Which color?", "red", Mode.JUDGE)
  dead = OpenAICompatibleJudge("http://127.0.0.1:9/v1", "stub", max_retries=0, timeout_s=2)
  assert Scorer(judge=dead, pool=pool).score([item], ["\\boxed{blue}"])[0].score == 0.0
  (v,) = Scorer(judge=None, pool=pool).score([item], ["\\boxed{blue}"])
  assert (v.score, v.path, v.extracted) == (0.0, "no_judge", "blue")


@pytest.mark.parametrize("item, response, expected", [
    (EvalItem("n", "q", "2.5", Mode.NUMERIC), "\\boxed{2.50}", (1.0, "parser:numeric", "2.50")),
    (EvalItem("n", "q", "2.5", Mode.NUMERIC), "\\boxed{2.6}", (0.0, "parser:numeric", "2.6")),
    (EvalItem("n", "q", "2.5", Mode.NUMERIC), "\\boxed{x+1}", (0.0, "no_judge", "x+1")),
    (EvalItem("n", "q", "0.33", Mode.NUMERIC, meta={"precision": 2}), "\\boxed{\\frac{1}{3}}",
     (1.0, "parser:numeric", "\\frac{1}{3}")),
    (EvalItem("e", "q", "Yes", Mode.EXACT), "\\boxed{\\text{yes}}",
     (1.0, "parser:exact", "\\text{yes}")),
    (EvalItem("c", "q", "B", Mode.CHOICE, choices=("x", "y")), "no box", (0.0, "no_judge", None)),
    (EvalItem("m", "q", "\\frac{1}{2}", Mode.MATH), "\\boxed{0.5}", (1.0, "parser:math", "0.5")),
    (EvalItem("m", "q", "\\frac{1}{2}", Mode.MATH), "\\boxed{0.6}", (0.0, "parser:math", "0.6")),
    (EvalItem("m", "q", "Paris", Mode.MATH), "\\boxed{Lyon}", (0.0, "no_judge", "Lyon")),
    (EvalItem("a", "q", ["United States"], Mode.ANLS), "\\boxed{\\text{united states}}",
     (1.0, "parser:anls", "united states")),
    (EvalItem("a", "q", ["1991"], Mode.ANLS), "<think>\\boxed{1}</think>1991",
     (1.0, "parser:anls_unboxed", "1991")),
    (EvalItem("o", "q", [], Mode.OCR, meta={"type": "text grounding en", "bbox": [0, 0, 2, 2]}),
     "\\boxed{no idea}", (0.0, "no_judge", "no idea")),
    (EvalItem("r", "q", "YES", Mode.RUBRIC, closer=False, meta={"target_question": "?"}),
     "\\boxed{1}", (0.0, "no_judge", "1")),
])
def test_scorer_paths_without_a_judge(pool, item, response, expected):
  (v,) = Scorer(pool=pool).score([item], [response])
  assert (v.score, v.path, v.extracted) == expected


class _CountingGenerator(runner.RecordedGenerator):
  def __init__(self, responses):
    super().__init__(responses)
    self.prompts = []

  def generate(self, prompts):
    self.prompts += [p.uid for p in prompts]
    return super().generate(prompts)


def test_resume_skips_finished_samples(tmp_path, data_dir, recorded, pool):
  bench = benchmarks.BENCHMARKS["mmlu"]
  scorer = Scorer(pool=pool)
  decoding = runner.DecodingConfig(batch_size=2)
  first = _CountingGenerator(recorded[0])
  counts = runner.run_benchmark(bench, data_dir, tmp_path, first, scorer, decoding,
                                max_batches=1)  # "Interrupted" after one batch.
  assert counts["generated"] == 2 and len(first.prompts) == 2
  samples = tmp_path / "samples/mmlu.jsonl"
  # A crash in the middle of the next write leaves a torn line: it is ignored and redone.
  with samples.open("a") as f:
    f.write('{"uid": "x", "score": 1.0, "pa')
  second = _CountingGenerator(recorded[0])
  counts = runner.run_benchmark(bench, data_dir, tmp_path, second, scorer, decoding)
  assert counts["done_before"] == 2 and counts["generated"] == 1
  assert second.prompts == [u for u in _uids("mmlu", data_dir) if u not in first.prompts]
  verdicts = runner.read_verdicts(samples)
  assert len(verdicts) == 3
  third = _CountingGenerator(recorded[0])
  assert runner.run_benchmark(bench, data_dir, tmp_path, third, scorer, decoding)["generated"] == 0
  assert third.prompts == []


class _FailingGenerator(runner.RecordedGenerator):
  """Bad input for one prompt (as an unreadable image would be): a `ValueError` naming it."""

  def generate(self, prompts):
    for p in prompts:
      if p.uid.endswith(self.bad):
        raise ValueError(f"{p.uid}: cannot read its image")
    return super().generate(prompts)


def test_a_prompt_that_cannot_be_generated_is_an_error_verdict(tmp_path, data_dir, recorded,
                                                               pool):
  uids = _uids("mmlu", data_dir)
  generator = _FailingGenerator(recorded[0])
  generator.bad = uids[1].split("/")[1]
  runner.run_benchmark(benchmarks.BENCHMARKS["mmlu"], data_dir, tmp_path, generator,
                       Scorer(pool=pool), runner.DecodingConfig(batch_size=3))
  verdicts = runner.read_verdicts(tmp_path / "samples/mmlu.jsonl")
  assert [v.path for v in verdicts.values()] == ["parser:choice", "error", "no_judge"]
  assert verdicts[generator.bad].error == f"{uids[1]}: cannot read its image"
  assert verdicts[generator.bad].score == 0.0


def test_restart_with_other_settings_is_refused(tmp_path, data_dir, recorded, pool):
  bench = [benchmarks.BENCHMARKS["aime25"]]
  gen = runner.RecordedGenerator(recorded[0])
  runner.run_eval(bench, data_dir, tmp_path, gen, Scorer(pool=pool))
  with pytest.raises(ValueError, match="decoding differ"):
    runner.run_eval(bench, data_dir, tmp_path, gen, Scorer(pool=pool),
                    runner.DecodingConfig(temperature=1.0))


def test_bootstrap_equals_a_direct_computation():
  values = np.array([1.5, -2.0, 4.0, 0.25, 3.0])
  low, high = report.bootstrap_mean_ci(values, resamples=2000, seed=7)
  rng = np.random.default_rng(7)
  means = []
  for _ in range(2000):
    draw = rng.integers(0, 5, size=5)
    means.append(sum(values[i] for i in draw) / 5)
  means.sort()
  # numpy's default quantile: linear interpolation at position q * (n - 1).
  def quantile(q):
    pos = q * (len(means) - 1)
    lo = int(np.floor(pos))
    return means[lo] + (means[min(lo + 1, len(means) - 1)] - means[lo]) * (pos - lo)
  assert low == pytest.approx(quantile(0.025), abs=1e-12)
  assert high == pytest.approx(quantile(0.975), abs=1e-12)


def test_bootstrap_matches_the_exact_distribution():
  # With 3 benchmarks there are 27 equally likely resamples; their means' 2.5% and 97.5%
  # quantiles are the smallest and largest value (each has probability 1/27 > 2.5%).
  values = [2.0, -1.0, 5.0]
  exact = sorted(np.mean(c) for c in itertools.product(values, repeat=3))
  low, high = report.bootstrap_mean_ci(values)
  assert (low, high) == (exact[0], exact[-1]) == (-1.0, 5.0)
  # The 25% quantile of the exact distribution vs 10,000 resamples.
  means = np.random.default_rng(0).choice(values, size=(10_000, 3)).mean(axis=1)
  assert abs(np.mean(means <= 1.0) - np.mean(np.array(exact) <= 1.0)) < 0.02


def _fake_run(path, accuracies):
  (path / "samples").mkdir(parents=True)
  for name, acc in accuracies.items():
    n = 4
    rows = [{"uid": str(k), "score": float(k < acc * n), "path": "parser:choice",
             "extracted": None, "gold": "A", "response": ""} for k in range(n)]
    (path / "samples" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_compare_runs(tmp_path):
  a = _fake_run(tmp_path / "a", {"mmlu": 0.5, "aime25": 0.25, "ai2d": 0.5})
  b = _fake_run(tmp_path / "b", {"mmlu": 0.75, "aime25": 0.75, "ai2d": 0.25, "mmvet": 1.0})
  result = report.compare(a, b)
  assert result["families"]["llm"]["diff"] == pytest.approx(37.5)
  assert result["families"]["llm"]["ci95"] == pytest.approx([25.0, 50.0])
  assert result["families"]["vlm"] == {"a": 50.0, "b": 25.0, "diff": -25.0,
                                       "ci95": [-25.0, -25.0], "benchmarks": 1}
  assert "mmvet" not in result["benchmarks"]


def test_cli_eval_and_compare(tmp_path, data_dir, recorded, capsys):
  responses = tmp_path / "responses.jsonl"
  responses.write_text("".join(json.dumps({"uid": u, "response": r}) + "\n"
                               for u, r in recorded[0].items()))
  common = ["--responses", str(responses), "--benchmarks", "aime25,gpqa_diamond",
            "--data-dir", str(data_dir), "--grading-timeout", "30"]
  assert cli.main(["eval", *common, "--out", str(tmp_path / "run")]) == 0
  summary = json.loads((tmp_path / "run/report.json").read_text())
  assert summary["families"]["llm"]["accuracy"] == pytest.approx(75.0)
  # Re-running the command resumes: nothing is generated again.
  assert cli.main(["eval", *common, "--out", str(tmp_path / "run")]) == 0
  assert '"generated": 0' in capsys.readouterr().out
  assert cli.main(["eval", "compare", str(tmp_path / "run"), str(tmp_path / "run"),
                   "--out", str(tmp_path / "cmp")]) == 0
  assert json.loads((tmp_path / "cmp/compare.json").read_text())["families"]["llm"]["diff"] == 0
  assert cli.main(["eval", *common[:2], "--benchmarks", "nope", "--data-dir", "x",
                   "--out", "y"]) == 2
