"""Mesh construction and logical-axis rules.

On one device every sharding collapses to a replicated one, so the layouts are checked on 8
simulated CPU devices in a subprocess (XLA flags are fixed when JAX starts).
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from zppo_jax import parallel


class _Block(nnx.Module):

  def __init__(self, rngs):
    self.w = parallel.param(jax.nn.initializers.normal(), rngs.params(), (8, 16),
                            (parallel.EMBED, parallel.MLP))
    self.scale = parallel.param(jax.nn.initializers.ones, rngs.params(), (8,), (parallel.NORM,))


class _Model(nnx.Module):

  def __init__(self, rngs):
    self.embed = parallel.param(jax.nn.initializers.normal(), rngs.params(), (32, 8),
                                (parallel.VOCAB, parallel.EMBED))

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata=parallel.SCAN_METADATA)
    def stack(rngs):
      return _Block(rngs)

    self.blocks = stack(rngs)


def test_make_mesh_fills_fsdp_and_checks_sizes():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == parallel.MESH_AXES
  assert mesh.shape == {"data": 1, "fsdp": jax.device_count(), "tensor": 1}
  with pytest.raises(ValueError, match="devices"):
    parallel.make_mesh(data=3, fsdp=1, tensor=jax.device_count())
  with pytest.raises(ValueError, match="bad mesh sizes"):
    parallel.make_mesh(data=-1, fsdp=-1)


def test_rule_sets():
  names = (parallel.EMBED, parallel.MLP)
  assert parallel.logical_to_spec(names, parallel.TRAIN_RULES) == P("fsdp", "tensor")
  assert parallel.logical_to_spec(names, parallel.SAMPLE_RULES) == P(None, "tensor")
  act = (parallel.BATCH, parallel.LENGTH, parallel.ACT_EMBED)
  for rules in (parallel.TRAIN_RULES, parallel.SAMPLE_RULES):
    assert parallel.logical_to_spec(act, rules) == P(("data", "fsdp"), None, None)
    assert parallel.logical_to_spec((parallel.LAYERS, parallel.NORM), rules) == P(None, None)


def test_rules_context_and_errors():
  with parallel.use_rules(parallel.SAMPLE_RULES):
    assert parallel.current_rules() == parallel.SAMPLE_RULES
    assert parallel.logical_to_spec((parallel.EMBED,)) == P(None)
  assert parallel.current_rules() == parallel.TRAIN_RULES
  with pytest.raises(ValueError, match="'nonsense' has no rule"):
    parallel.logical_to_spec(("nonsense",))
  with pytest.raises(ValueError, match="used twice"):
    parallel.logical_to_spec((parallel.BATCH, parallel.EMBED), parallel.TRAIN_RULES)


def test_named_sharding_checks_rank_and_divisibility():
  mesh = parallel.make_mesh()
  with pytest.raises(ValueError, match="rank"):
    parallel.named_sharding(mesh, (parallel.EMBED,), shape=(4, 4), what="w")
  fake = jax.sharding.AbstractMesh((2, 1, 3), parallel.MESH_AXES)
  with pytest.raises(ValueError, match="w: dim 1 .mlp. of size 4 is not divisible"):
    parallel.named_sharding(fake, (parallel.EMBED, parallel.MLP), parallel.TRAIN_RULES,
                            shape=(4, 4), what="w")


def test_scanned_params_get_layer_axis():
  model = _Model(nnx.Rngs(0))
  assert parallel.logical_axes(model.blocks.w) == (parallel.LAYERS, parallel.EMBED, parallel.MLP)
  assert model.blocks.w.shape == (3, 8, 16)


def test_param_without_names_is_an_error():
  class Bare(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="parameter w of shape .2, 2. has no logical axis names"):
    parallel.state_shardings(nnx.state(Bare()), parallel.make_mesh())


def test_constrain_without_mesh_is_identity():
  x = jnp.ones((2, 3, 4))
  assert parallel.constrain(x, (parallel.BATCH, parallel.LENGTH, parallel.ACT_MLP)) is x


def _eight_device_checks():
  assert jax.device_count() == 8, jax.devices()
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  shardings = parallel.state_shardings(nnx.state(_Model(nnx.Rngs(0))), mesh,
                                       parallel.TRAIN_RULES)
  assert shardings["blocks"]["w"].get_value().spec == P(None, "fsdp", "tensor")
  assert shardings["embed"].get_value().spec == P("tensor", "fsdp")

  eager = _Model(nnx.Rngs(0))
  for rules, spec in ((parallel.TRAIN_RULES, P(None, "fsdp", "tensor")),
                      (parallel.SAMPLE_RULES, P(None, None, "tensor"))):
    sharded = parallel.create_sharded(lambda: _Model(nnx.Rngs(0)), mesh, rules)
    np.testing.assert_allclose(sharded.blocks.w[...], eager.blocks.w[...], rtol=1e-6)
    assert sharded.blocks.w[...].sharding.spec == spec
    assert sharded.blocks.w[...].addressable_shards[0].data.shape == (
        (3, 4, 8) if rules is parallel.TRAIN_RULES else (3, 8, 8))

  names = (parallel.BATCH, parallel.LENGTH, parallel.ACT_MLP)

  @jax.jit
  def f(x):
    return parallel.constrain(x * 2, names)

  with jax.set_mesh(mesh):
    y = f(jnp.ones((4, 3, 4)))
    with pytest.raises(ValueError, match="rank"):
      parallel.constrain(y, names[:2])
  assert y.sharding.spec == P(("data", "fsdp"), None, "tensor")
  print("EIGHT DEVICE CHECKS OK")


def test_layouts_on_eight_simulated_devices():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": os.path.join(root, ".jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
         "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
  run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                       timeout=300)
  assert "EIGHT DEVICE CHECKS OK" in run.stdout, run.stdout + run.stderr


if __name__ == "__main__":
  _eight_device_checks()
