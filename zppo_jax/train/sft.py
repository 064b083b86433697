"""Supervised fine-tuning (`zppo sft`): next-token loss on the response tokens of (prompt, response)
pairs, packed into fixed-length rows.

It warm-starts the demo's student and teacher, and it is the building block of Off-Distill's
teacher-data variant. The step is a plain jitted NLL update with the run's AdamW
(`zppo_jax.train.optim`); sequences are packed with `zppo_jax.data.packing`, so the GDN state and
attention never cross from one example into the next.
"""
from __future__ import annotations

import functools
import json
import pathlib
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from zppo_jax.data import packing
from zppo_jax.rl import logprobs as logprobs_lib
from zppo_jax.train import optim


@functools.lru_cache(maxsize=None)
def _optimizer_and_step(learning_rate: float, weight_decay: float):
  """One optimizer and jitted step per setting, so models of one shape share the compile."""
  tx = optim.make_optimizer(learning_rate, weight_decay=weight_decay, max_grad_norm=1.0,
                            state_dtype="float32")

  @functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
  def step(graphdef, params, opt_state, rest, batch):
    def loss_fn(p):
      model = nnx.merge(graphdef, p, rest)
      hidden, _ = model.forward(input_ids=batch["tokens"], positions=batch["positions"],
                                segment_ids=batch["segment_ids"])
      lp, _ = logprobs_lib.chunked_logprobs(hidden, model.lm_head_kernel(), batch["targets"])
      mask = batch["loss_mask"]
      return -jnp.sum(lp * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return tx, step


def train_sft(model: nnx.Module, examples: Sequence[tuple[Sequence[int], Sequence[int]]], *,
              steps: int, batch_size: int, learning_rate: float, seed: int, row_len: int,
              weight_decay: float = 0.0, log_every: int = 100, stream=None) -> list[float]:
  """Fine-tunes `model` in place on (prompt ids, response ids) pairs.

  Args:
    model: the model to train (its parameters are replaced by the trained ones).
    examples: the pairs, read in a seeded shuffled order, epoch after epoch.
    steps: optimizer steps.
    batch_size: examples per step on average: every step packs a fixed number of rows (one
      compiled shape), as many as `batch_size` examples of the mean length fill, and takes the
      next examples of the order while they fit.
    learning_rate: constant AdamW learning rate.
    seed: the example-order seed.
    row_len: tokens per packed row (every example must fit one row).
    weight_decay: decoupled weight decay.
    log_every: print the mean loss every this many steps.
    stream: where to print (default stderr).

  Returns:
    The loss of every step.
  """
  stream = stream or sys.stderr
  if not examples:
    raise ValueError("no SFT examples")
  longest = max(len(p) + len(r) for p, r in examples)
  if longest > row_len:
    raise ValueError(f"an SFT example has {longest} tokens, more than row_len={row_len}")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx, sft_step = _optimizer_and_step(float(learning_rate), float(weight_decay))
  opt_state = tx.init(params)
  lengths = [len(p) + len(r) for p, r in examples]
  rows = max(1, -(-batch_size * sum(lengths) // (len(lengths) * row_len)))
  order = _ExampleOrder(len(examples), seed)
  losses, t0 = [], time.time()
  for step in range(1, steps + 1):
    pick = order.take(lambda picked: packing.rows_needed([lengths[i] for i in picked],
                                                         row_len) <= rows)
    packed = packing.pack([examples[i][0] for i in pick], [examples[i][1] for i in pick],
                          row_len, num_rows=rows)
    batch = {k: jnp.asarray(v) for k, v in packed.arrays().items()
             if k in ("tokens", "targets", "positions", "segment_ids", "loss_mask")}
    params, opt_state, loss = sft_step(graphdef, params, opt_state, rest, batch)
    losses.append(float(loss))
    if log_every and (step % log_every == 0 or step == steps):
      print(f"sft: step {step}/{steps} loss {np.mean(losses[-log_every:]):.4f} "
            f"({time.time() - t0:.0f}s)", file=stream)
  nnx.update(model, params)
  return losses


class _ExampleOrder:
  """Example indices in a seeded shuffled order, reshuffled every epoch; `take` hands out the
  longest run of the next ones that a predicate accepts (at least one)."""

  def __init__(self, n: int, seed: int):
    self._rng = np.random.default_rng(seed)
    self._n = n
    self._queue: list[int] = []

  def take(self, fits) -> list[int]:
    picked: list[int] = []
    while True:
      if not self._queue:
        self._queue = list(self._rng.permutation(self._n))[::-1]
      if picked and not fits(picked + [self._queue[-1]]):
        return picked
      picked.append(self._queue.pop())
      if len(picked) == self._n:
        return picked


def chat_examples(tokenizer, pairs: Sequence[tuple[str, str]], stop_id: int
                  ) -> list[tuple[list[int], list[int]]]:
  """(user text, response text) pairs -> (chat prompt ids, response ids + the stop token)."""
  from zppo_jax.data.prompts import encode_prompt
  return [(encode_prompt(tokenizer, user), list(tokenizer(response, add_special_tokens=False)
                                                ["input_ids"]) + [stop_id])
          for user, response in pairs]


def main(argv: list[str]) -> int:
  """`zppo sft --model=HF_DIR --data=JSONL --out=DIR [--steps N --batch B --lr X --seed S]`.

  JSONL rows hold `question` and `response`; the user turn is the ZPPO prompt (format
  instructions stripped, RL closer appended) and the loss is on the response tokens.
  """
  import argparse
  from zppo_jax.models.qwen3_5.multimodal import text_decoder
  from zppo_jax.train import model_io  # Imported late to keep --help cheap.
  from zppo_jax.train.augment import user_text
  parser = argparse.ArgumentParser(prog="zppo sft")
  parser.add_argument("--model", required=True, help="HF checkpoint directory to start from")
  parser.add_argument("--data", required=True, help="JSONL with question and response fields")
  parser.add_argument("--out", required=True, help="where to write the fine-tuned checkpoint")
  parser.add_argument("--tokenizer", default="", help="tokenizer directory (default: --model)")
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--lr", type=float, default=1e-5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--row_len", type=int, default=4096)
  args = parser.parse_args(argv)
  tokenizer = model_io.load_tokenizer(args.tokenizer or args.model,
                                      "--tokenizer" if args.tokenizer else "--model")
  model = model_io.load_model(args.model, "float32", what="--model")
  rows = [json.loads(line) for line in pathlib.Path(args.data).read_text().splitlines()
          if line.strip()]
  bad = [i for i, r in enumerate(rows) if not (r.get("question") and r.get("response"))]
  if bad:
    raise ValueError(f"{args.data}: rows {bad[:10]} lack a question or a response")
  stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
  examples = chat_examples(tokenizer, [(user_text(r["question"]), r["response"]) for r in rows],
                           stop)
  train_sft(text_decoder(model), examples, steps=args.steps, batch_size=args.batch,
            learning_rate=args.lr, seed=args.seed, row_len=args.row_len)
  model_io.save_model(model, args.out, tokenizer)
  print(f"sft: wrote {args.out}")
  return 0
