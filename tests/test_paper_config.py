"""A rehearsal of the paper's run: `configs/zppo.py` itself, with only model sizes and lengths
scaled down by overrides. Everything the paper sets stays: bf16 weights and compute with fp32
masters, lr 1e-6, G_S = 8, G_T = 4, the ρ's, τ, I = 4, compression through the teacher with
thinking off, the response budget shared with a forced prefix.

Student and teacher are tiny Qwen3.5 checkpoints whose weights make them "say" `\\boxed{3}`: every
layer's output is zero, so the logits depend on the current token only, and the LM head maps
each token of the chain (end of prompt, `\\boxed{3}`, `<|im_end|>`) to the next one. The teacher's
margin makes it deterministic; the student's leaves it right a fraction of the time, so groups
have mixed rewards, hard questions, and non-zero advantages. The prompt set holds arithmetic with
gold 3, a question whose gold 7 nobody gets (the hardest: NCQ only), and a free-form gold graded
by the stub judge (`conftest.stub_judge`).

Two ZPPO steps run (BCQ and NCQ prompts longer than the plain-prompt limit, packed rows longer
than `rl.pack_row_len`), then a Prefix step, then a ZPPO step whose context is too short for the
augmented prompts (skipped and counted); parameters move; nothing raises.
"""
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zppo_jax.data import demo_task
from zppo_jax.data.prompts import encode_prompt
from zppo_jax.models.qwen3_5.config import ModelConfig
from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM
from zppo_jax.train import augment, demo, model_io, run
from zppo_jax.train.config import load_config
from zppo_jax.train.trainer import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLAIN_LIMIT = 96        # data.max_prompt_tokens, scaled down from 4,096
ROW_LEN = 128           # rl.pack_row_len, scaled down from 16,384: augmented rows are longer
BUDGET = 16             # sampling.max_new_tokens, scaled down from 12,288


def _scripted_model(hf: dict, chain: list[int], margin: float, seed: int) -> Qwen3_5ForCausalLM:
  """A tiny model that follows `chain` token to token with logit `margin` (untied LM head)."""
  cfg = ModelConfig.from_hf(dict(hf, tie_word_embeddings=False), dtype=jnp.float32,
                            param_dtype=jnp.float32)
  model = Qwen3_5ForCausalLM(cfg, rngs=nnx.Rngs(seed))
  layers = nnx.state(model.layers)
  nnx.update(model.layers, jax.tree.map(jnp.zeros_like, layers))
  d = cfg.hidden_size
  embed = np.array(model.embed_tokens.embedding[...])
  kernel = np.array(0.02 * jax.random.normal(jax.random.key(seed), (d, cfg.vocab_size)))
  for i, (tok, nxt) in enumerate(zip(chain, chain[1:])):
    embed[tok] = np.eye(d)[i]                  # after the final norm: sqrt(d)·e_i
    kernel[:, nxt] = margin / np.sqrt(d) * np.eye(d)[i]
  model.embed_tokens.embedding[...] = jnp.asarray(embed)
  model.lm_head.kernel[...] = jnp.asarray(kernel)
  return model


def _prompt_set(path: pathlib.Path) -> None:
  """Arithmetic in the demo tokenizer's own words (plain prompts of ~64 tokens) with gold 3, one
  with gold 7, and a free-form gold only the judge can grade."""
  sums = ["1 + 2", "2 + 1", "0 + 3", "3 + 0"]
  rows = [{"id": f"three{i}", "question": f"What is {sums[i % 4]}?", "answer": "3"}
          for i in range(6)]
  rows.append({"id": "seven", "question": "What is 3 + 4?", "answer": "7"})
  rows.append({"id": "shape", "question": "JUDGE-OK: which shape is drawn first?",
               "answer": "a red circle"})
  demo_task.write_jsonl(rows, path)


def _setup(root: pathlib.Path):
  """Tokenizer (the demo's), scripted student and teacher checkpoints, the prompt file."""
  config = load_config("configs/demo.py:tiny", [
      f"--config.demo.cache_dir={root / 'demo'}", "--config.demo.num_train=64",
      "--config.demo.num_eval=0", "--config.demo.student_sft_steps=0",
      "--config.demo.teacher_sft_steps=0"])
  cache = demo.prepare(config, stream=open(os.devnull, "w"))
  tok = model_io.load_tokenizer(str(cache / "tokenizer"))
  stop = tok.convert_tokens_to_ids("<|im_end|>")
  chain = [encode_prompt(tok, augment.user_text("x"))[-1],
           *tok("\\boxed{3}", add_special_tokens=False)["input_ids"], stop]
  assert len(set(chain)) == len(chain), chain
  hf = model_io.load_model(str(cache / "student"), "float32").cfg.to_hf()
  for name, margin, seed in (("student", 7.0, 1), ("teacher", 60.0, 2)):
    model_io.save_model(_scripted_model(hf, chain, margin, seed), root / name, tok)
  _prompt_set(root / "prompts.jsonl")
  return cache / "tokenizer"


def _config(root, tokenizer, judge_url, method="zppo"):
  return load_config("configs/zppo.py:0.8b", [
      f"--config.method={method}", "--config.total_steps=2",
      f"--config.student.checkpoint={root / 'student'}",
      f"--config.teacher.checkpoint={root / 'teacher'}",
      f"--config.data.tokenizer={tokenizer}", f"--config.data.train_path={root / 'prompts.jsonl'}",
      f"--config.judge.url={judge_url}",
      f"--config.compilation_cache_dir={ROOT / '.jax_cache'}",
      # Sizes and lengths only.
      "--config.rl.batch_prompts=8", "--config.rl.buffer_capacity=64",
      f"--config.data.max_prompt_tokens={PLAIN_LIMIT}", "--config.data.num_workers=0",
      f"--config.rl.pack_row_len={ROW_LEN}", "--config.rl.compress_max_tokens=8",
      f"--config.sampling.max_new_tokens={BUDGET}",
      f"--config.sampling.teacher_max_new_tokens={BUDGET}",
      "--config.sampling.max_context=1024", "--config.sampling.rows_per_call=64",
      "--config.teacher.device_fraction=0"])


def _params(tree):
  return [np.asarray(x, np.float32) for x in jax.tree.leaves(jax.device_get(tree))]


def test_paper_config_rehearsal(tmp_path, stub_judge):
  judge_url, judge_prompts = stub_judge
  tokenizer = _setup(tmp_path)
  config = _config(tmp_path, tokenizer, judge_url)
  assert (config.student.param_dtype, config.optim.lr, config.optim.master_dtype,
          config.rl.group_size, config.rl.teacher_group_size, config.rl.inner_updates,
          config.teacher.enable_thinking) == ("bfloat16", 1e-6, "float32", 8, 4, 4, False)
  trainer, close = run.build_trainer(config, tmp_path / "run", stream=open(os.devnull, "w"))
  try:
    student = trainer.student
    masters0 = _params(student.state().params)
    weights0 = _params(nnx.state(student.text_model, nnx.Param))
    assert {x.dtype for x in jax.tree.leaves(student.state().params)} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(nnx.state(student.text_model, nnx.Param))} == {
        jnp.dtype("bfloat16")}

    specs, rows = [], []
    rollouts, update = trainer._rollouts, student.learner.update
    trainer._rollouts = lambda s, seed, times: (
        specs.extend((x.kind, len(x.prompt_ids), len(x.prefix)) for x in s),
        rollouts(s, seed, times))[1]
    student.learner.update = lambda mb: (rows.append(mb["tokens"].shape), update(mb))[1]
    summary = trainer.train()
    assert summary["step"] == 2 and not summary["preempted"]

    ncq = [n for kind, n, _ in specs if kind == "ncq"]
    assert ncq and max(ncq) > PLAIN_LIMIT                       # augmented prompts are longer
    assert any(kind == "bcq" for kind, _, _ in specs)
    assert max(r[1] for r in rows) > ROW_LEN                    # and their rows grew to fit
    assert len(rows) == 2 * config.rl.inner_updates
    assert any("JUDGE-OK" in p for p in judge_prompts)          # the free-form gold was judged

    masters1 = _params(student.state().params)
    weights1 = _params(nnx.state(student.text_model, nnx.Param))
    # Every non-zero master moves (weight decay alone moves it; the zeroed layers behind a zero
    # output projection get no gradient), and the bf16 copy follows where a step crosses an ulp.
    nonzero = sum(int(np.sum(a != 0)) for a in masters0)
    moved = sum(int(np.sum((a != b) & (a != 0))) for a, b in zip(masters0, masters1))
    assert moved / nonzero > 0.9
    assert any(np.any(a != b) for a, b in zip(weights0, weights1))

    # A Prefix step on the same models: the forced prefix stays inside the response budget.
    prefix = Trainer(_config(tmp_path, tokenizer, judge_url, "prefix"), tmp_path / "prefix",
                     student=student, teacher=trainer.teacher, tokenizer=trainer.tokenizer,
                     prompts=trainer.prompts, grader=trainer.grader,
                     stop_ids=sorted(trainer.stop_ids), stream=open(os.devnull, "w"))
    specs.clear()
    prefix._rollouts = lambda s, seed, times: (
        specs.extend((x.kind, len(x.prompt_ids), len(x.prefix)) for x in s),
        Trainer._rollouts(prefix, s, seed, times))[1]
    step = prefix.run_step(1)
    assert step["groups/prefix"] >= 1 and np.isfinite(step["update/loss"])
    assert all(p > 0 for kind, _, p in specs if kind == "prefix")
    assert step["len/prefix"] <= BUDGET

    # A context that holds plain prompts but no augmented one: they are skipped and counted.
    trainer.config.sampling.max_context = PLAIN_LIMIT + BUDGET + 16
    step = trainer.run_step(3)
    assert step["reform/skipped_too_long"] >= 1 and "groups/ncq" not in step
    assert np.isfinite(step["update/loss"])
  finally:
    close()
