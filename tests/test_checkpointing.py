"""Run checkpoints: round trip, keep-N, fallback past a damaged checkpoint, SIGTERM flag."""
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zppo_jax.train.checkpointing import (CheckpointMismatch, PreemptionFlag, RunCheckpointer,
                                          host_fields)


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


def test_a_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
  """`zppo train`'s default workdir is relative (`runs/demo`); Orbax needs absolute paths."""
  monkeypatch.chdir(tmp_path)
  ckpt = RunCheckpointer("runs/demo", keep=2, async_save=False)
  ckpt.save(1, state(1), {"step": 1})
  ckpt.close()
  assert (tmp_path / "runs" / "demo" / "checkpoints" / "1").is_dir()
  restored = RunCheckpointer("runs/demo").restore(state(0))
  assert restored.host == {"step": 1}
  np.testing.assert_array_equal(restored.state["params"]["w"], state(1)["params"]["w"])


def test_sigterm_sets_the_flag_and_handler_is_restored():
  before = signal.getsignal(signal.SIGTERM)
  with PreemptionFlag() as flag:
    assert not flag.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert flag.requested
  assert signal.getsignal(signal.SIGTERM) == before


def _params_and_opt(weight_decay):
  from zppo_jax.train.optim import make_optimizer
  params = {"w": jnp.ones((2, 3))}
  return {"params": params, "opt": make_optimizer(weight_decay=weight_decay).init(params)}


def _tree_files(root):
  return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


def test_config_change_stops_naming_keys_and_touches_nothing(tmp_path):
  # Weight decay 0.0 drops `add_decayed_weights` from the optimizer chain: a different structure.
  ckpt = RunCheckpointer(tmp_path, keep=3, async_save=False)
  for step in (1, 2):
    ckpt.save(step, _params_and_opt(0.1), {"step": step})
  ckpt.close()
  (tmp_path / "config.json").write_text(json.dumps({"optim": {"weight_decay": 0.1}, "seed": 0}))
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
  before = _tree_files(tmp_path)
  again = RunCheckpointer(tmp_path, keep=3)
  with pytest.raises(CheckpointMismatch) as err:
    again.restore(_params_and_opt(0.0), run_config={"optim": {"weight_decay": 0.0}, "seed": 0})
  message = str(err.value)
  assert "step 2" in message and "keys only in the checkpoint" in message
  assert "optim.weight_decay: 0.1 -> 0.0" in message and "seed" not in message.split("since")[1]
  assert "--workdir" in message and "config.json" in message
  again.close()
  assert _tree_files(tmp_path) == before  # Nothing moved, nothing rewritten.
  got = RunCheckpointer(tmp_path).restore(_params_and_opt(0.1))  # The old config resumes.
  assert got.step == 2


def test_shape_change_is_a_mismatch(tmp_path):
  ckpt = RunCheckpointer(tmp_path, async_save=False)
  ckpt.save(1, state(1), {"step": 1})
  ckpt.close()
  bigger = {"params": {"w": jnp.zeros((4, 3))}, "opt": state(1)["opt"]}
  with pytest.raises(CheckpointMismatch, match=r"params/w has shape \(2, 3\)"):
    RunCheckpointer(tmp_path).restore(bigger)
  assert RunCheckpointer(tmp_path).steps() == [1]


@pytest.mark.parametrize("damage", ["empty_host", "host_not_dict", "host_wrong_step",
                                    "host_missing_field", "host_not_json", "metadata_garbage",
                                    "state_metadata_garbage", "state_files_missing"])
def test_damaged_checkpoint_is_set_aside_and_the_previous_one_restores(tmp_path, damage, capfd):
  ckpt = RunCheckpointer(tmp_path, keep=3, async_save=False)
  for step in (1, 2):
    ckpt.save(step, state(step), {"step": step, "data": {}})
  ckpt.close()
  newest = tmp_path / "checkpoints" / "2"
  if damage == "empty_host":
    (newest / "host" / "metadata").write_text("{}")
  elif damage == "host_not_dict":
    (newest / "host" / "metadata").write_text("[2]")
  elif damage == "host_wrong_step":
    (newest / "host" / "metadata").write_text('{"step": 7, "data": {}}')
  elif damage == "host_missing_field":
    (newest / "host" / "metadata").write_text('{"step": 2}')
  elif damage == "host_not_json":
    (newest / "host" / "metadata").write_bytes(b"\xff{not json")
  elif damage == "metadata_garbage":
    (newest / "state" / "_METADATA").write_text("{}")
  elif damage == "state_metadata_garbage":
    (newest / "state" / "_METADATA").write_bytes(b"\x00garbage")
  else:
    for f in (newest / "state").rglob("*"):
      if f.is_file() and "ocdbt" in str(f):
        f.unlink()
  again = RunCheckpointer(tmp_path, keep=3)
  got = again.restore(state(0), check_host=host_fields(step=int, data=dict))
  assert got.step == 1 and got.host == {"step": 1, "data": {}}
  jax.tree.map(np.testing.assert_array_equal, got.state, state(1))
  assert "step 2" in capfd.readouterr().err
  assert (tmp_path / "checkpoints_corrupt" / "2").exists() and again.steps() == [1]
  again.close()
