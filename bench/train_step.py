"""Train-step throughput: our learner's policy-loss update vs transformers + torch AdamW.

shared/BENCH.md's train-step workload: the bench-small model, batch 4 x 512 tokens, one update =
forward, PPO clipped-surrogate loss on every next-token prediction (advantages ±1, old log-probs
given), backward, global-norm clip and AdamW. Ours is `Learner.update` with one update and the
sampler's log-probs as π_old (so nothing but the update is timed); log-probs come from the chunked
LM-head scan. The reference is transformers' `Qwen3_5ForCausalLM` (train mode, fp32) computing the
same loss from its full logits, `loss.backward()`, `clip_grad_norm_` and `torch.optim.AdamW`, with
2 torch threads. Both start from the same weights (the HF model is built from a seed, saved, and
loaded by our loader). Warm-ups first, then the median of repeats, alternating the two.

FLOPs of a step are taken as 3x the forward FLOPs of the model's formula (forward + backward,
useful work only, rematerialisation not counted), divided by the CPU's own f32 matmul rate measured
in the same run. Also printed: what the step's matmuls (forward and backward) take when each is
timed alone (`ceiling.py`), the bound the step cannot beat with these kernels.

Run: python bench/train_step.py [--batch 4] [--length 512] [--repeats 5] [--remat none]
     [--scan-layers 0]
The last line is the headline: `train_step: ours X tok/s, transformers Y tok/s, ratio Z`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import ceiling  # noqa: E402
from forward import matmul_flops_per_second, model_flops, reference_model  # noqa: E402
from zppo_jax.models import qwen3_5  # noqa: E402
from zppo_jax.train import learner as learner_lib  # noqa: E402

THREADS = 2


def make_batch(ids: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
  """One sequence per row; every next-token prediction is trained (the last one has no target)."""
  b, t = ids.shape
  rng = np.random.RandomState(seed)
  mask = np.ones((b, t), np.float32)
  mask[:, -1] = 0.0
  return dict(
      tokens=ids.astype(np.int32),
      targets=np.concatenate([ids[:, 1:], np.zeros((b, 1), ids.dtype)], 1).astype(np.int32),
      segment_ids=np.ones((b, t), np.int32),
      positions=np.broadcast_to(np.arange(t, dtype=np.int32), (3, b, t)).copy(),
      loss_mask=mask,
      advantages=(rng.choice([-1.0, 1.0], (b, 1)) * mask).astype(np.float32),
      sampler_logprobs=np.full((b, t), -10.4, np.float32),  # ≈ log(1/V): near a random model
  )


def torch_policy_loss(model, batch, clip_low=0.2, clip_high=0.28, dual_clip=10.0):
  """The same token-mean PPO loss from transformers' full logits."""
  logits = model(torch.from_numpy(batch["tokens"]).long()).logits.float()
  logp = torch.log_softmax(logits, -1)
  lp = torch.gather(logp, -1, torch.from_numpy(batch["targets"]).long()[..., None])[..., 0]
  mask = torch.from_numpy(batch["loss_mask"])
  adv = torch.from_numpy(batch["advantages"])
  ratio = torch.exp(torch.where(mask > 0, lp - torch.from_numpy(batch["sampler_logprobs"]), 0.0))
  pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_low, 1 + clip_high))
  pg = torch.where(adv < 0, torch.minimum(pg, -dual_clip * adv), pg)
  return (pg * mask).sum() / mask.sum()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--warmups", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--remat", default="none", choices=("none", "dots", "full"))
  parser.add_argument("--token-chunk", type=int, default=512)
  parser.add_argument("--scan-layers", type=int, default=0, choices=(0, 1),
                      help="scan the layer cycles (1) or unroll them (0, as the CPU demo runs)")
  args = parser.parse_args()
  torch.set_num_threads(THREADS)
  cfg = qwen3_5.bench_small()

  reference = reference_model(cfg)
  with tempfile.TemporaryDirectory() as path:
    reference.save_pretrained(path)
    ours = qwen3_5.load_pretrained(path, dtype=jnp.float32, remat=args.remat,
                                   scan_layers=bool(args.scan_layers))
  reference.train()
  n_params = qwen3_5.parameter_count(ours)
  lcfg = learner_lib.LearnerConfig(old_logprobs="sampler", token_chunk=args.token_chunk)
  learner = learner_lib.Learner(ours, lcfg)
  opt = lcfg.optim
  optimizer = torch.optim.AdamW(reference.parameters(), lr=opt.lr, betas=(opt.b1, opt.b2),
                                eps=opt.eps, weight_decay=opt.weight_decay)
  ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (args.batch, args.length))
  batch = make_batch(ids)

  def run_ours():
    [batch["old_logprobs"]] = learner.old_logprobs([batch])
    return jax.device_get(learner.update(batch))

  def run_reference():
    optimizer.zero_grad(set_to_none=True)
    loss = torch_policy_loss(reference, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), lcfg.optim.clip_norm)
    optimizer.step()
    return loss.item()

  start = time.perf_counter()
  first = run_ours()
  print(f"compile + first step (ours): {time.perf_counter() - start:.1f} s")
  ref_loss = run_reference()
  print(f"first-step loss: ours {first['loss']:.6f}, transformers {ref_loss:.6f}")
  for _ in range(args.warmups):
    run_ours()
    run_reference()
  ours_times, ref_times = [], []
  for _ in range(args.repeats):
    for fn, times in ((run_ours, ours_times), (run_reference, ref_times)):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
  peak = matmul_flops_per_second()
  bound = ceiling.matmul_bound(learner.trace_update(batch).jaxpr)
  tokens = args.batch * args.length
  flops = 3.0 * model_flops(cfg, args.batch, args.length)
  ours_s, ref_s = statistics.median(ours_times), statistics.median(ref_times)
  print(f"machine: nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, "
        f"torch threads {torch.get_num_threads()}, jax devices {jax.devices()}")
  print(f"model: bench-small {n_params / 1e6:.1f} M params, batch {args.batch} x {args.length} "
        f"tokens, {flops / 1e9:.1f} GFLOP per step (3x forward), remat {args.remat}, "
        f"scan_layers {bool(args.scan_layers)}, token chunk {args.token_chunk}")
  print(f"f32 matmul peak (2048^2 jnp.dot): {peak / 1e9:.1f} GFLOP/s")
  for name, seconds, times in (("ours", ours_s, ours_times), ("transformers", ref_s, ref_times)):
    print(f"{name}: median {seconds * 1e3:.0f} ms (runs {', '.join(f'{t:.2f}' for t in times)} s)"
          f", {flops / seconds / 1e9:.1f} GFLOP/s = {flops / seconds / peak:.2f} of matmul peak")
  print(f"context: {ceiling.describe(bound.seconds, bound.flops, ours_s, peak)}")
  print(f"train_step: ours {tokens / ours_s:.0f} tok/s, transformers {tokens / ref_s:.0f} tok/s, "
        f"ratio {ref_s / ours_s:.2f}")


if __name__ == "__main__":
  main()
