"""What a program's matmuls cost on their own: the bound a CPU benchmark is read against.

The matmul peak the benchmarks print (a 2048 x 2048 `jnp.dot`) is the best case of XLA's CPU
kernels; a model's matmuls have other shapes (contractions of 512, 64-row decode batches, batched
head-sized products) that run slower even alone. `matmul_bound` finds every `dot_general` in a
jitted function's jaxpr and times each one by itself, so a benchmark can say how close the whole
program comes to the time its matmuls need anyway.

Counting: a dot inside a `scan` counts `length` times; inside a `cond`, only the branch with the
most FLOPs counts; inside a `while` loop, once per iteration, reported apart (`per_iteration`)
because the trip count is only known at run time. Each distinct dot (shapes, dtypes, dimension
numbers) is timed as the median over repeats of a jitted loop that runs it `calls` times, so the
per-call dispatch does not count.

Run alone: python bench/ceiling.py   (the bench-small forward and train step, summarised)
"""
from __future__ import annotations

import collections
import dataclasses
import statistics
import time
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core


@dataclasses.dataclass
class Bound:
  """Summed time and FLOPs of a program's matmuls, each timed alone.

  Attributes:
    seconds: once-per-call dots (everything outside `while` loops).
    flops: their FLOPs.
    per_iteration: the same for one iteration of the outermost `while` loop(s).
    per_iteration_flops: their FLOPs.
    distinct: how many distinct dots were timed.
  """
  seconds: float
  flops: float
  per_iteration: float
  per_iteration_flops: float
  distinct: int


def _sub_jaxprs(params):
  for value in params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def _dot_flops(spec) -> float:
  lhs, _, rhs, _, (contract, batch), _, _ = spec
  (lc, rc), (lb, rb) = contract, batch
  kept_lhs = [d for i, d in enumerate(lhs) if i not in lc and i not in lb]
  kept_rhs = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
  return 2.0 * np.prod([lhs[i] for i in lb] + kept_lhs + kept_rhs + [lhs[i] for i in lc])


def _collect(jaxpr, mult, once, looped, in_loop):
  """Adds the dots of `jaxpr` (run `mult` times) to `once` or `looped` (Counters of specs)."""
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
      p = eqn.params
      spec = (tuple(lhs.shape), str(lhs.dtype), tuple(rhs.shape), str(rhs.dtype),
              p["dimension_numbers"], p.get("precision"), p.get("preferred_element_type"))
      (looped if in_loop else once)[spec] += mult
    elif name == "scan":
      _collect(eqn.params["jaxpr"].jaxpr, mult * eqn.params["length"], once, looped, in_loop)
    elif name == "while":
      _collect(eqn.params["body_jaxpr"].jaxpr, mult, once, looped, True)
    elif name == "cond":
      best, best_flops = None, -1.0
      for branch in eqn.params["branches"]:
        o, l = collections.Counter(), collections.Counter()
        _collect(branch.jaxpr, mult, o, l, in_loop)
        flops = sum(_dot_flops(s) * n for c in (o, l) for s, n in c.items())
        if flops > best_flops:
          best, best_flops = (o, l), flops
      once.update(best[0])
      looped.update(best[1])
    else:
      for sub in _sub_jaxprs(eqn.params):
        _collect(sub, mult, once, looped, in_loop)


def program_dots(jaxpr) -> tuple[collections.Counter, collections.Counter]:
  """The dots of a (closed) jaxpr: (once-per-call counts, per-while-iteration counts) by spec."""
  once, looped = collections.Counter(), collections.Counter()
  _collect(getattr(jaxpr, "jaxpr", jaxpr), 1, once, looped, False)
  return once, looped


def time_dot(spec, calls: int = 8, repeats: int = 3) -> float:
  """Seconds per call of one dot, run `calls` times in a jitted loop (median of repeats)."""
  lhs, lhs_dtype, rhs, rhs_dtype, dims, precision, out_dtype = spec
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, lhs, jnp.float32).astype(lhs_dtype)
  b = jax.random.normal(key_b, rhs, jnp.float32).astype(rhs_dtype)
  corner = (0,) * len(lhs)

  @jax.jit
  def run(a, b):
    def body(_, a):
      out = jax.lax.dot_general(a, b, dims, precision=precision, preferred_element_type=out_dtype)
      # A one-element write that depends on the product keeps the loop from hoisting the dot.
      return a.at[corner].add((out.reshape(-1)[0] * 0).astype(a.dtype))
    return jax.lax.fori_loop(0, calls, body, a)

  return median_seconds(run, a, b, repeats=repeats) / calls


def median_seconds(fn: Callable, *args, repeats: int = 3) -> float:
  """Median wall time of `fn(*args)` (a jitted function) over repeats, after one warm-up call."""
  fn(*args).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(*args).block_until_ready()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_bound(jaxpr) -> Bound:
  """Times every distinct dot of a jaxpr (e.g. `jax.make_jaxpr(fn)(*args)`, or a jitted
  function's `.trace(*args).jaxpr`) alone and sums them with their counts."""
  once, looped = program_dots(jaxpr)
  seconds = {spec: time_dot(spec) for spec in set(once) | set(looped)}
  total = lambda counts: sum(seconds[s] * n for s, n in counts.items())
  flops = lambda counts: sum(_dot_flops(s) * n for s, n in counts.items())
  return Bound(total(once), flops(once), total(looped), flops(looped), len(seconds))


def describe(bound_seconds: float, bound_flops: float, ours_seconds: float, peak: float) -> str:
  """One line: the matmuls-alone time, its fraction of the peak, and ours against it."""
  return (f"matmuls alone (each dot timed by itself): {bound_seconds * 1e3:.0f} ms for "
          f"{bound_flops / 1e9:.1f} GFLOP = {bound_flops / bound_seconds / peak:.2f} of matmul "
          f"peak; ours takes {ours_seconds / bound_seconds:.2f}x that")


def main():
  import os
  import sys
  import tempfile
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from flax import nnx
  from forward import matmul_flops_per_second, reference_model
  from train_step import make_batch
  from zppo_jax.models import qwen3_5
  from zppo_jax.train import learner as learner_lib

  print(f"load average {os.getloadavg()[0]:.2f}")
  cfg = qwen3_5.bench_small()
  with tempfile.TemporaryDirectory() as path:
    reference_model(cfg).save_pretrained(path)
    model = qwen3_5.load_pretrained(path, dtype=jnp.float32, scan_layers=False)
  graphdef, state = nnx.split(model)
  ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (4, 512))
  forward = matmul_bound(jax.make_jaxpr(lambda s, i: nnx.merge(graphdef, s)(i))(
      state, jnp.asarray(ids, jnp.int32)))
  learner = learner_lib.Learner(model, learner_lib.LearnerConfig(old_logprobs="sampler",
                                                                 token_chunk=512))
  batch = make_batch(ids)
  [batch["old_logprobs"]] = learner.old_logprobs([batch])
  step = matmul_bound(learner.trace_update(batch).jaxpr)
  peak = matmul_flops_per_second()
  print(f"f32 matmul peak (2048^2 jnp.dot): {peak / 1e9:.1f} GFLOP/s")
  for name, b in (("forward 4x512", forward), ("train step 4x512", step)):
    print(f"{name}: {b.distinct} distinct dots, {b.flops / 1e9:.1f} GFLOP in {b.seconds * 1e3:.0f} "
          f"ms = {b.flops / b.seconds / peak:.2f} of matmul peak")
  print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
