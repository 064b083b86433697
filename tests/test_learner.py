"""The learner on the tiny Qwen3.5: packing, accumulation, skipping, distillation, AdamW, sharding."""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from zppo_jax.data import packing
from zppo_jax.models.qwen3_5 import config as config_lib
from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM
from zppo_jax.rl import logprobs as logprobs_lib
from zppo_jax.rl import losses
from zppo_jax.train import learner as learner_lib
from zppo_jax.train import optim

ROWS, ROW_LEN = 8, 16


def make_batch(seed=0, rows=ROWS, row_len=ROW_LEN, vocab=128):
  """Random prompt/response pairs packed into `rows` rows, with ±1 advantages."""
  rng = np.random.default_rng(seed)
  prompts, responses, advantages = [], [], []
  used = 0
  while used < rows * row_len * 0.7:
    p, r = int(rng.integers(2, 6)), int(rng.integers(2, 8))
    prompts.append(rng.integers(1, vocab, p).tolist())
    responses.append(rng.integers(1, vocab, r).tolist())
    advantages.append(float(rng.choice([-1.0, 1.0])))
    used += p + r
  sampler = [rng.normal(-4.0, 0.1, len(r)) for r in responses]
  return packing.pack(prompts, responses, row_len, advantages=advantages, num_rows=rows,
                      sampler_logprobs=sampler), prompts, responses


def tiny_model(seed=0):
  return Qwen3_5ForCausalLM(config_lib.tiny(), rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def packed():
  return make_batch()


@pytest.fixture(scope="module")
def learners():
  cfg = learner_lib.LearnerConfig(num_updates=2, learning_rate=1e-3)
  whole = learner_lib.Learner(tiny_model(), cfg)
  micro = learner_lib.Learner(tiny_model(), learner_lib.LearnerConfig(
      num_updates=2, micro_batch_rows=2, learning_rate=1e-3))
  return whole, micro


def test_packed_logprobs_equal_unpacked(learners, packed):
  batch, prompts, responses = packed
  got = packing.unpack(np.asarray(learners[0].logprobs(batch.arrays())), batch.placements)
  # Unpacked: one sequence per row, right-padded, no segment ids, default positions.
  n = len(prompts)
  ids = np.zeros((n, ROW_LEN), np.int32)
  mask = np.zeros((n, ROW_LEN), np.int32)
  for i, (p, r) in enumerate(zip(prompts, responses)):
    ids[i, :len(p) + len(r)] = p + r
    mask[i, :len(p) + len(r)] = 1
  model = tiny_model()

  @jax.jit
  def unpacked(ids, mask):
    hidden, _ = model.forward(input_ids=ids, attention_mask=mask)
    return logprobs_lib.full_logprobs(hidden, model.lm_head_kernel(), jnp.roll(ids, -1, axis=1))[0]

  lp = np.asarray(unpacked(ids, mask))
  for i, (p, r) in enumerate(zip(prompts, responses)):
    np.testing.assert_allclose(got[i], lp[i, len(p) - 1:len(p) + len(r) - 1], atol=1e-4,
                               rtol=1e-4)


def test_micro_batch_accumulation_matches_whole_batch_and_updates_move_logprobs(learners, packed):
  whole, micro = learners
  batch = packed[0].arrays()
  before = np.asarray(whole.logprobs(batch))
  m_whole = whole.train_step(batch)
  m_micro = micro.train_step(batch)
  assert len(m_whole) == 2
  # Old log-probs come from the parameters before the first update: it is exactly on-policy.
  np.testing.assert_allclose(m_whole[0]["ratio_mean"], 1.0, atol=1e-6)
  assert m_whole[1]["ratio_mean"] != 1.0
  for a, b in zip(m_whole, m_micro):
    np.testing.assert_allclose(a["loss"], b["loss"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], atol=1e-5, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(whole.state.params), jax.tree.leaves(micro.state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  assert int(whole.state.step) == 2 and int(whole.state.skipped) == 0
  after = np.asarray(whole.logprobs(batch))
  delta = (after - before)[batch["loss_mask"] > 0]
  adv = batch["advantages"][batch["loss_mask"] > 0]
  assert delta[adv > 0].mean() > 0 > delta[adv < 0].mean()


def test_non_finite_step_is_skipped(learners, packed):
  whole = learners[0]
  batch = dict(packed[0].arrays())
  batch["advantages"] = np.where(batch["loss_mask"] > 0, np.nan, 0.0).astype(np.float32)
  params = jax.tree.map(np.asarray, whole.state.params)
  opt = jax.tree.map(np.asarray, whole.state.opt_state)
  step, skipped = int(whole.state.step), int(whole.state.skipped)
  metrics = whole.train_step(batch)
  assert [m["skipped"] for m in metrics] == [1.0, 1.0]
  assert int(whole.state.skipped) == skipped + 2 and int(whole.state.step) == step
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(whole.state.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(opt), jax.tree.leaves(whole.state.opt_state)):
    np.testing.assert_array_equal(a, b)


def test_distill_step_loss_is_full_vocabulary_jsd_and_decreases(packed):
  batch = dict(packed[0].arrays())
  teacher = tiny_model(seed=7)
  t_hidden, _ = jax.jit(lambda b: teacher.forward(input_ids=b["tokens"], positions=b["positions"],
                                                  segment_ids=b["segment_ids"]))(batch)
  batch["teacher_hidden"] = np.asarray(t_hidden)
  student = tiny_model()
  mask = jnp.asarray(batch["loss_mask"])
  s_hidden, _ = student.forward(input_ids=jnp.asarray(batch["tokens"]),
                                positions=jnp.asarray(batch["positions"]),
                                segment_ids=jnp.asarray(batch["segment_ids"]))
  want = losses.jsd_loss(student.logits(s_hidden), teacher.logits(t_hidden), mask)
  lrn = learner_lib.Learner(student, learner_lib.LearnerConfig(learning_rate=1e-3))
  first = lrn.distill_step(batch, teacher.lm_head_kernel())
  np.testing.assert_allclose(first["loss"], want, atol=1e-5, rtol=1e-5)
  second = lrn.distill_step(batch, teacher.lm_head_kernel())
  assert second["loss"] < first["loss"]


@pytest.mark.parametrize("wd,clip", [(0.1, 1.0), (0.0, None)])
def test_adamw_matches_torch(wd, clip):
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=(5, 3)).astype(np.float32)
  grads = [rng.normal(size=(5, 3)).astype(np.float32) * 3 for _ in range(3)]
  tx = optim.make_optimizer(1e-2, weight_decay=wd, max_grad_norm=clip)
  params = {"w": jnp.asarray(p0)}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
  w = torch.nn.Parameter(torch.tensor(p0))
  opt = torch.optim.AdamW([w], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
  for g in grads:
    w.grad = torch.tensor(g)
    if clip is not None:
      torch.nn.utils.clip_grad_norm_([w], clip)
    opt.step()
  np.testing.assert_allclose(params["w"], w.detach().numpy(), atol=1e-5, rtol=1e-5)


def test_bf16_optimizer_state_and_config_errors():
  tx = optim.make_optimizer(state_dtype="bfloat16")
  state = tx.init({"w": jnp.ones((2, 2))})
  assert {x.dtype for x in jax.tree.leaves(state) if x.ndim == 2} == {jnp.dtype(jnp.bfloat16)}
  with pytest.raises(ValueError, match="state_dtype"):
    optim.make_optimizer(state_dtype="fp8")
  with pytest.raises(ValueError, match="max_response_len"):
    learner_lib.LearnerConfig(loss_agg="seq_mean_token_sum_norm")
  with pytest.raises(ValueError, match="old_logprobs"):
    learner_lib.LearnerConfig(old_logprobs="cache")


_SHARDED_SCRIPT = r"""
import sys
sys.path.insert(0, {tests!r})
import jax, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
from zppo_jax import parallel
from zppo_jax.train import learner as learner_lib
import test_learner as t

assert len(jax.devices()) == 8, jax.devices()
batch = t.make_batch()[0].arrays()
cfg = learner_lib.LearnerConfig(num_updates=2, micro_batch_rows=2, learning_rate=1e-3)
single = learner_lib.Learner(t.tiny_model(), cfg, mesh=parallel.make_mesh(
    1, 1, 1, devices=jax.devices()[:1]))
mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
sharded = learner_lib.Learner(t.tiny_model(), cfg, mesh=mesh)
kernel = sharded.state.params["layers"][0]["mlp"]["gate_proj"]["kernel"]
assert len(kernel.get_value().sharding.device_set) == 8, kernel.get_value().sharding
m1, m8 = single.train_step(batch), sharded.train_step(batch)
for a, b in zip(m1, m8):
  np.testing.assert_allclose(a["loss"], b["loss"], atol=1e-5, rtol=1e-5)
for a, b in zip(jax.tree.leaves(single.state.params), jax.tree.leaves(sharded.state.params)):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
print("OK", m8[0]["loss"], m8[1]["loss"])
"""


def test_sharded_step_on_8_cpu_devices_equals_single_device():
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(root))
  script = _SHARDED_SCRIPT.format(tests=str(root / "tests"))
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-4000:]
