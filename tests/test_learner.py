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


UPDATES = 2
MICRO_CFG = dict(micro_batch_rows=2, optim=optim.OptimConfig(lr=1e-3))


@pytest.fixture(scope="module")
def packed():
  return make_batch()


@pytest.fixture(scope="module")
def hidden_fn():
  """One jitted forward shared by every reference computation (all tiny models share a graphdef)."""
  graphdef = nnx.graphdef(tiny_model())

  @jax.jit
  def hidden(state, tokens, positions, segment_ids):
    return nnx.merge(graphdef, state).forward(input_ids=tokens, positions=positions,
                                              segment_ids=segment_ids)[0]

  return lambda model, b: hidden(nnx.state(model), b["tokens"], b["positions"], b["segment_ids"])


def sgd():
  """Plain SGD: a parameter's update is proportional to its gradient (well conditioned)."""
  return optax.sgd(0.1)


def run_updates(lrn, batch, num_updates=UPDATES):
  """One rollout step as the student runs it: the rows split into `num_updates` mini-batches,
  every mini-batch's old log-probs first, then one update each; metrics per update."""
  size = batch["tokens"].shape[0] // num_updates
  minibatches = [{k: v[:, i * size:(i + 1) * size] if k == "positions" else
                  v[i * size:(i + 1) * size] for k, v in batch.items()}
                 for i in range(num_updates)]
  for minibatch, old in zip(minibatches, lrn.old_logprobs(minibatches)):
    minibatch["old_logprobs"] = old
  metrics = [lrn.update(minibatch) for minibatch in minibatches]
  return [{k: float(v) for k, v in m.items()} for m in jax.device_get(metrics)]


@pytest.fixture(scope="module")
def sgd_trained(packed):
  """The single-device reference of the sharded check: SGD updates and what they gave."""
  lrn = learner_lib.Learner(tiny_model(), learner_lib.LearnerConfig(**MICRO_CFG), tx=sgd())
  metrics = run_updates(lrn, packed[0].arrays())
  return dict(metrics=metrics, params=[np.asarray(x) for x in jax.tree.leaves(lrn.state.params)])


@pytest.fixture(scope="module")
def trained(packed):
  """A learner after one rollout step (I = 2 updates, 2 micro-batches each) and what it saw."""
  batch = packed[0].arrays()
  lrn = learner_lib.Learner(tiny_model(), learner_lib.LearnerConfig(**MICRO_CFG))
  before = np.asarray(lrn.logprobs(batch))
  metrics = run_updates(lrn, batch)
  return dict(learner=lrn, before=before, after=np.asarray(lrn.logprobs(batch)), metrics=metrics,
              params=[np.asarray(x) for x in jax.tree.leaves(lrn.state.params)])


def test_packed_logprobs_equal_unpacked(trained, packed, hidden_fn):
  batch, prompts, responses = packed
  got = packing.unpack(trained["before"], batch.placements)
  # Unpacked: one sequence per row starting at column 0, followed by padding.
  n = len(prompts)
  rows = dict(tokens=np.zeros((n, ROW_LEN), np.int32), segment_ids=np.zeros((n, ROW_LEN), np.int32),
              positions=np.broadcast_to(np.arange(ROW_LEN, dtype=np.int32), (3, n, ROW_LEN)))
  for i, (p, r) in enumerate(zip(prompts, responses)):
    rows["tokens"][i, :len(p) + len(r)] = p + r
    rows["segment_ids"][i, :len(p) + len(r)] = 1
  model = tiny_model()
  lp, _ = logprobs_lib.full_logprobs(hidden_fn(model, rows), model.lm_head_kernel(),
                                     np.roll(rows["tokens"], -1, axis=1))
  for i, (p, r) in enumerate(zip(prompts, responses)):
    np.testing.assert_allclose(got[i], lp[i, len(p) - 1:len(p) + len(r) - 1], atol=1e-4,
                               rtol=1e-4)


def test_updates_are_on_policy_first_and_move_logprobs_with_the_advantage(trained, packed):
  batch, m = packed[0].arrays(), trained["metrics"]
  assert len(m) == 2 and [x["skipped"] for x in m] == [0.0, 0.0]
  # Old log-probs come from the parameters before the first update: it is exactly on-policy.
  np.testing.assert_allclose(m[0]["ratio_mean"], 1.0, atol=1e-6)
  assert m[0]["clip_low_frac"] == m[0]["clip_high_frac"] == 0.0
  assert m[1]["ratio_mean"] != 1.0
  delta = (trained["after"] - trained["before"])[batch["loss_mask"] > 0]
  adv = batch["advantages"][batch["loss_mask"] > 0]
  assert delta[adv > 0].mean() > 0 > delta[adv < 0].mean()


def test_non_finite_step_is_skipped(trained, packed):
  lrn = trained["learner"]
  batch = dict(packed[0].arrays())
  batch["advantages"] = np.where(batch["loss_mask"] > 0, np.nan, 0.0).astype(np.float32)
  params = jax.tree.map(np.asarray, lrn.state.params)
  opt = jax.tree.map(np.asarray, lrn.state.opt_state)
  step, skipped = int(lrn.state.step), int(lrn.state.skipped)
  metrics = run_updates(lrn, batch)
  assert [m["skipped"] for m in metrics] == [1.0, 1.0]
  assert int(lrn.state.skipped) == skipped + 2 and int(lrn.state.step) == step
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(lrn.state.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(opt), jax.tree.leaves(lrn.state.opt_state)):
    np.testing.assert_array_equal(a, b)


def test_distill_step_loss_is_full_vocabulary_jsd_and_decreases(packed, hidden_fn):
  batch = dict(packed[0].arrays())
  teacher, student = tiny_model(seed=7), tiny_model()
  t_hidden = hidden_fn(teacher, batch)
  batch["teacher_hidden"] = np.asarray(t_hidden)
  want = losses.jsd_loss(student.logits(hidden_fn(student, batch)), teacher.logits(t_hidden),
                         jnp.asarray(batch["loss_mask"]))
  lrn = learner_lib.Learner(student, learner_lib.LearnerConfig(optim=optim.OptimConfig(lr=1e-3)))
  first = lrn.distill_update(batch, teacher.lm_head_kernel())
  np.testing.assert_allclose(first["loss"], want, atol=1e-5, rtol=1e-5)
  second = lrn.distill_update(batch, teacher.lm_head_kernel())
  assert second["loss"] < first["loss"]


@pytest.mark.parametrize("wd,clip", [(0.1, 1.0), (0.0, None)])
def test_adamw_matches_torch(wd, clip):
  import torch  # noqa: PLC0415 (keeps the sharded subprocess, which imports this file, light)

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
jax.config.update("jax_compilation_cache_dir", {cache!r})
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
from zppo_jax import parallel
from zppo_jax.train import learner as learner_lib
import test_learner as t

assert len(jax.devices()) == 8, jax.devices()
batch = t.make_batch()[0].arrays()
# No micro-batching here (the unsharded reference accumulates over 2), so the comparison also
# checks that gradient accumulation is exact.
cfg = learner_lib.LearnerConfig(**dict(t.MICRO_CFG, micro_batch_rows=0))
mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
adam = learner_lib.Learner(t.tiny_model(), cfg, mesh=mesh)
kernel = adam.state.params["layers"][0]["mlp"]["gate_proj"]["kernel"].get_value()
assert len(kernel.sharding.device_set) == 8, kernel.sharding
mu = [x for x in jax.tree.leaves(adam.state.opt_state) if x.shape == kernel.shape][0]
assert mu.sharding == kernel.sharding, (mu.sharding, kernel.sharding)
lrn = learner_lib.Learner(t.tiny_model(), cfg, mesh=mesh, tx=t.sgd())
metrics = t.run_updates(lrn, batch)
leaves = [np.asarray(x) for x in jax.tree.leaves(lrn.state.params)]
np.savez({out!r}, *leaves, loss=[m["loss"] for m in metrics],
         grad_norm=[m["grad_norm"] for m in metrics])
print("OK")
"""


def test_sharded_step_on_8_cpu_devices_equals_single_device(sgd_trained, tmp_path):
  # Compared: the loss and gradient norm of every update and the parameters after plain SGD
  # updates, all well conditioned. Parameters after Adam are not: its normalisation turns
  # reduction-order noise in a near-zero gradient into a full-size step of either sign.
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(root))
  out_file = str(tmp_path / "sharded.npz")
  script = _SHARDED_SCRIPT.format(tests=str(root / "tests"), out=out_file,
                                  cache=str(root / ".jax_cache"))
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-4000:]
  got = np.load(out_file)
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(got[key], [m[key] for m in sgd_trained["metrics"]], atol=1e-5,
                               rtol=1e-5)
  assert len(got.files) == len(sgd_trained["params"]) + 2
  for i, want in enumerate(sgd_trained["params"]):
    np.testing.assert_allclose(got[f"arr_{i}"], want, atol=1e-5, rtol=1e-5)
