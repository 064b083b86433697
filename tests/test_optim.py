"""The optimizer's learning-rate warm-up: the Adam direction unchanged, scaled k / warmup_steps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zppo_jax.train import optim


def test_warmup_scales_the_kth_update_by_k_over_warmup_steps():
  params = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) / 7.0}
  grads = [{"w": jnp.asarray(np.random.default_rng(i).normal(size=(2, 3)), jnp.float32)}
           for i in range(6)]
  constant = optim.make_optimizer(1e-3)
  warm = optim.OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=4).optimizer()
  s_c, s_w = constant.init(params), warm.init(params)
  for k, g in enumerate(grads, start=1):
    u_c, s_c = constant.update(g, s_c, params)
    u_w, s_w = warm.update(g, s_w, params)
    np.testing.assert_allclose(u_w["w"], min(1.0, k / 4) * u_c["w"], rtol=1e-5, atol=1e-12)


def test_negative_warmup_is_rejected():
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.OptimConfig(warmup_steps=-1)
