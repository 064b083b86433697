"""bench/ceiling.py counts a program's matmuls the way the program runs them."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import ceiling  # noqa: E402


def _program(x, w, v):
  y = x @ w                                                           # once
  y, _ = jax.lax.scan(lambda c, _: (c @ v, None), y, None, length=3)  # 3 times
  y = jax.lax.cond(jnp.sum(y) > 0, lambda y: (y @ v) @ v, lambda y: y @ v, y)  # dearer branch
  y = jax.lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1] @ v), (0, y))[1]
  return jnp.einsum('bij,bjk->bik', y.reshape(2, 2, 16), v.reshape(4, 16, 4)[:2])


def test_dots_are_counted_as_they_run():
  x, w, v = jnp.ones((4, 8)), jnp.ones((8, 16)), jnp.ones((16, 16))
  once, looped = ceiling.program_dots(jax.make_jaxpr(_program)(x, w, v))
  by_shapes = {(s[0], s[2]): n for s, n in once.items()}
  assert by_shapes == {((4, 8), (8, 16)): 1, ((4, 16), (16, 16)): 3 + 2, ((2, 2, 16), (2, 16, 4)): 1}
  assert [((s[0], s[2]), n) for s, n in looped.items()] == [(((4, 16), (16, 16)), 1)]
  flops = {(s[0], s[2]): ceiling._dot_flops(s) for s in once}
  assert flops[((4, 8), (8, 16))] == 2 * 4 * 8 * 16
  assert flops[((2, 2, 16), (2, 16, 4))] == 2 * 2 * 2 * 16 * 4   # batch dims counted once


def test_bound_sums_the_timed_dots():
  x, w, v = jnp.ones((4, 8)), jnp.ones((8, 16)), jnp.ones((16, 16))
  bound = ceiling.matmul_bound(jax.make_jaxpr(_program)(x, w, v))
  assert bound.distinct == 3
  assert bound.flops == 2 * 4 * 8 * 16 + 5 * 2 * 4 * 16 * 16 + 2 * 2 * 2 * 16 * 4
  assert bound.per_iteration_flops == 2 * 4 * 16 * 16
  assert 0 < bound.per_iteration < bound.seconds and np.isfinite(bound.seconds)
