"""Updates that land (shared/ZPPO_SPEC.md §3): bf16 weights at lr 1e-6 through the real optimizer
and update path (`train.optim`), with fp32 masters or Kahan compensation, move as fp32 weights do;
plain bf16 updates round away."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zppo_jax.train import optim

STEPS = 300
# ‖Δ_bf16 − Δ_fp32‖ / ‖Δ_fp32‖ of the bf16 weights after STEPS updates. What remains is the
# final rounding of the weights to bf16 (≤ half an ulp against ~2.5 ulps of movement), so it
# does not grow with the number of steps; plain bf16 updates lose almost all of Δ (~0.99).
LANDED = 0.2
LOST = 0.9


def _train(dtype, cfg: optim.OptimConfig):
  """Δ of the weights (in their dtype) and the updated tree after STEPS AdamW updates with a
  fixed gradient, from N(0, 0.02) weights rounded to bf16."""
  k_w, k_g = jax.random.split(jax.random.key(0))
  w0 = (0.02 * jax.random.normal(k_w, (128, 64))).astype(jnp.bfloat16)
  grad = {"w": jax.random.normal(k_g, (128, 64))}
  dtypes = {"w": jnp.dtype(dtype)}
  tx = cfg.optimizer()
  params = optim.master_params({"w": w0.astype(dtype)}, cfg)
  state, comp = tx.init(params), optim.init_compensation(params, cfg)

  @jax.jit
  def step(params, state, comp):
    updates, state = tx.update(grad, state, params)
    params, comp = optim.apply_updates(params, updates, comp)
    return params, state, comp

  for _ in range(STEPS):
    params, state, comp = step(params, state, comp)
  weights = optim.compute_params(params, dtypes)["w"]
  return np.asarray(weights, np.float32) - np.asarray(w0, np.float32), params


@pytest.fixture(scope="module")
def fp32_delta():
  delta, _ = _train(jnp.float32, optim.OptimConfig(lr=1e-6))
  return delta


def _relative(delta, ref):
  return float(np.linalg.norm(delta - ref) / np.linalg.norm(ref))


def test_master_weights_move_as_fp32_weights(fp32_delta):
  delta, params = _train(jnp.bfloat16, optim.OptimConfig(lr=1e-6))
  assert params["w"].dtype == jnp.float32   # the masters
  assert _relative(delta, fp32_delta) < LANDED
  assert np.mean(delta != 0) > 0.95


def test_kahan_updates_move_as_fp32_weights(fp32_delta):
  delta, params = _train(jnp.bfloat16, optim.OptimConfig(lr=1e-6, kahan=True))
  assert params["w"].dtype == jnp.bfloat16  # no master copy
  assert _relative(delta, fp32_delta) < LANDED


def test_plain_bf16_updates_round_away(fp32_delta):
  delta, _ = _train(jnp.bfloat16, optim.OptimConfig(lr=1e-6, master_dtype="none"))
  assert _relative(delta, fp32_delta) > LOST
  assert np.mean(delta != 0) < 0.1


def test_fp32_weights_are_their_own_masters():
  params = {"w": jnp.ones((2,), jnp.float32)}
  assert optim.master_params(params, optim.OptimConfig())["w"] is params["w"]
  with pytest.raises(ValueError, match="master_dtype"):
    optim.OptimConfig(master_dtype="bfloat16")


def test_plan_counts_the_master_copy():
  from zppo_jax.plan import shapes
  from zppo_jax.train.config import paper_config
  config = paper_config("0.8B")                       # bf16 weights, fp32 masters by default
  assert shapes.run_shape(config).learner_weights == 2.0
  config.optim.kahan = True                           # bf16 weights + a bf16 Kahan buffer
  assert shapes.run_shape(config).learner_weights == 2.0
  config.optim.kahan, config.optim.master_dtype = False, "none"
  assert shapes.run_shape(config).learner_weights == 1.0
  config.optim.master_dtype = "float32"
  config.student.param_dtype = "float32"              # fp32 weights are their own masters
  assert shapes.run_shape(config).learner_weights == 1.0


def test_learner_keeps_kahan_buffers_and_masters_for_bf16_models():
  from flax import nnx
  from test_learner import make_batch
  from zppo_jax.models.qwen3_5 import config as model_config
  from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM
  from zppo_jax.train.learner import Learner, LearnerConfig
  batch, _, _ = make_batch()
  arrays = batch.arrays()
  for opt, master, comp in ((optim.OptimConfig(), jnp.float32, False),
                            (optim.OptimConfig(kahan=True), jnp.bfloat16, True)):
    model = Qwen3_5ForCausalLM(model_config.tiny(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16),
                               rngs=nnx.Rngs(0))
    learner = Learner(model, LearnerConfig(optim=opt))
    arrays["old_logprobs"] = np.asarray(learner.logprobs(arrays))
    learner.update(arrays)
    state = learner.state
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(master)}
    assert (state.compensation is not None) == comp
    if comp:   # what rounding lost at lr 1e-6 is kept for the next update
      assert any(np.any(np.asarray(c, np.float32) != 0) for c in jax.tree.leaves(
          state.compensation))
    learner.update_model(model)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        jnp.dtype(jnp.bfloat16)}
