"""Forward (prefill) throughput: our Qwen3.5 vs transformers' PyTorch reference, side by side.

Builds the bench-small model (shared/BENCH.md) in transformers from a seed, saves it, loads it with
our loader, and times a batch 4 x 512 forward pass (logits included) of both in the same process
with the same thread count: warm-ups first, then the median of repeats, alternating the two so
that a noisy neighbour hurts both alike. For context on a shared machine it also prints the ratio
of the fastest runs, the median of per-repeat paired ratios and the CPU time per forward. Also reports
the fraction of the CPU's own f32 matmul FLOP/s (a 2048 x 2048 `jnp.dot`, measured in the same run)
that the model's FLOPs reach, and the time the forward's own matmuls take when each is timed alone
(`ceiling.py`): the bound the forward cannot beat with these kernels.

Run: python bench/forward.py [--batch 4] [--length 512] [--repeats 5]
The last line is the headline: `forward: ours X tok/s, transformers Y tok/s, ratio Z`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

import ceiling  # noqa: E402
from zppo_jax.models import qwen3_5  # noqa: E402
from zppo_jax.models.qwen3_5.config import ModelConfig  # noqa: E402

THREADS = 2


def model_flops(cfg: ModelConfig, batch: int, length: int) -> float:
  """FLOPs of one forward by the model's formula (matmuls, causal attention, delta rule).

  Counted: 2 * (matmul parameters, LM head included, embedding gather excluded) per token; for each
  full-attention layer the causal scores and weighted sum (2 * 2 * T^2 / 2 * N * H per row); for
  each GDN layer the recurrent-form state read-out and update (2 * 2 * Hv * Dk * Dv per token).
  """
  d, f = cfg.hidden_size, cfg.intermediate_size
  n, k, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  mlp = 3 * d * f
  attn = d * (2 * n * h) + 2 * d * k * h + n * h * d
  gdn = (d * cfg.gdn_conv_dim + d * cfg.gdn_value_dim + 2 * d * cfg.linear_num_value_heads
         + cfg.gdn_value_dim * d)
  matmul_params = d * cfg.vocab_size
  per_row_extra = 0.0
  for layer_type in cfg.layer_types:
    if layer_type == "full_attention":
      matmul_params += mlp + attn
      per_row_extra += 2 * 2 * (length * length / 2) * n * h
    else:
      matmul_params += mlp + gdn
      per_row_extra += 2 * 2 * length * cfg.linear_num_value_heads * (
          cfg.linear_key_head_dim * cfg.linear_value_head_dim)
  return batch * (2.0 * matmul_params * length + per_row_extra)


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
  """The CPU's f32 matmul rate: median over repeats of a size x size `jnp.dot`."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  return 2.0 * size**3 / ceiling.median_seconds(jax.jit(jnp.dot), a, b, repeats=repeats)


def reference_model(cfg: ModelConfig) -> transformers.Qwen3_5ForCausalLM:
  """transformers' Qwen3.5 text model with `cfg`'s shapes and seed-0 random weights."""
  torch.manual_seed(0)
  hf_config = cfg.to_hf()
  for key in ("architectures", "model_type", "dtype"):
    hf_config.pop(key)
  return transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig(**hf_config))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--warmups", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  torch.set_num_threads(THREADS)
  cfg = qwen3_5.bench_small()

  reference = reference_model(cfg).eval()
  with tempfile.TemporaryDirectory() as path:
    reference.save_pretrained(path)
    ours = qwen3_5.load_pretrained(path, dtype=jnp.float32)
  graphdef, state = nnx.split(ours)

  @jax.jit
  def forward(state, ids):
    return nnx.merge(graphdef, state)(ids)

  ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (args.batch, args.length))
  ids_jax = jnp.asarray(ids, jnp.int32)
  ids_torch = torch.tensor(ids, dtype=torch.long)

  def run_ours():
    return forward(state, ids_jax).block_until_ready()

  def run_reference():
    with torch.no_grad():
      return reference(ids_torch).logits

  start = time.perf_counter()
  ours_logits = np.asarray(run_ours())
  print(f"compile + first run (ours): {time.perf_counter() - start:.1f} s")
  ref_logits = run_reference().numpy()
  print(f"max |logits ours - transformers|: {np.abs(ours_logits - ref_logits).max():.2e}")
  for _ in range(args.warmups):
    run_ours()
    run_reference()
  ours_times, ref_times, ours_cpu, ref_cpu = [], [], [], []
  for _ in range(args.repeats):
    for fn, times, cpu in ((run_ours, ours_times, ours_cpu), (run_reference, ref_times, ref_cpu)):
      start, start_cpu = time.perf_counter(), time.process_time()
      fn()
      times.append(time.perf_counter() - start)
      cpu.append(time.process_time() - start_cpu)
  peak = matmul_flops_per_second()
  bound = ceiling.matmul_bound(jax.make_jaxpr(forward)(state, ids_jax))
  tokens = args.batch * args.length
  flops = model_flops(cfg, args.batch, args.length)
  ours_s, ref_s = statistics.median(ours_times), statistics.median(ref_times)
  print(f"machine: nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, "
        f"torch threads {torch.get_num_threads()}, jax devices {jax.devices()}")
  print(f"model: bench-small {qwen3_5.parameter_count(ours) / 1e6:.1f} M params, batch "
        f"{args.batch} x {args.length} tokens, {flops / 1e9:.1f} GFLOP per forward")
  print(f"f32 matmul peak (2048^2 jnp.dot): {peak / 1e9:.1f} GFLOP/s")
  for name, seconds, times in (("ours", ours_s, ours_times), ("transformers", ref_s, ref_times)):
    print(f"{name}: median {seconds * 1e3:.0f} ms (runs {', '.join(f'{t:.2f}' for t in times)} s)"
          f", {flops / seconds / 1e9:.1f} GFLOP/s = {flops / seconds / peak:.2f} of matmul peak")
  paired = statistics.median(r / o for o, r in zip(ours_times, ref_times))
  print(f"context: fastest runs ours {min(ours_times):.2f} s, transformers {min(ref_times):.2f} s "
        f"(ratio {min(ref_times) / min(ours_times):.2f}); median of per-repeat paired ratios "
        f"{paired:.2f}")
  print(f"context: {ceiling.describe(bound.seconds, bound.flops, ours_s, peak)}")
  # CPU seconds used per forward (all threads) hardly depend on neighbours' load.
  print(f"context: CPU time per forward (median) ours {statistics.median(ours_cpu):.2f} s, "
        f"transformers {statistics.median(ref_cpu):.2f} s (ratio "
        f"{statistics.median(ref_cpu) / statistics.median(ours_cpu):.2f})")
  print(f"forward: ours {tokens / ours_s:.0f} tok/s, transformers {tokens / ref_s:.0f} tok/s, "
        f"ratio {ref_s / ours_s:.2f}")


if __name__ == "__main__":
  main()
