"""The CPU demo's set-up: task data, tokenizer, and a warm-started student and teacher, cached.

`prepare(config)` builds, once per demo setting, in `config.demo.cache_dir/<hash>/`:
  tokenizer/   a byte-level BPE tokenizer with the ChatML template (`data.demo_tokenizer`)
  train.jsonl  letter-code questions over `demo.train_levels` (`data.letter_code`)
  eval.jsonl   held-out words of every level (`demo.num_eval` each), `subset` naming the level
  student/     a small Qwen3.5 warm-started by SFT on every level, the rare letters spelled with an
               outdated code (`letter_code.outdated`), plus BCQ / NCQ prompts of the common
               levels and BCQ / NCQ practice on level-3-shaped words with made-up rare digits
  teacher/     a larger Qwen3.5 warm-started by SFT on every level with the code
and points the config's student, teacher, tokenizer and data paths at them. A second run finds the
cache and starts at the RL phase.

With `demo.visual` the questions ask for the sum of the digits drawn in an image (`images/`), the
tokenizer has the Qwen vision tokens, and student and teacher are multimodal checkpoints: the
warm-started text decoders plus a tiny random vision tower (`vision_config`).
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import random
import sys
import time

from zppo_jax.data import demo_task, demo_tokenizer, letter_code, packing
from zppo_jax.rewards.extract import extract_answer
from zppo_jax.zppo import templates


def model_config(config, role: str, vocab_size: int):
  """The demo's tiny Qwen3.5 shapes: a hybrid cycle (GDN layers, then one attention) repeated.

  The released models put attention every 4th layer; the demo's 4-layer models put it every 2nd
  (`demo.attention_every`): with a single attention layer a tiny model learns to read the
  operands out of the prompt several times slower.
  """
  from zppo_jax.models.qwen3_5 import config as model_cfg
  hidden = int(config.demo[f"{role}_hidden"])
  layers = int(config.demo[f"{role}_layers"])
  every = int(config.demo.attention_every)
  return model_cfg.ModelConfig(
      vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
      num_hidden_layers=layers,
      layer_types=tuple("full_attention" if (i + 1) % every == 0 else "linear_attention"
                        for i in range(layers)),
      num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
      linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=hidden // 4,
      linear_value_head_dim=hidden // 4, linear_conv_kernel_dim=4, rope_theta=10_000.0,
      partial_rotary_factor=0.25, mrope_section=_mrope(hidden // 4), tie_word_embeddings=True,
      gdn_chunk_size=32,
      scan_layers=bool(config.student.scan_layers))   # both warm starts train like the student


def vision_config(config, text_cfg):
  """The visual variant's tiny vision tower (Qwen3.5 patching: 16 px patches, 2 x 2 merge)."""
  from zppo_jax.models.qwen3_5.vision_config import VisionConfig
  hidden = int(config.demo.vision_hidden)
  side = int(config.demo.image_size) // 16
  return VisionConfig(depth=int(config.demo.vision_depth), hidden_size=hidden,
                      intermediate_size=2 * hidden, num_heads=2,
                      out_hidden_size=text_cfg.hidden_size, num_position_embeddings=side * side)


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _mrope(head_dim: int) -> tuple[int, int, int]:
  pairs = int(head_dim * 0.25) // 2
  t = pairs - 2 * (pairs // 3)
  return (t, pairs // 3, pairs // 3)


def _key(config) -> str:
  fields = {k: config.demo[k] for k in sorted(config.demo.keys()) if k != "cache_dir"}
  fields["seed"] = config.seed
  blob = json.dumps(fields, sort_keys=True, default=list)
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _candidate(text: str) -> str:
  """A rollout as a candidate with compression off: the text after the think block."""
  return templates.strip_think(text).strip()


CANDIDATE_EVERY = 4   # the student's warm start has BCQ / NCQ prompts of every 4th record


def _student_pairs(records, code, old, rng: random.Random, practice: int
                   ) -> list[tuple[str, str]]:
  """(user text, response) pairs of the student's warm start: plain prompts (level-3 words spelled
  with the `old` code, the student's misconception), BCQ / NCQ prompts of every `CANDIDATE_EVERY`-th
  common-level record, and `practice` BCQ / NCQ prompts of level-3-shaped words whose rare letter's
  digit is drawn per example, so the student learns to read candidates (copy the one that agrees
  with the letters it knows; avoid the digits an NCQ lists as wrong) but no rare letter's digit."""
  pairs = []
  for i, r in enumerate(records):
    word = letter_code.word_of(r["question"])
    rare = any(c in letter_code.RARE for c in word)
    response = letter_code.solution(word, old if rare else code)
    pairs.append((templates.rl_prompt(r["question"]), response))
    if rare or i % CANDIDATE_EVERY:
      continue
    wrongs = [letter_code.solution(word, letter_code.perturbed(word, code, rng))
              for _ in range(rng.randint(1, 3))]
    pairs.append((templates.rl_prompt(_bcq(r["question"], response, wrongs[0], rng)), response))
    pairs.append((templates.rl_prompt(_ncq(r["question"], wrongs)), response))
  for i in range(practice):
    word = letter_code.practice_word(rng)
    [letter] = [c for c in word if c in letter_code.RARE]
    local = dict(code, **{letter: rng.randint(1, 9)})
    others = [d for d in range(1, 10) if d != local[letter]]
    response = letter_code.solution(word, local)
    q = letter_code.question(word)
    if i % 2:   # NCQ: one or more wrong rollouts, each with one of at most two wrong digits
      digits = rng.sample(others, rng.randint(1, 2))
      wrongs = [letter_code.solution(word, dict(local, **{letter: rng.choice(digits)}))
                for _ in range(rng.randint(1, 8))]
      pairs.append((templates.rl_prompt(_ncq(q, wrongs)), response))
      continue
    wrong = dict(local, **{letter: rng.choice(others)})
    if i % 4 == 0:   # the wrong candidate also gets a common letter wrong: the right one agrees
      wrong = letter_code.perturbed(word, wrong, rng,
                                    positions=[j for j, c in enumerate(word) if c != letter])
    pairs.append((templates.rl_prompt(_bcq(q, response, letter_code.solution(word, wrong), rng)),
                  response))
  return pairs


def _ncq(question: str, wrongs: list[str]) -> str:
  return templates.ncq_prompt(question, [extract_answer(w) for w in wrongs],
                              [_candidate(w) for w in wrongs])


def _bcq(question: str, right: str, wrong: str, rng: random.Random) -> str:
  cands = [_candidate(right), _candidate(wrong)]
  rng.shuffle(cands)
  return templates.bcq_prompt(question, tuple(cands))


def prepare(config, stream=None) -> pathlib.Path:
  """Builds (or finds) the demo's cache and points `config` at it; returns the cache directory."""
  stream = stream or sys.stderr
  demo = config.demo
  root = pathlib.Path(demo.cache_dir) / _key(config)
  done = root / "DONE"
  if not done.exists():
    t0 = time.time()
    print(f"demo: building task, tokenizer and warm-started models in {root} (first run only)",
          file=stream)
    _build(config, root, stream)
    done.write_text(json.dumps({"seconds": time.time() - t0}))
    print(f"demo: set-up took {time.time() - t0:.0f}s", file=stream)
  else:
    print(f"demo: using the cached task and models in {root}", file=stream)
  config.student.checkpoint = str(root / "student")
  config.teacher.checkpoint = str(root / "teacher")
  config.data.tokenizer = str(root / "tokenizer")
  config.data.train_path = str(root / "train.jsonl")
  config.data.eval_path = str(root / "eval.jsonl")
  return root


def _build(config, root: pathlib.Path, stream) -> None:
  from flax import nnx
  from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM
  from zppo_jax.train import model_io, sft

  demo = config.demo
  root.mkdir(parents=True, exist_ok=True)
  code = letter_code.make_code(config.seed)
  pools = letter_code.split_words(config.seed, held_out=int(demo.num_eval))
  training_pools = {lvl: train_words for lvl, (train_words, _) in pools.items()}
  if demo.visual:
    train = demo_task.visual_records(demo.train_levels, demo.num_train, config.seed,
                                     root / "images", demo.image_size, prefix="train")
    held_out = demo_task.visual_records([demo.eval_level], demo.num_eval, config.seed + 1,
                                        root / "images", demo.image_size, prefix="eval")
  else:
    train = letter_code.records(demo.train_levels, demo.num_train, config.seed, code,
                                training_pools, prefix="train")
    held_out = [letter_code.record(f"eval{lvl}-{i}", w, lvl, code)
                for lvl in demo.train_levels for i, w in enumerate(pools[lvl][1])]
  demo_task.write_jsonl(train, root / "train.jsonl")
  demo_task.write_jsonl(held_out, root / "eval.jsonl")
  rng = random.Random(config.seed)
  old = letter_code.outdated(code, config.seed)
  sft_records = {lvl: letter_code.records([lvl], demo.sft_examples_per_level, config.seed + 2 + lvl,
                                          code, training_pools, prefix="sft")
                 for lvl in sorted(set(demo.student_sft_levels) | set(demo.teacher_sft_levels))}
  student_pairs = _student_pairs([r for lvl in demo.student_sft_levels for r in sft_records[lvl]],
                                 code, old, rng, practice=int(demo.practice_examples))
  teacher_pairs = [(templates.rl_prompt(r["question"]),
                    letter_code.solution(letter_code.word_of(r["question"]), code))
                   for lvl in demo.teacher_sft_levels for r in sft_records[lvl]]
  corpus = [u + "\n" + a for u, a in student_pairs + teacher_pairs] + [
      templates.compression_prompt("x"), templates.hint_prompt("x"), "user\nassistant\n"]
  if demo.visual:
    corpus.append(demo_task.VISUAL_QUESTION)
  tokenizer = demo_tokenizer.build_tokenizer(corpus, root / "tokenizer",
                                             vocab_size=demo.vocab_size)
  if demo.visual:
    tokenizer.add_tokens(list(VISION_TOKENS), special_tokens=True)
    tokenizer.save_pretrained(str(root / "tokenizer"))
  vocab = packing.bucket(len(tokenizer))
  stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
  row_len = int(demo.sft_row_len)
  for role, pairs, steps in (("student", student_pairs, demo.student_sft_steps),
                             ("teacher", teacher_pairs, demo.teacher_sft_steps)):
    cfg = model_config(config, role, vocab)
    model = Qwen3_5ForCausalLM(cfg, rngs=nnx.Rngs(config.seed + (role == "teacher")))
    print(f"demo: warm-starting the {role} ({_count(model):,} parameters) on "
          f"{len(pairs)} examples, {steps} steps", file=stream)
    sft.train_sft(model, sft.chat_examples(tokenizer, pairs, stop), steps=steps,
                  batch_size=demo[f"{role}_sft_batch"], learning_rate=demo.sft_lr,
                  seed=config.seed, row_len=row_len, log_every=max(steps // 4, 1), stream=stream)
    if demo.visual:
      model = _with_vision_tower(config, model, tokenizer, seed=config.seed + 2)
    model_io.save_model(model, root / role, tokenizer)


def _with_vision_tower(config, language_model, tokenizer, seed: int):
  """The warm-started text decoder with a random tiny vision tower: a multimodal model."""
  from flax import nnx
  from zppo_jax.models.qwen3_5 import multimodal
  ids = dict(zip(("vision_start_token_id", "vision_end_token_id", "image_token_id",
                  "video_token_id"), tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))))
  cfg = multimodal.MultimodalConfig(language_model.cfg,
                                    vision_config(config, language_model.cfg), **ids)
  return multimodal.Qwen3_5ForConditionalGeneration(cfg, rngs=nnx.Rngs(seed),
                                                    language_model=language_model)


def _count(model) -> int:
  import jax
  from flax import nnx
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
