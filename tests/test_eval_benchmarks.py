"""Benchmark adapters and loaders on fixtures that mirror each published schema and file layout.

`write_suite(data_dir)` writes small copies of several releases, each in the layout it is
published in (Hub Parquet snapshots, a `datasets` ``save_to_disk`` directory, JSONL, CSV, the
MVBench JSON files and video tree, Video-MME with subtitles); `test_eval_run.py` scores them.
"""
import io
import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from zppo_jax.eval import benchmarks, loaders, prompts, runner
from zppo_jax.eval.items import Mode
from zppo_jax.zppo import templates


def png(color=(255, 0, 0), size=(4, 3)) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", size, color).save(buf, format="PNG")
  return buf.getvalue()


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _image(color=(255, 0, 0)):
  return {"bytes": png(color), "path": None}


def _parquet(path: pathlib.Path, rows: list[dict], schema: pa.Schema | None = None):
  path.parent.mkdir(parents=True, exist_ok=True)
  pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _save_to_disk(root: pathlib.Path, splits: dict[str, list[dict]], schema: pa.Schema):
  """The layout of `datasets.DatasetDict.save_to_disk`: Arrow IPC streams plus JSON metadata."""
  root.mkdir(parents=True, exist_ok=True)
  (root / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
  for split, rows in splits.items():
    d = root / split
    d.mkdir()
    table = pa.Table.from_pylist(rows, schema=schema)
    with pa.OSFile(str(d / "data-00000-of-00001.arrow"), "wb") as sink:
      with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    (d / "dataset_info.json").write_text(json.dumps({"features": {}}))
    (d / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))


def _jsonl(path: pathlib.Path, rows: list[dict]):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_suite(data_dir: pathlib.Path) -> None:
  """Writes the fixture releases under ``data_dir``."""
  # MMLU (cais/mmlu, config "all"): question, subject, choices, answer (0-based int). A dev split
  # beside test must not be read.
  mmlu_row = lambda q, a: {"question": q, "subject": "math", "choices": ["1", "2", "3", "4"],
                           "answer": a}
  _parquet(data_dir / "mmlu/all/test-00000-of-00001.parquet",
           [mmlu_row("1+1=?", 1), mmlu_row("2+2=?", 3), mmlu_row("0+1=?", 0)])
  _parquet(data_dir / "mmlu/all/dev-00000-of-00001.parquet", [mmlu_row("dev row", 0)])
  # AI2D (lmms-lab/ai2d): question, options, answer (index as a string), image.
  ai2d_schema = pa.schema([("question", pa.string()), ("options", pa.list_(pa.string())),
                           ("answer", pa.string()), ("image", IMAGE_TYPE)])
  _parquet(data_dir / "ai2d/data/test-00000-of-00001.parquet", [
      {"question": "Which stage is the larva?", "options": ["egg", "larva", "pupa", "adult"],
       "answer": "1", "image": _image()},
      {"question": "What eats the grass?", "options": ["rabbit", "hawk"], "answer": "0",
       "image": _image((0, 255, 0))},
  ], ai2d_schema)
  # MathVista (AI4Math/MathVista testmini) as a `datasets` save_to_disk directory.
  mv_schema = pa.schema([
      ("pid", pa.string()), ("question", pa.string()), ("image", pa.string()),
      ("decoded_image", IMAGE_TYPE), ("choices", pa.list_(pa.string())), ("unit", pa.string()),
      ("precision", pa.float64()), ("answer", pa.string()), ("question_type", pa.string()),
      ("answer_type", pa.string()), ("query", pa.string())])
  mv = lambda pid, q, ans, qt, at, choices=None, precision=None: {
      "pid": pid, "question": q, "image": f"images/{pid}.jpg", "decoded_image": _image(),
      "choices": choices, "unit": None, "precision": precision, "answer": ans, "question_type": qt,
      "answer_type": at, "query": "Hint: Please answer the question and provide the final answer "
                                  "at the end.\nQuestion: " + q}
  _save_to_disk(data_dir / "mathvista", {"testmini": [
      mv("1", "Which is largest?", "7", "multi_choice", "text", choices=["3", "7", "5"]),
      mv("2", "How many bars?", "4", "free_form", "integer"),
      mv("3", "What is the slope?", "0.33", "free_form", "float", precision=2.0),
      mv("4", "Name the color.", "red", "free_form", "text"),
  ]}, mv_schema)
  # InfoVQA (lmms-lab/DocVQA, config InfographicVQA): questionId, question, answers, image.
  _parquet(data_dir / "infovqa/InfographicVQA/validation-00000-of-00001.parquet", [
      {"questionId": 11, "question": "Which year?", "answers": ["1991", "1991."],
       "answer_type": ["single span"], "image": _image()},
      {"questionId": 12, "question": "Which country?", "answers": ["united states"],
       "answer_type": ["single span"], "image": _image()},
  ])
  # GPQA (Idavidrein/gpqa gpqa_diamond.csv): the correct answer is a column of its own.
  (data_dir / "gpqa_diamond").mkdir(parents=True)
  (data_dir / "gpqa_diamond/gpqa_diamond.csv").write_text(
      "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
      'rec1,"What is H2O?",water,salt,"sand, wet",air\n'
      "rec2,Lightest element?,hydrogen,helium,lithium,carbon\n")
  # AIME 2025 (math-ai/aime25): JSONL with problem and answer.
  _jsonl(data_dir / "aime25/test.jsonl", [
      {"id": "0", "problem": "Find $1+1$. Please reason step by step, and put your final answer "
                             "within \\boxed{}.", "answer": "2"},
      {"id": "1", "problem": "Find $x$ with $2x = 1$.", "answer": "\\frac{1}{2}"},
  ])
  # MM-Vet (lmms-lab/MMVet): free-form answers, judged.
  _parquet(data_dir / "mmvet/data/test-00000-of-00001.parquet", [
      {"question_id": "v1", "image": _image(), "question": "What is shown?",
       "answer": "a red square", "capability": "rec"},
      {"question_id": "v2", "image": _image(), "question": "What color?", "answer": "red",
       "capability": "rec"},
  ], pa.schema([("question_id", pa.string()), ("image", IMAGE_TYPE), ("question", pa.string()),
                ("answer", pa.string()), ("capability", pa.string())]))
  # OCRBench v2 (ling99/OCRBench_v2): one release, English and Chinese types.
  ocr_schema = pa.schema([("id", pa.int32()), ("dataset_name", pa.string()),
                          ("question", pa.string()), ("type", pa.string()),
                          ("answers", pa.list_(pa.string())), ("image", IMAGE_TYPE),
                          ("eval", pa.string()), ("bbox", pa.list_(pa.int32())),
                          ("bbox_list", pa.list_(pa.list_(pa.int32()))),
                          ("content", pa.list_(pa.string()))])
  ocr = lambda i, q, t, a, bbox=None: {"id": i, "dataset_name": "x", "question": q, "type": t,
                                       "answers": a, "image": _image(), "eval": None,
                                       "bbox": bbox, "bbox_list": None, "content": None}
  _parquet(data_dir / "ocrbench_v2/data/test-00000-of-00001.parquet", [
      ocr(1, "What does the sign say?", "text recognition en", ["STOP"]),
      ocr(2, "Where is the word?", "text grounding en", [], [10, 10, 20, 20]),
      ocr(3, "写的是什么?", "text recognition cn", ["你好"]),
  ], ocr_schema)
  # MVBench (OpenGVLab/MVBench): json/<task>.json, videos under video/<source>/.
  _jsonl(data_dir / "mvbench/unused.jsonl", [])  # Stray files outside json/ are not read.
  (data_dir / "mvbench/json").mkdir(parents=True)
  (data_dir / "mvbench/json/action_sequence.json").write_text(json.dumps([
      {"video": "clip1.mp4", "question": "What happened first?",
       "candidates": ["sat down", "stood up", "ran"], "answer": "stood up"}]))
  (data_dir / "mvbench/video/star").mkdir(parents=True)
  (data_dir / "mvbench/video/star/clip1.mp4").write_bytes(b"\x00fake")
  # Video-MME (lmms-lab/Video-MME) with subtitle/<videoID>.srt and the videos.
  _parquet(data_dir / "videomme/videomme/test-00000-of-00001.parquet", [
      {"video_id": "001", "duration": "short", "domain": "x", "sub_category": "y",
       "url": "https://youtube.com/watch?v=abc", "videoID": "abc", "question_id": "001-1",
       "task_type": "Counting", "question": "How many dogs appear?",
       "options": ["A. 1", "B. 2", "C. 3", "D. 4"], "answer": "C"}])
  (data_dir / "videomme/data").mkdir(parents=True)
  (data_dir / "videomme/data/abc.mp4").write_bytes(b"\x00fake")
  (data_dir / "videomme/subtitle").mkdir(parents=True)
  (data_dir / "videomme/subtitle/abc.srt").write_text(
      "1\n00:00:01,000 --> 00:00:02,000\nLook, three dogs!\n\n2\n00:00:03,000 --> 00:00:04,000\n"
      "<i>Woof.</i>\n")
  # MultiChallenge: JSONL conversations judged against a pass criterion.
  _jsonl(data_dir / "multichallenge/benchmark.jsonl", [
      {"QUESTION_ID": "mc1", "AXIS": "INSTRUCTION_RETENTION",
       "CONVERSATION": [{"role": "user", "content": "Always answer in French."},
                        {"role": "assistant", "content": "D'accord."},
                        {"role": "user", "content": "What is the capital of Italy?"}],
       "TARGET_QUESTION": "Is the response written in French?", "PASS_CRITERIA": "YES"}])
  # MMLU-Redux 2.0: rows marked as erroneous are excluded.
  _parquet(data_dir / "mmlu_redux/anatomy/test-00000-of-00001.parquet", [
      {"question": "Q ok", "choices": ["a", "b"], "answer": 1, "error_type": "ok",
       "source": "x", "correct_answer": None, "potential_reason": None},
      {"question": "Q bad", "choices": ["a", "b"], "answer": 0, "error_type": "wrong_groundtruth",
       "source": "x", "correct_answer": "B", "potential_reason": "typo"},
      {"question": "Q broken", "choices": [], "answer": 0, "error_type": "ok",
       "source": "x", "correct_answer": None, "potential_reason": None},
  ])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("eval_data")
  write_suite(d)
  return d


def _load(name, data_dir):
  return runner.load_items(benchmarks.BENCHMARKS[name], data_dir)


def test_registry_matches_the_paper():
  fams = [b.family for b in benchmarks.BENCHMARKS.values()]
  assert (fams.count("vlm"), fams.count("llm"), fams.count("video")) == (16, 10, 5)
  assert [b.name for b in benchmarks.select("llm,mmlu,AI2D")][-1] == "ai2d"
  assert len(benchmarks.select("all")) == 31
  with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
    benchmarks.select("nope")


def test_mmlu_reads_only_the_test_split(data_dir):
  loaded = _load("mmlu", data_dir)
  assert [(i.question, i.gold, i.choices) for i in loaded.items] == [
      ("1+1=?", "B", ("1", "2", "3", "4")), ("2+2=?", "D", ("1", "2", "3", "4")),
      ("0+1=?", "A", ("1", "2", "3", "4"))]
  assert all(i.mode is Mode.CHOICE for i in loaded.items)


def test_ai2d_images_and_index_answers(data_dir):
  items = _load("ai2d", data_dir).items
  assert [i.gold for i in items] == ["B", "A"]
  assert items[0].images[0].data == png()
  assert len({i.uid for i in items}) == 2


def test_mathvista_from_a_save_to_disk_directory(data_dir):
  items = {i.uid: i for i in _load("mathvista", data_dir).items}
  assert (items["1"].mode, items["1"].gold, items["1"].choices) == (Mode.CHOICE, "B",
                                                                    ("3", "7", "5"))
  assert (items["2"].mode, items["2"].meta) == (Mode.NUMERIC, {"precision": 0})
  assert (items["3"].mode, items["3"].meta) == (Mode.NUMERIC, {"precision": 2})
  assert items["4"].mode is Mode.EXACT
  # The raw question is used, never the `query` with its format hint.
  assert "Hint" not in prompts.user_text(items["2"])


def test_gpqa_shuffle_is_seeded_by_record_id(data_dir):
  first = _load("gpqa_diamond", data_dir).items
  second = _load("gpqa_diamond", data_dir).items
  assert [(i.choices, i.gold) for i in first] == [(i.choices, i.gold) for i in second]
  for item, correct in zip(first, ["water", "hydrogen"]):
    assert item.choices[ord(item.gold) - ord("A")] == correct
    assert sorted(item.choices) == sorted(set(item.choices))
  assert "sand, wet" in first[0].choices


def test_videomme_subtitles_and_videos(data_dir):
  plain = _load("videomme", data_dir).items[0]
  sub = _load("videomme_sub", data_dir).items[0]
  assert plain.choices == ("1", "2", "3", "4") and plain.gold == "C"
  assert plain.context == ""
  assert sub.context == "This video's subtitles are listed below:\nLook, three dogs!\nWoof."
  assert plain.video.path.endswith("videomme/data/abc.mp4")
  text = prompts.user_text(sub)
  assert text.index("three dogs") < text.index("How many dogs") < text.index("C. 3")


def test_mvbench_json_and_video_tree(data_dir):
  item = _load("mvbench", data_dir).items[0]
  assert (item.gold, item.choices) == ("B", ("sat down", "stood up", "ran"))
  assert item.video.path.endswith("mvbench/video/star/clip1.mp4")


def test_ocrbench_v2_halves_share_one_release(data_dir):
  en, zh = _load("ocrbench_v2_en", data_dir), _load("ocrbench_v2_zh", data_dir)
  assert [i.uid for i in en.items] == ["1", "2"] and [i.uid for i in zh.items] == ["3"]
  assert en.skipped["excluded"] == 1 and zh.skipped["excluded"] == 2
  assert en.items[1].meta == {"type": "text grounding en", "bbox": [10, 10, 20, 20]}


def test_mmlu_redux_excludes_and_counts(data_dir):
  loaded = _load("mmlu_redux", data_dir)
  assert [i.question for i in loaded.items] == ["Q ok"]
  assert loaded.skipped == {"excluded": 1, "bad_row": 1}
  assert "options are empty" in loaded.errors[0] and "anatomy" in loaded.errors[0]


def test_multichallenge_keeps_the_conversation(data_dir):
  item = _load("multichallenge", data_dir).items[0]
  prompt = prompts.build_prompt("multichallenge", item)
  assert [m["role"] for m in prompt.messages] == ["user", "assistant", "user"]
  assert prompt.text == "What is the capital of Italy?"  # No closer: the reply is the answer.


def test_prompt_strips_upstream_instructions_and_appends_closer(data_dir):
  item = _load("aime25", data_dir).items[0]
  prompt = prompts.build_prompt("aime25", item)
  assert prompt.uid == "aime25/0"
  assert prompt.text == templates.rl_prompt("Find $1+1$.")
  assert prompt.text.count("boxed") == 1
  mc = _load("mmlu", data_dir).items[0]
  assert prompts.user_text(mc) == templates.rl_prompt("1+1=?\nA. 1\nB. 2\nC. 3\nD. 4")


def test_missing_data_is_a_clear_error(tmp_path):
  with pytest.raises(loaders.DataError, match="benchmark data not found"):
    runner.load_items(benchmarks.BENCHMARKS["mmlu"], tmp_path)
  (tmp_path / "mmlu").mkdir()
  (tmp_path / "mmlu/test.jsonl").write_text('{"question": "q"}\nnot json\n')
  with pytest.raises(loaders.DataError, match=r"test.jsonl:2: invalid JSON"):
    runner.load_items(benchmarks.BENCHMARKS["mmlu"], tmp_path)


def test_split_missing_is_named(tmp_path):
  _parquet(tmp_path / "aime25/train-00000-of-00001.parquet", [{"problem": "p", "answer": "1"}])
  with pytest.raises(loaders.DataError, match="splits \\['train'\\], not 'test'"):
    runner.load_items(benchmarks.BENCHMARKS["aime25"], tmp_path)


B64_PNG = "data:image/png;base64," + __import__("base64").b64encode(png()).decode()

# One published row per remaining adapter: (benchmark, row, expected (gold, mode, choices)).
ROWS = [
    ("babyvision", {"taskId": 7, "question": "Which one differs?", "image": _image(),
                    "ansType": "choice", "options": ["a", "b", "c"], "choiceAns": 2,
                    "blankAns": None}, ("C", Mode.CHOICE, ("a", "b", "c"))),
    ("babyvision", {"taskId": 8, "question": "How many blocks?", "image": _image(),
                    "ansType": "blank", "options": None, "choiceAns": None, "blankAns": "12"},
     ("12", Mode.MATH, ())),
    ("charxiv", {"figure_path": "images/0.jpg", "reasoning_q": "Which year peaks?",
                 "reasoning_a": "2019", "image": _image()}, ("2019", Mode.JUDGE, ())),
    ("dynamath", {"id": 3, "question": "Area?", "decoded_image": _image(), "ground_truth": "0.125",
                  "answer_type": "float", "_file": "data/sample_variant1-0.parquet"},
     ("0.125", Mode.NUMERIC, ())),
    ("dynamath", {"id": 4, "question": "Which? A: 1 B: 2", "decoded_image": _image(),
                  "ground_truth": "B", "answer_type": "multiple choice"}, ("B", Mode.CHOICE, ())),
    ("embspatial", {"question_id": "q1", "question": "Where is the lamp?",
                    "answer_options": ["left", "right"], "answer": 1, "image": B64_PNG},
     ("B", Mode.CHOICE, ("left", "right"))),
    ("mathverse", {"sample_index": "5", "question": "Choices: A:1 B:2", "answer": "B",
                   "question_type": "multi-choice", "image": _image()}, ("B", Mode.CHOICE, ())),
    ("mathverse", {"sample_index": "6", "question": "Find x.", "answer": "3",
                   "question_type": "free-form", "image": _image()}, ("3", Mode.MATH, ())),
    ("mathvision", {"id": "1", "question": "Which?", "options": ["1", "2", "3", "4", "5"],
                    "answer": "C", "decoded_image": _image()},
     ("C", Mode.CHOICE, ("1", "2", "3", "4", "5"))),
    ("mathvision", {"id": "2", "question": "How many?", "options": [], "answer": "7",
                    "decoded_image": _image()}, ("7", Mode.MATH, ())),
    ("mmmu_pro", {"id": "validation_Art_1", "question": "<image 1> and <image 2>: which?",
                  "options": "['oil', 'ink', 'clay']", "answer": "C", "image_1": _image(),
                  "image_2": _image(), "image_3": None},
     ("C", Mode.CHOICE, ("oil", "ink", "clay"))),
    ("visualpuzzles", {"id": 1, "category": "algorithmic", "image": _image(), "question": "Next?",
                       "options": ["a", "b", "c", "d"], "answer": "D"},
     ("D", Mode.CHOICE, ("a", "b", "c", "d"))),
    ("vlms_are_blind", {"task": "Line Plot Intersections", "image": _image(),
                        "prompt": "How many times do the lines touch? Answer with a number in "
                                  "curly brackets, e.g., {5}.", "groundtruth": "2",
                        "metadata": "{}"}, ("2", Mode.EXACT, ())),
    ("wemath", {"ID": "1@1", "split": "testmini", "question": "Which angle?",
                "option": "A. 30°; B. 60°", "answer": "B", "image_path": _image()},
     ("B", Mode.CHOICE, ())),
    ("aime26", {"problem_idx": 1, "problem": "Find n.", "answer": 70}, ("70", Mode.MATH, ())),
    ("ceval", {"id": 0, "question": "1+2=?", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "C",
               "explanation": "", "_file": "accountant/val-00000-of-00001.parquet"},
     ("C", Mode.CHOICE, ("1", "2", "3", "4"))),
    ("hle", {"id": "h1", "question": "What is 6*7?", "image": B64_PNG, "answer": "42",
             "answer_type": "exactMatch"}, ("42", Mode.JUDGE, ())),
    ("hle", {"id": "h2", "question": "Pick.\nA. x\nB. y", "image": "", "answer": "B",
             "answer_type": "multipleChoice"}, ("B", Mode.CHOICE, ())),
    ("imo_answerbench", {"Problem ID": "imo-bench-algebra-001", "Problem": "Find all n.",
                         "Short Answer": "$n = 3$", "Category": "Algebra"},
     ("$n = 3$", Mode.JUDGE, ())),
    ("mmlu_pro", {"question_id": 70, "question": "q", "options": list("abcdefghij"), "answer": "I",
                  "answer_index": 8}, ("I", Mode.CHOICE, tuple("abcdefghij"))),
    ("mmvu", {"id": "v1", "question": "What happens?", "choices": {"A": "x", "B": "y"},
              "answer": "B", "question_type": "multiple-choice",
              "video": "https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main/videos/Art/"
                       "0.mp4"},
     ("B", Mode.CHOICE, ("x", "y"))),
    ("mmvu", {"id": "v2", "question": "Why?", "choices": None, "answer": "gravity",
              "question_type": "open-ended", "video": "videos/Art/0.mp4"},
     ("gravity", Mode.JUDGE, ())),
    ("video_mmmu", {"id": "validation_Art_1", "question": "Which?", "options": ["a", "b"],
                    "answer": "A", "question_type": "multiple-choice", "image": None},
     ("A", Mode.CHOICE, ("a", "b"))),
]


@pytest.mark.parametrize("name, row, expected", ROWS, ids=[f"{r[0]}-{i}" for i, r in
                                                           enumerate(ROWS)])
def test_adapter_reads_the_published_fields(tmp_path, name, row, expected):
  for video in ("videos/Art/0.mp4", "videos/Bio/0.mp4", "videos/validation_Art_1.mp4"):
    (tmp_path / video).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / video).write_bytes(b"\x00")
  item = benchmarks.BENCHMARKS[name].adapter(dict(row), tmp_path)
  assert (item.gold, item.mode, item.choices) == expected
  images = [v for k, v in row.items() if k.startswith(("image", "decoded_image")) and v]
  assert len(item.images) == len(images)
  assert all(i.data == png() for i in item.images)
  text = prompts.user_text(item)
  assert "curly" not in text and text.endswith(templates.RL_CLOSER)


def test_dynamath_variants_are_distinct_and_copies_are_not(tmp_path):
  row = {"id": "3", "question": "Area?", "image": "images/3.png", "ground_truth": "2",
         "answer_type": "float", "subject": "x", "knowledge_level": "y"}
  variants = [dict(row, decoded_image=_image(c)) for c in ((1, 1, 1), (2, 2, 2))]
  _parquet(tmp_path / "dynamath/data/sample_variant1-00000-of-00001.parquet", variants[:1])
  _parquet(tmp_path / "dynamath/data/sample_variant2-00000-of-00001.parquet", variants[1:])
  _parquet(tmp_path / "dynamath/data/sample_all-00000-of-00001.parquet", variants)
  loaded = runner.load_items(benchmarks.BENCHMARKS["dynamath"], tmp_path)
  assert len(loaded.items) == 2 and loaded.skipped == {"duplicate_uid": 2}


def test_image_lists_are_flattened():
  row = {"ID": "1", "question": "q", "option": "A. 1; B. 2", "answer": "A",
         "image_path": _image(), "image": [_image(), _image()]}
  assert len(benchmarks.wemath(row, pathlib.Path(".")).images) == 3


def test_mmvet_original_release_layout(tmp_path):
  (tmp_path / "mmvet/images").mkdir(parents=True)
  (tmp_path / "mmvet/images/v1.jpg").write_bytes(png())
  (tmp_path / "mmvet/mm-vet.json").write_text(json.dumps({
      "v1": {"imagename": "v1.jpg", "capability": ["ocr"], "question": "What?", "answer": "x"},
      "v2": {"imagename": "missing.jpg", "capability": ["ocr"], "question": "Q", "answer": "y"}}))
  loaded = runner.load_items(benchmarks.BENCHMARKS["mmvet"], tmp_path)
  (item,) = loaded.items
  assert (item.uid, item.gold, item.images[0].path) == (
      "v1", "x", str(tmp_path / "mmvet/images/v1.jpg"))
  assert loaded.skipped == {"bad_row": 1} and "'missing.jpg' not found" in loaded.errors[0]


def test_ids_stay_unique_across_files():
  ceval = benchmarks.BENCHMARKS["ceval"].adapter
  row = {"id": 0, "question": "q", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "A"}
  uids = {ceval(dict(row, _file=f"{s}/val-00000-of-00001.parquet"), None).uid
          for s in ("law", "art")}
  assert len(uids) == 2


def test_ambiguous_or_missing_videos_are_row_errors(tmp_path):
  for video in ("a/0.mp4", "b/0.mp4"):
    (tmp_path / video).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / video).write_bytes(b"\x00")
  row = {"id": "v", "question": "q", "choices": {"A": "x"}, "answer": "A",
         "question_type": "multiple-choice", "video": "0.mp4"}
  with pytest.raises(benchmarks.RowError, match="2 matching files"):
    benchmarks.mmvu(row, tmp_path)
  with pytest.raises(benchmarks.RowError, match="0 matching files"):
    benchmarks.mmvu(dict(row, video="zzz.mp4"), tmp_path)
  assert benchmarks.mmvu(dict(row, video="b/0.mp4"), tmp_path).video.path.endswith("b/0.mp4")


def _mmmu_pro(root, settings=("standard (10 options)", "vision")):
  """MMMU/MMMU_Pro as published: one folder per config, `test-*.parquet`; the vision setting has
  no question column (the question is inside the screenshot)."""
  options = str(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])
  if "standard (10 options)" in settings:
    _parquet(root / "mmmu_pro/standard (10 options)/test-00000-of-00001.parquet", [
        {"id": f"test_Art_{i}", "question": "<image 1> Which?", "options": options,
         "answer": "B", "image_1": _image(), "subject": "Art"} for i in range(3)])
  if "vision" in settings:
    _parquet(root / "mmmu_pro/vision/test-00000-of-00001.parquet", [
        {"id": "test_Art_0", "image": _image(), "options": options, "answer": "C",
         "subject": "Art"}])


def test_mmmu_pro_reads_both_settings(tmp_path):
  _mmmu_pro(tmp_path)
  items = runner.load_items(benchmarks.BENCHMARKS["mmmu_pro"], tmp_path).items
  assert sorted(i.uid for i in items) == ["standard (10 options)/test_Art_0",
                                          "standard (10 options)/test_Art_1",
                                          "standard (10 options)/test_Art_2", "vision/test_Art_0"]
  vision = next(i for i in items if i.meta["setting"] == "vision")
  assert vision.gold == "C" and len(vision.images) == 1 and len(vision.choices) == 10
  empty = tmp_path / "only_standard"
  _mmmu_pro(empty, settings=("standard (10 options)",))
  with pytest.raises(loaders.DataError, match="setting 'vision' not found"):
    runner.load_items(benchmarks.BENCHMARKS["mmmu_pro"], empty)


def test_mmmu_pro_score_is_the_mean_of_its_settings(tmp_path):
  from zppo_jax.eval import report
  from zppo_jax.eval.items import Verdict
  (tmp_path / "samples").mkdir()
  verdicts = [Verdict(f"standard (10 options)/test_Art_{i}", 1.0, "parser:choice", "B", "B", "B")
              for i in range(3)] + [Verdict("vision/test_Art_0", 0.0, "parser:choice", "A", "C",
                                            "A")]
  (tmp_path / "samples/mmmu_pro.jsonl").write_text(
      "".join(json.dumps(v.to_json()) + "\n" for v in verdicts))
  summary = report.summarize(tmp_path)
  mmmu = summary["benchmarks"]["mmmu_pro"]
  assert mmmu["settings"] == {"standard (10 options)": 100.0, "vision": 0.0}
  assert mmmu["accuracy"] == 50.0           # not the pooled 75.0
  assert "| MMMU-Pro: vision | | 0.0 |" in report.markdown(summary)


def test_aime25_loads_from_both_published_copies(tmp_path):
  # opencompass/AIME2025: aime2025-I.jsonl / aime2025-II.jsonl with `question`.
  _jsonl(tmp_path / "opencompass/aime25/aime2025-I.jsonl",
         [{"question": "Find $a$.", "answer": "70"}, {"question": "Find $b$.", "answer": "588"}])
  _jsonl(tmp_path / "opencompass/aime25/aime2025-II.jsonl",
         [{"question": "Find $a$.", "answer": 16}])
  loaded = runner.load_items(benchmarks.BENCHMARKS["aime25"], tmp_path / "opencompass")
  assert sorted(i.gold for i in loaded.items) == ["16", "588", "70"] and not loaded.skipped
  # math-ai/aime25: test.jsonl with `problem` and `id`.
  _jsonl(tmp_path / "mathai/aime25/test.jsonl", [{"id": "0", "problem": "Find $c$.",
                                                  "answer": "2"}])
  item = runner.load_items(benchmarks.BENCHMARKS["aime25"], tmp_path / "mathai").items[0]
  assert (item.uid, item.question, item.gold) == ("0", "Find $c$.", "2")


def test_missing_videos_are_reported_once_with_the_count(tmp_path):
  rows = [{"id": f"v{i}", "question": "What happens?", "answer": "x", "choices": None,
           "question_type": "open-ended", "video": f"videos/Art/{i}.mp4"} for i in range(5)]
  (tmp_path / "mmvu").mkdir()
  (tmp_path / "mmvu/validation.json").write_text(json.dumps(rows))
  (tmp_path / "mmvu/videos/Art").mkdir(parents=True)
  (tmp_path / "mmvu/videos/Art/4.mp4").write_bytes(b"\x00")
  loaded = runner.load_items(benchmarks.BENCHMARKS["mmvu"], tmp_path)
  assert [i.uid for i in loaded.items] == ["v4"]
  assert dict(loaded.skipped) == {"missing_video": 4}
  assert len(loaded.errors) == 1
  assert "4 rows skipped" in loaded.errors[0] and "'videos/Art/0.mp4'" in loaded.errors[0]
