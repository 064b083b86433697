"""Long-context GDN (training form): chunked delta rule vs a step-by-step scan, fwd + bwd.

BENCH.md workload: 1 x 4096 tokens, bench-small's GDN shape (4 key heads, 8 value heads, dim 64),
forward and backward of both forms in the same process; warm-ups, then the median of repeats.
The last line is the headline: `gdn: chunked X s, step scan Y s, ratio Z` (target >= 5).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from forward import matmul_flops_per_second  # noqa: E402
from zppo_jax.models.qwen3_5 import gdn  # noqa: E402


def inputs(batch, length, key_heads, value_heads, dim):
  ks = jax.random.split(jax.random.key(0), 5)
  q = gdn.l2norm(jax.random.normal(ks[0], (batch, length, key_heads, dim))) / dim**0.5
  k = gdn.l2norm(jax.random.normal(ks[1], (batch, length, key_heads, dim)))
  v = jax.random.normal(ks[2], (batch, length, value_heads, dim))
  g = -jax.nn.softplus(jax.random.normal(ks[3], (batch, length, value_heads)))
  beta = jax.nn.sigmoid(jax.random.normal(ks[4], (batch, length, value_heads)))
  return q, k, v, g, beta


def fwd_bwd(rule):
  loss = lambda *a: jnp.sum(rule(*a)[0] ** 2)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


def median_seconds(fn, args, warmups, repeats):
  for _ in range(warmups):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--length", type=int, default=4096)
  parser.add_argument("--warmups", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  batch, key_heads, value_heads, dim = 1, 4, 8, 64
  x = inputs(batch, args.length, key_heads, value_heads, dim)
  chunked = median_seconds(fwd_bwd(gdn.delta_rule_chunked), x, args.warmups, args.repeats)
  naive = median_seconds(fwd_bwd(gdn.delta_rule_naive), x, args.warmups, args.repeats)
  # Recurrent-form FLOPs (state read-out + update, x3 for fwd + bwd): the work both forms do.
  flops = 3 * 2 * 2 * 2 * batch * args.length * value_heads * dim * dim
  peak = matmul_flops_per_second()
  print(f"gdn: matmul peak {peak / 1e9:.1f} GFLOP/s; recurrent-form FLOPs {flops / 1e9:.2f} G")
  print(f"gdn: chunked {flops / chunked / peak:.3f} of peak, step scan {flops / naive / peak:.3f}")
  print(f"gdn: chunked {chunked:.3f} s, step scan {naive:.3f} s, ratio {naive / chunked:.2f}")


if __name__ == "__main__":
  main()
