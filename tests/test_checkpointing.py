"""Run checkpoints: round trip, keep-N, fallback past a damaged checkpoint, SIGTERM flag."""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np

from zppo_jax.train.checkpointing import PreemptionFlag, RunCheckpointer


def state(scale):
  return {"params": {"w": jnp.arange(6.0).reshape(2, 3) * scale},
          "opt": (jnp.ones(3) * scale, jnp.asarray(scale, jnp.int32))}


def test_round_trip_keep_n_and_fallback(tmp_path, capfd):
  ckpt = RunCheckpointer(tmp_path, keep=2, async_save=True)
  assert ckpt.restore(state(0)) is None
  for step in (1, 2, 3):
    ckpt.save(step, state(step), {"step": step, "buffer": {"entries": [["q", {"a": 1}, 0.0]]}})
  ckpt.close()
  again = RunCheckpointer(tmp_path, keep=2)
  assert again.steps() == [2, 3]
  got = again.restore(state(0))
  assert got.step == 3 and got.host["step"] == 3
  assert got.host["buffer"]["entries"] == [["q", {"a": 1}, 0.0]]
  jax.tree.map(np.testing.assert_array_equal, got.state, state(3))
  assert isinstance(got.state["opt"], tuple)
  for f in (tmp_path / "checkpoints" / "3" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  again.close()
  third = RunCheckpointer(tmp_path, keep=2)
  got = third.restore(state(0))
  assert got.step == 2
  jax.tree.map(np.testing.assert_array_equal, got.state, state(2))
  err = capfd.readouterr().err
  assert "step 3" in err and "cannot be restored" in err
  assert (tmp_path / "checkpoints_corrupt" / "3").exists()
  third.save(3, state(30), {"step": 3}, force=True)  # The step can be written again.
  third.close()
  assert RunCheckpointer(tmp_path).restore(state(0)).host == {"step": 3}


def test_sigterm_sets_the_flag_and_handler_is_restored():
  before = signal.getsignal(signal.SIGTERM)
  with PreemptionFlag() as flag:
    assert not flag.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert flag.requested
  assert signal.getsignal(signal.SIGTERM) == before
