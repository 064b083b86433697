"""Rollout decode throughput: our Sampler vs transformers' `generate`, side by side.

shared/BENCH.md's rollout workload: the bench-small model, 8 prompts x G = 8 samples, prompts of 64
tokens, 128 new tokens, temperature 1.0 (no other filter, no stop token, so every row generates
all 128 tokens). transformers runs the same 64 rows as one batch (each prompt repeated 8 times)
with `do_sample=True`, in `eval()` + `no_grad`, 2 torch threads. The HF model is built from a seed
and saved; ours is loaded from that directory. Warm-ups first, then the median of repeats, the two
alternated so a noisy neighbour hurts both alike.

Also printed: ms per decode step (prefill timed on its own and subtracted), and the fraction of
the CPU's own f32 matmul FLOP/s (a 2048 x 2048 `jnp.dot` in the same run) the decode steps reach,
and what one step's matmuls take when each is timed alone (`ceiling.py`).

Run: python bench/decode.py [--prompts 8] [--samples 8] [--prompt-len 64] [--new 128]
The last line is the headline: `decode: ours X tok/s, transformers Y tok/s, ratio Z`.
"""
from __future__ import annotations

import argparse
import os
import sys
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import ceiling  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from forward import matmul_flops_per_second, reference_model  # noqa: E402
from zppo_jax.models import qwen3_5  # noqa: E402
from zppo_jax.models.qwen3_5.cache import init_cache  # noqa: E402
from zppo_jax.models.qwen3_5.config import ModelConfig  # noqa: E402
from zppo_jax.sampling import Sampler, SamplingParams  # noqa: E402
from zppo_jax.sampling import loop as rollout  # noqa: E402
from zppo_jax.sampling import sampler as sampler_lib  # noqa: E402

THREADS = 2


def decode_step_flops(cfg: ModelConfig, rows: int, keys: float) -> float:
  """FLOPs of one decode step by the model's formula (useful work only).

  2 * (matmul parameters, LM head included) per row; each full-attention layer reads `keys` real
  keys (2 * 2 * keys * N * H per row); each GDN layer reads and updates its state
  (2 * 2 * Hv * Dk * Dv per row). Padding slots of the static cache are not counted.
  """
  d, f = cfg.hidden_size, cfg.intermediate_size
  n, k, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  matmul_params = d * cfg.vocab_size
  extra = 0.0
  for layer_type in cfg.layer_types:
    matmul_params += 3 * d * f
    if layer_type == "full_attention":
      matmul_params += d * 2 * n * h + 2 * d * k * h + n * h * d
      extra += 2 * 2 * keys * n * h
    else:
      matmul_params += (d * cfg.gdn_conv_dim + d * cfg.gdn_value_dim
                        + 2 * d * cfg.linear_num_value_heads + cfg.gdn_value_dim * d)
      extra += 2 * 2 * cfg.linear_num_value_heads * cfg.linear_key_head_dim * (
          cfg.linear_value_head_dim)
  return rows * (2.0 * matmul_params + extra)


def step_matmul_bound(model, rows: int, cache_len: int) -> ceiling.Bound:
  """The matmuls of one decode step (a cached one-token forward and the LM head over `rows`
  rows), each timed alone."""
  graphdef, state = nnx.split(model)

  def one_step(state, ids, cache):
    model = nnx.merge(graphdef, state)
    hidden, _ = model.forward(input_ids=ids, cache=cache)
    return model.logits(hidden)

  ids = jnp.zeros((rows, 1), jnp.int32)
  return ceiling.matmul_bound(jax.make_jaxpr(one_step)(state, ids,
                                                       init_cache(model.cfg, rows, cache_len)))


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--samples", type=int, default=8)
  parser.add_argument("--prompt-len", type=int, default=64)
  parser.add_argument("--new", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  torch.set_num_threads(THREADS)
  cfg = qwen3_5.bench_small()

  reference = reference_model(cfg).eval()
  with tempfile.TemporaryDirectory() as path:
    reference.save_pretrained(path)
    ours = qwen3_5.load_pretrained(path)

  prompts = np.random.RandomState(0).randint(0, cfg.vocab_size, (args.prompts, args.prompt_len))
  rows = args.prompts * args.samples
  sampler = Sampler(ours, max_total_len=args.prompt_len + args.new)
  params = SamplingParams(temperature=1.0, max_new_tokens=args.new, num_samples=args.samples)
  one_token = SamplingParams(temperature=1.0, max_new_tokens=1, num_samples=args.samples)
  prompt_lists = prompts.tolist()

  batch = torch.tensor(np.repeat(prompts, args.samples, axis=0), dtype=torch.long)
  generation = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                    min_new_tokens=args.new, max_new_tokens=args.new, pad_token_id=0,
                    attention_mask=torch.ones_like(batch))

  def run_reference(new=args.new):
    with torch.no_grad():
      out = reference.generate(batch, **{**generation, "min_new_tokens": new,
                                         "max_new_tokens": new})
    assert out.shape == (rows, args.prompt_len + new), out.shape

  seeds = iter(range(1000))

  def run_ours(p=params):
    out = sampler.generate(prompt_lists, p, seed=next(seeds))
    assert all(n == p.max_new_tokens for group in out.lengths for n in group)

  start = time.perf_counter()
  run_ours()
  print(f"compile + first run (ours): {time.perf_counter() - start:.1f} s")
  run_ours(one_token)  # compiles the 1-token capacity bucket used to time the prefill
  run_reference(4)
  ours_times, ref_times, ours_prefill, ref_prefill = [], [], [], []
  for _ in range(args.repeats):
    ours_times.append(_timed(run_ours))
    ours_prefill.append(_timed(lambda: run_ours(one_token)))
    ref_times.append(_timed(run_reference))
    ref_prefill.append(_timed(lambda: run_reference(1)))
  peak = matmul_flops_per_second()
  # The sampler's cache: prompt width and new-token capacity in its power-of-two buckets.
  bound = step_matmul_bound(ours, rows, sampler_lib._bucket(args.prompt_len)
                            + sampler_lib._bucket(args.new))

  assert rollout.decode._cache_size() == 2, "the timed runs recompiled the decode loop"
  tokens = rows * args.new
  steps = args.new - 1  # the first token comes from the prefill's logits
  flops = sum(decode_step_flops(cfg, rows, args.prompt_len + i + 1) for i in range(steps))
  print(f"machine: nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, "
        f"torch threads {torch.get_num_threads()}, jax devices {jax.devices()}")
  print(f"model: bench-small {qwen3_5.parameter_count(ours) / 1e6:.1f} M params; {args.prompts} "
        f"prompts x G={args.samples}, prompt {args.prompt_len}, {args.new} new tokens, T=1.0")
  print(f"f32 matmul peak (2048^2 jnp.dot): {peak / 1e9:.1f} GFLOP/s")
  for name, times, prefill in (("ours", ours_times, ours_prefill),
                               ("transformers", ref_times, ref_prefill)):
    total, first = statistics.median(times), statistics.median(prefill)
    step = (total - first) / steps
    print(f"{name}: median {total:.2f} s (runs {', '.join(f'{t:.2f}' for t in times)}), prefill "
          f"+ 1 token {first * 1e3:.0f} ms, {step * 1e3:.1f} ms per decode step, "
          f"{flops / steps / step / 1e9:.1f} GFLOP/s = {flops / steps / step / peak:.2f} of matmul "
          "peak")
    if name == "ours":
      print(f"context: {ceiling.describe(bound.seconds, bound.flops, step, peak)} (per decode "
            "step)")
  ours_s, ref_s = statistics.median(ours_times), statistics.median(ref_times)
  print(f"decode: ours {tokens / ours_s:.0f} tok/s, transformers {tokens / ref_s:.0f} tok/s, "
        f"ratio {ref_s / ours_s:.2f}")


if __name__ == "__main__":
  main()
