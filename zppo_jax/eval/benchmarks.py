"""The 31 benchmarks of the paper (ZPPO_SPEC.md §8): where their fields live, how each is scored.

Each `Benchmark` names its published source and split and has an adapter that turns one published
row into an `EvalItem`. Adapters read the published column names; a row missing a required field
raises `RowError` (the loader skips it and counts it, naming the row). Data is read from
``<data_dir>/<name>`` (see `loaders.py` for the accepted layouts).
"""
import ast
import base64
import binascii
import dataclasses
import hashlib
import json
import pathlib
import random
import re
from collections.abc import Callable

from zppo_jax.eval.items import LETTERS, EvalItem, Media, Mode


class RowError(ValueError):
  """One published row cannot be turned into an item; the message names the field."""


class MissingMedia(RowError):
  """A row's video file is not in the local copy (counted once per benchmark, not per row).

  Attributes:
    path: the file the row names, as published.
  """

  def __init__(self, path: str, message: str):
    super().__init__(message)
    self.path = path


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One benchmark of the suite.

  Attributes:
    name: registry key and data sub-directory (``mathvista``).
    title: the name the paper's tables use (``MathVista``).
    family: ``vlm``, ``llm`` or ``video``; family averages are taken over these.
    source: the published dataset (Hub id, config) the adapter's field names follow.
    split: the split evaluated, or None when the release has a single one.
    adapter: ``(row, root) -> EvalItem | None``; None skips a row by design (counted).
    config: sub-directory of a multi-config release, used when present under the data directory.
    directory: the data sub-directory when it is not ``name`` (two benchmarks read one release).
    settings: configs evaluated separately whose accuracies are averaged into the benchmark's
      (MMMU-Pro: ``standard (10 options)`` and ``vision``); items are read from each config's
      sub-directory, their uids prefixed with ``<setting>/``.
  """
  name: str
  title: str
  family: str
  source: str
  split: str | None
  adapter: Callable[[dict, pathlib.Path], EvalItem | None]
  config: str | None = None
  directory: str | None = None
  settings: tuple[str, ...] = ()

  @property
  def data_name(self) -> str:
    return self.directory or self.name


def field(row: dict, *names: str, required: bool = True):
  """The first present, non-null field of ``names``; `RowError` if none and ``required``."""
  for n in names:
    if row.get(n) is not None:
      return row[n]
  if required:
    raise RowError(f"missing field {' / '.join(names)!r}")
  return None


def media(value, root: pathlib.Path, *, what: str = "image") -> Media:
  """A published image/video cell as `Media`.

  Accepts a `datasets` Image struct (``{"bytes": ..., "path": ...}``), raw bytes, a base64 data
  URI or string (HLE, TSV releases), or a path relative to the benchmark directory.
  """
  if isinstance(value, dict):
    if value.get("bytes"):
      return Media(data=bytes(value["bytes"]))
    value = value.get("path")
  if isinstance(value, (bytes, bytearray)):
    return Media(data=bytes(value))
  if isinstance(value, str) and value:
    if value.startswith("data:"):
      value = value.split(",", 1)[-1]
    elif len(value) < 1024:  # A path: relative to the release, or under its images/ folder.
      for candidate in (root / value, root / "images" / value):
        if candidate.is_file():
          return Media(path=str(candidate))
      raise RowError(f"{what} file {value!r} not found under {root}")
    try:
      return Media(data=base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
      raise RowError(f"{what} is neither a file nor base64") from None
  raise RowError(f"unreadable {what} cell of type {type(value).__name__}")


def _images(row: dict, root: pathlib.Path, *names: str) -> tuple[Media, ...]:
  """The images in the named cells, in order; a cell may hold one image or a list of them."""
  out = []
  for n in names:
    cell = row.get(n)
    for value in cell if isinstance(cell, (list, tuple)) else [cell]:
      if value not in (None, "", {}):
        out.append(media(value, root))
  return tuple(out)


def _options(value) -> tuple[str, ...]:
  """Options published as a list, a Python/JSON list literal, or a ``{letter: text}`` dict."""
  if isinstance(value, str):
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      raise RowError("options string is not a list literal") from None
  if isinstance(value, dict):
    value = [value[k] for k in sorted(value)]
  if not isinstance(value, (list, tuple)) or not value:
    raise RowError("options are empty or not a list")
  # Some releases write "A. text" in each option; the prompt adds its own letters.
  texts = [str(v) for v in value]
  if all(re.match(rf"{LETTERS[i]}[.:)]\s", t) for i, t in enumerate(texts)):
    texts = [t[2:].strip() for t in texts]
  return tuple(texts)


def _letter(value, n_options: int) -> str:
  """A gold answer given as a letter or a 0-based index, as a letter."""
  text = str(value).strip()
  if text.isdigit() and int(text) < n_options:
    return LETTERS[int(text)]
  if len(text) == 1 and text.upper() in LETTERS[:n_options]:
    return text.upper()
  raise RowError(f"answer {text!r} is not a letter or index among {n_options} options")


def _letter_of_text(answer, options: tuple[str, ...]) -> str:
  hits = [i for i, o in enumerate(options) if o.strip() == str(answer).strip()]
  if len(hits) != 1:
    raise RowError(f"answer {answer!r} is not exactly one of the options")
  return LETTERS[hits[0]]


def _uid(row: dict, *names: str) -> str:
  """An id that restarts in every file of a release (per subject, per variant), made unique."""
  stem = pathlib.Path(row.get("_file", "")).parent / pathlib.Path(row.get("_file", "")).stem
  return f"{stem.as_posix()}:{field(row, *names)}"


def _text_uid(row: dict, text: str) -> str:
  """For releases without ids: a digest of the file and the question."""
  return hashlib.sha1(f"{row.get('_file', '')}\n{text}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# VLM adapters.

def ai2d(row, root):
  options = _options(field(row, "options"))
  return EvalItem(uid=_text_uid(row, str(field(row, "question")) + str(options)),
                  question=field(row, "question"), gold=_letter(field(row, "answer"), len(options)),
                  mode=Mode.CHOICE, choices=options, images=_images(row, root, "image"))


def babyvision(row, root):
  image = _images(row, root, "image")
  uid, question = str(field(row, "taskId", "id")), field(row, "question")
  if str(field(row, "ansType")).lower() == "choice":
    options = _options(field(row, "options", "choices"))
    return EvalItem(uid, question, _letter(field(row, "choiceAns"), len(options)), Mode.CHOICE,
                    choices=options, images=image)
  return EvalItem(uid, question, str(field(row, "blankAns")), Mode.MATH, images=image)


def charxiv(row, root):
  # The reasoning questions; the paper's single format scores them like every free-form answer.
  return EvalItem(str(field(row, "figure_path", "original_id")), field(row, "reasoning_q"),
                  str(field(row, "reasoning_a")), Mode.JUDGE, images=_images(row, root, "image"))


def dynamath(row, root):
  kind = str(field(row, "answer_type")).lower()
  image = _images(row, root, "decoded_image") or _images(row, root, "image")
  question, gold = field(row, "question"), str(field(row, "ground_truth"))
  # Ten variants share each id and differ in the image; some releases also hold them all again
  # in one `sample_all` split. The uid names the variant by its content, so a copy is a duplicate.
  digest = hashlib.sha1(question.encode() + gold.encode()
                        + b"".join(m.data or m.path.encode() for m in image)).hexdigest()[:12]
  uid = f"{field(row, 'id')}:{digest}"
  if "choice" in kind:
    return EvalItem(uid, question, _letter(gold, 26), Mode.CHOICE, images=image)
  if kind == "float":
    # DynaMath accepts floats within 1e-3 absolute (its `float` answers have 3 decimals).
    return EvalItem(uid, question, gold, Mode.NUMERIC, images=image, meta={"abs_tol": 1e-3})
  return EvalItem(uid, question, gold, Mode.MATH, images=image)


def embspatial(row, root):
  options = _options(field(row, "answer_options", "options"))
  return EvalItem(str(field(row, "question_id", "id")), field(row, "question"),
                  _letter(field(row, "answer"), len(options)), Mode.CHOICE, choices=options,
                  images=_images(row, root, "image"))


def infovqa(row, root):
  answers = field(row, "answers")
  if not isinstance(answers, (list, tuple)) or not answers:
    raise RowError("answers must be a non-empty list")
  return EvalItem(str(field(row, "questionId")), field(row, "question"), [str(a) for a in answers],
                  Mode.ANLS, images=_images(row, root, "image"))


def mathverse(row, root):
  multi = "choice" in str(field(row, "question_type")).lower()
  gold = str(field(row, "answer")).strip()
  return EvalItem(str(field(row, "sample_index")), field(row, "question"),
                  _letter(gold, 26) if multi else gold, Mode.CHOICE if multi else Mode.MATH,
                  images=_images(row, root, "image"))


def mathvision(row, root):
  options = tuple(field(row, "options", required=False) or ())
  image = _images(row, root, "decoded_image") or _images(row, root, "image")
  gold = str(field(row, "answer")).strip()
  if options:
    return EvalItem(str(field(row, "id")), field(row, "question"), _letter(gold, len(options)),
                    Mode.CHOICE, choices=_options(options), images=image)
  return EvalItem(str(field(row, "id")), field(row, "question"), gold, Mode.MATH, images=image)


def mathvista(row, root):
  image = _images(row, root, "decoded_image") or _images(row, root, "image")
  uid, question, answer = str(field(row, "pid")), field(row, "question"), field(row, "answer")
  if field(row, "question_type") == "multi_choice":
    options = _options(field(row, "choices"))
    return EvalItem(uid, question, _letter_of_text(answer, options), Mode.CHOICE, choices=options,
                    images=image)
  kind = field(row, "answer_type")
  if kind in ("integer", "float"):
    precision = field(row, "precision", required=False)
    meta = {"precision": int(precision)} if kind == "float" and precision is not None else {}
    if kind == "integer":
      meta = {"precision": 0}
    return EvalItem(uid, question, str(answer), Mode.NUMERIC, images=image, meta=meta)
  return EvalItem(uid, question, str(answer), Mode.EXACT, images=image)


def mmmu_pro(row, root):
  options = _options(field(row, "options"))
  images = _images(row, root, "image", *(f"image_{i}" for i in range(1, 8)))
  # The vision setting has the question only inside the image.
  question = row.get("question") or "Answer the question shown in the image."
  return EvalItem(str(field(row, "id")), question, _letter(field(row, "answer"), len(options)),
                  Mode.CHOICE, choices=options, images=images)


def mmvet(row, root):
  # lmms-lab/MMVet rows, or the original mm-vet.json ({"v1": {"imagename": ...}} + images/).
  return EvalItem(str(field(row, "question_id", "_key")), field(row, "question"),
                  str(field(row, "answer")), Mode.JUDGE,
                  images=_images(row, root, "image") or _images(row, root, "imagename"))


def _ocrbench_v2(language: str):
  def adapter(row, root):
    kind = str(field(row, "type"))
    if not kind.lower().endswith(f" {language}"):
      return None  # The other language's half of the release.
    answers = field(row, "answers")
    if isinstance(answers, str):
      answers = [answers]
    return EvalItem(str(field(row, "id")), field(row, "question"), [str(a) for a in answers],
                    Mode.OCR, images=_images(row, root, "image"),
                    meta={"type": kind, "bbox": list(row.get("bbox") or [])})
  return adapter


def visualpuzzles(row, root):
  options = _options(field(row, "options"))
  return EvalItem(str(field(row, "id")), field(row, "question"),
                  _letter(field(row, "answer"), len(options)), Mode.CHOICE, choices=options,
                  images=_images(row, root, "image"))


def vlms_are_blind(row, root):
  prompt = str(field(row, "prompt"))
  gold = str(field(row, "groundtruth", "ground_truth", "answer")).strip().strip("{}").strip()
  return EvalItem(_text_uid(row, prompt + str(row.get("metadata", "")) + gold), prompt, gold,
                  Mode.EXACT, images=_images(row, root, "image"))


def wemath(row, root):
  # Options are one string, "A. x; B. y; ..." — they stay in the question as published.
  question = f"{field(row, 'question')}\n{field(row, 'option')}"
  return EvalItem(str(field(row, "ID")), question, _letter(field(row, "answer"), 26), Mode.CHOICE,
                  images=_images(row, root, "image_path", "image"))


# --------------------------------------------------------------------------------------------
# LLM adapters.

def _math_problem(id_fields: tuple[str, ...], question_fields: tuple[str, ...],
                  answer_fields: tuple[str, ...], mode: Mode = Mode.MATH):
  def adapter(row, root):
    question = field(row, *question_fields)
    uid = str(row[id_fields[0]]) if row.get(id_fields[0]) is not None else _text_uid(row, question)
    return EvalItem(uid, question, str(field(row, *answer_fields)).strip(), mode)
  return adapter


def ceval(row, root):
  options = tuple(str(field(row, k)) for k in "ABCD")
  return EvalItem(_uid(row, "id"), field(row, "question"), _letter(field(row, "answer"), 4),
                  Mode.CHOICE, choices=options)


def gpqa(row, root):
  correct = str(field(row, "Correct Answer")).strip()
  wrong = [str(field(row, f"Incorrect Answer {i}")).strip() for i in (1, 2, 3)]
  uid = str(field(row, "Record ID"))
  # The release lists the correct answer first; the order is shuffled with a seed from the id,
  # so every run and every model sees the same order.
  options = [correct, *wrong]
  random.Random(int(hashlib.sha1(uid.encode()).hexdigest(), 16)).shuffle(options)
  return EvalItem(uid, field(row, "Question"), LETTERS[options.index(correct)], Mode.CHOICE,
                  choices=tuple(options))


def hle(row, root):
  images = _images(row, root, "image")
  uid, question, answer = str(field(row, "id")), field(row, "question"), str(field(row, "answer"))
  if field(row, "answer_type") == "multipleChoice":
    return EvalItem(uid, question, _letter(answer.strip(), 26), Mode.CHOICE, images=images)
  return EvalItem(uid, question, answer, Mode.JUDGE, images=images)


def mmlu(row, root):
  options = _options(field(row, "choices"))
  question = field(row, "question")
  uid = str(row["id"]) if row.get("id") is not None else _text_uid(row, question + str(options))
  return EvalItem(uid, question, _letter(field(row, "answer"), len(options)), Mode.CHOICE,
                  choices=options)


def mmlu_pro(row, root):
  options = _options(field(row, "options"))
  return EvalItem(str(field(row, "question_id")), field(row, "question"),
                  _letter(field(row, "answer"), len(options)), Mode.CHOICE, choices=options)


def mmlu_redux(row, root):
  # Questions the re-annotation marked as erroneous (error_type != "ok") are left out, counted.
  if str(field(row, "error_type", required=False) or "ok") != "ok":
    return None
  return mmlu(row, root)


def multichallenge(row, root):
  conversation = field(row, "CONVERSATION")
  if isinstance(conversation, str):
    conversation = json.loads(conversation)
  turns = tuple((str(t["role"]), str(t["content"])) for t in conversation)
  if not turns or turns[-1][0] != "user":
    raise RowError("CONVERSATION must end with a user turn")
  return EvalItem(str(field(row, "QUESTION_ID")), turns[-1][1],
                  str(field(row, "PASS_CRITERIA")).strip().upper(), Mode.RUBRIC,
                  history=turns[:-1], closer=False,
                  meta={"target_question": str(field(row, "TARGET_QUESTION"))})


# --------------------------------------------------------------------------------------------
# Video adapters.

def _video(row, root, *names: str) -> Media:
  """The local file of a video cell: a path relative to the release, or a URL into the release.

  For ``.../videos/Art/0.mp4`` the suffixes ``videos/Art/0.mp4``, ``Art/0.mp4``, ``0.mp4`` are
  tried under the release directory (and its ``videos/``, ``video/``, ``data/``), longest first;
  a bare file name found once anywhere below the release is accepted, found twice it is an error.
  """
  value = field(row, *names)
  path = str(value.get("path") if isinstance(value, dict) else value)
  parts = path.split("://", 1)[-1].split("/")
  parts = parts[1:] if "://" in path else parts  # Drop the URL's host.
  for k in range(len(parts)):
    suffix = "/".join(parts[k:])
    for prefix in ("", "videos/", "video/", "data/"):
      if (root / prefix / suffix).is_file():
        return Media(path=str(root / prefix / suffix))
  hits = sorted(root.rglob(parts[-1])) if root.is_dir() else []
  if not hits:
    raise MissingMedia(path, f"video {path!r}: 0 matching files under {root}")
  if len(hits) != 1:
    raise RowError(f"video {path!r}: {len(hits)} matching files under {root}")
  return Media(path=str(hits[0]))


def mmvu(row, root):
  options = _options(field(row, "choices")) if row.get("choices") else ()
  uid, question, answer = str(field(row, "id")), field(row, "question"), str(field(row, "answer"))
  video = _video(row, root, "video")
  if "multiple" in str(field(row, "question_type")).lower():
    gold = _letter(answer, len(options)) if len(answer.strip()) == 1 else _letter_of_text(answer,
                                                                                        options)
    return EvalItem(uid, question, gold, Mode.CHOICE, choices=options, video=video)
  return EvalItem(uid, question, answer, Mode.JUDGE, video=video)


def mvbench(row, root):
  options = _options(field(row, "candidates"))
  question = field(row, "question")
  return EvalItem(_text_uid(row, str(field(row, "video")) + question), question,
                  _letter_of_text(field(row, "answer"), options), Mode.CHOICE, choices=options,
                  video=_video(row, root, "video"))


def _srt_text(path: pathlib.Path) -> str:
  """The spoken lines of a SubRip file, without indices and timestamps."""
  lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
  keep = [l.strip() for l in lines if l.strip() and not l.strip().isdigit() and "-->" not in l]
  return "\n".join(re.sub(r"<[^>]+>", "", l) for l in keep)


def _videomme(subtitles: bool):
  def adapter(row, root):
    video_id = str(field(row, "videoID"))
    options = _options(field(row, "options"))
    context = ""
    if subtitles:
      srt = next(iter(sorted(root.rglob(f"{video_id}.srt"))), None)
      if srt is not None:  # Videos without speech have no subtitle file.
        context = "This video's subtitles are listed below:\n" + _srt_text(srt)
    return EvalItem(str(field(row, "question_id")), field(row, "question"),
                    _letter(field(row, "answer"), len(options)), Mode.CHOICE, choices=options,
                    video=_video({"v": f"{video_id}.mp4"}, root, "v"), context=context)
  return adapter


def video_mmmu(row, root):
  uid, question = str(field(row, "id")), field(row, "question")
  video = _video({"v": f"{uid}.mp4"}, root, "v")
  images = _images(row, root, "image")
  answer = str(field(row, "answer")).strip()
  if row.get("options"):
    options = _options(row["options"])
    return EvalItem(uid, question, _letter(answer, len(options)), Mode.CHOICE, choices=options,
                    images=images, video=video)
  return EvalItem(uid, question, answer, Mode.JUDGE, images=images, video=video)


# MMMU-Pro's official number is the mean of these two settings (ZPPO_SPEC.md §8).
MMMU_PRO_SETTINGS = ("standard (10 options)", "vision")

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("ai2d", "AI2D", "vlm", "lmms-lab/ai2d", "test", ai2d),
    Benchmark("babyvision", "BabyVision", "vlm", "UnipatAI/BabyVision", "train", babyvision),
    Benchmark("charxiv", "CharXiv", "vlm", "princeton-nlp/CharXiv (reasoning)", "validation",
              charxiv),
    Benchmark("dynamath", "DynaMath", "vlm", "DynaMath/DynaMath_Sample", None, dynamath),
    Benchmark("embspatial", "EmbSpatial", "vlm", "FlagEval/EmbSpatial-Bench", "test", embspatial),
    Benchmark("infovqa", "InfoVQA", "vlm", "lmms-lab/DocVQA InfographicVQA", "validation", infovqa,
              config="InfographicVQA"),
    Benchmark("mathverse", "MathVerse", "vlm", "AI4Math/MathVerse testmini", "testmini", mathverse,
              config="testmini"),
    Benchmark("mathvision", "MathVision", "vlm", "MathLLMs/MathVision", "test", mathvision),
    Benchmark("mathvista", "MathVista", "vlm", "AI4Math/MathVista", "testmini", mathvista),
    Benchmark("mmmu_pro", "MMMU-Pro", "vlm", "MMMU/MMMU_Pro standard (10 options) + vision",
              "test", mmmu_pro, settings=MMMU_PRO_SETTINGS),
    Benchmark("mmvet", "MM-Vet", "vlm", "lmms-lab/MMVet", "test", mmvet),
    Benchmark("ocrbench_v2_en", "OCRBench-v2 EN", "vlm", "ling99/OCRBench_v2", "test",
              _ocrbench_v2("en"), directory="ocrbench_v2"),
    Benchmark("ocrbench_v2_zh", "OCRBench-v2 ZH", "vlm", "ling99/OCRBench_v2", "test",
              _ocrbench_v2("cn"), directory="ocrbench_v2"),
    Benchmark("visualpuzzles", "VisualPuzzles", "vlm", "neulab/VisualPuzzles data.parquet", None,
              visualpuzzles),
    Benchmark("vlms_are_blind", "VLMs-are-Blind", "vlm", "XAI/vlmsareblind", "valid",
              vlms_are_blind),
    Benchmark("wemath", "WeMath", "vlm", "We-Math/We-Math testmini", "testmini", wemath),
    # math-ai/aime25 (`test.jsonl`: id, problem, answer) or opencompass/AIME2025
    # (`aime2025-I.jsonl`, `aime2025-II.jsonl`: question, answer), whichever copy is stored.
    Benchmark("aime25", "AIME25", "llm", "math-ai/aime25 or opencompass/AIME2025", "test",
              _math_problem(("id",), ("problem", "question"), ("answer",))),
    Benchmark("aime26", "AIME26", "llm", "MathArena/aime_2026", "train",
              _math_problem(("problem_idx",), ("problem",), ("answer",))),
    Benchmark("ceval", "C-Eval", "llm", "ceval/ceval-exam (all subjects)", "val", ceval),
    Benchmark("gpqa_diamond", "GPQA-Diamond", "llm", "Idavidrein/gpqa gpqa_diamond.csv", None,
              gpqa),
    Benchmark("hle", "HLE", "llm", "cais/hle", "test", hle),
    Benchmark("imo_answerbench", "IMO-AnswerBench", "llm",
              "google-deepmind/superhuman imobench/answerbench.csv", None,
              _math_problem(("Problem ID",), ("Problem",), ("Short Answer",), Mode.JUDGE)),
    Benchmark("mmlu", "MMLU", "llm", "cais/mmlu all", "test", mmlu, config="all"),
    Benchmark("mmlu_pro", "MMLU-Pro", "llm", "TIGER-Lab/MMLU-Pro", "test", mmlu_pro),
    Benchmark("mmlu_redux", "MMLU-Redux", "llm", "edinburgh-dawg/mmlu-redux-2.0 (all subjects)",
              "test", mmlu_redux),
    Benchmark("multichallenge", "MultiChallenge", "llm", "ScaleAI/MultiChallenge benchmark.jsonl",
              None, multichallenge),
    Benchmark("mmvu", "MMVU", "video", "yale-nlp/MMVU validation.json + videos/", "validation",
              mmvu),
    Benchmark("mvbench", "MVBench", "video", "OpenGVLab/MVBench json/*.json", None, mvbench,
              config="json"),
    Benchmark("videomme", "Video-MME w/o sub", "video", "lmms-lab/Video-MME", "test",
              _videomme(subtitles=False)),
    Benchmark("videomme_sub", "Video-MME w/ sub", "video", "lmms-lab/Video-MME + subtitle/*.srt",
              "test", _videomme(subtitles=True), directory="videomme"),
    Benchmark("video_mmmu", "Video-MMMU", "video", "lmms-lab/VideoMMMU (3 configs)", "test",
              video_mmmu),
]}

FAMILIES = ("vlm", "llm", "video")


def select(names: str | list[str]) -> list[Benchmark]:
  """Benchmarks by comma-separated names, ``all``, or family names (``vlm``, ``llm``, ``video``)."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  chosen: list[Benchmark] = []
  for n in names:
    key = n.lower().replace("-", "_")
    if key == "all":
      picked = list(BENCHMARKS.values())
    elif key in FAMILIES:
      picked = [b for b in BENCHMARKS.values() if b.family == key]
    elif key in BENCHMARKS:
      picked = [BENCHMARKS[key]]
    else:
      raise ValueError(f"unknown benchmark {n!r}; known: all, vlm, llm, video, "
                       + ", ".join(BENCHMARKS))
    chosen += [b for b in picked if b not in chosen]
  return chosen
