"""`zppo plan`: topology names, the cost formula, an AOT compile of the tiny run for a TPU slice."""
import numpy as np
import pytest

from zppo_jax import plan
from zppo_jax.models.qwen3_5 import config as mc
from zppo_jax.train import config as config_lib

TINY_RUN = ["--config.data.max_prompt_tokens=32", "--config.sampling.max_new_tokens=32",
            "--config.rl.pack_row_len=64", "--config.rl.batch_prompts=8",
            "--config.teacher.device_fraction=0"]


def test_topology_names():
  t = plan.parse_topology("v5p-128")
  assert (t.chips, t.desc, t.chip.hbm_gib) == (64, "v5p:4x4x4", 95.0)
  assert plan.parse_topology("v6e-64").desc == "v6e:8x8"
  assert plan.parse_topology("v5e-16").desc == "v5e:4x4"
  assert plan.parse_topology("v4-32").chips == 16
  assert plan.scaled(plan.parse_topology("v5e-16"), 4).name == "v5e-64"
  for bad in ("v7x-8", "v5p", "v5p-x", "v5e-12"):
    with pytest.raises(ValueError, match="v5e-12|unknown topology|power-of-two"):
      plan.parse_topology(bad)


LANGUAGE_PARAMS = {"qwen3_5_0_8b": 752_393_024, "qwen3_5_2b": 1_881_825_088,
                   "qwen3_5_4b": 4_205_751_296, "qwen3_5_9b": 8_953_803_264,
                   "qwen3_5_27b": 26_895_998_464}


def test_flop_formula_counts_the_parameters():
  # Matmul weights = every parameter but norms, conv taps and GDN decay terms (< 0.5%), with the
  # embedding counted once (it is the LM head's matmul; an untied model has both).
  for name, total in LANGUAGE_PARAMS.items():
    cfg = mc.PRESETS[name]()
    n = plan.matmul_params(cfg)
    n += 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size
    assert 0 < (total - n) / total < 0.005, name
    assert plan.forward_flops(cfg, 1, 0) > 2 * plan.matmul_params(cfg)
  # The KV part of the cache grows with the slots, the GDN state does not.
  cfg = mc.qwen3_5_2b(dtype=np.float32)
  assert plan.cache_bytes_per_row(cfg, 2048) - plan.cache_bytes_per_row(cfg, 1024) == \
      2 * 1024 * 2 * 256 * 4 * 6


def test_suggest_returns_the_first_slice_that_fits(monkeypatch):
  tried = []

  def fake_plan(shape, topo, log=print):
    tried.append(topo.name)
    return {"topology": topo.name, "fits": topo.chips >= 32}

  monkeypatch.setattr(plan, "plan", fake_plan)
  found = plan.suggest(None, plan.parse_topology("v6e-8"), log=lambda *_: None)
  assert found["topology"] == "v6e-32" and tried == ["v6e-16", "v6e-32"]


def test_plan_compiles_the_tiny_run_for_a_tpu_slice():
  reason = plan.libtpu_available()
  if reason:
    pytest.skip(f"no TPU compiler: {reason}")
  config = config_lib.load_config("configs/qwen3_5_2b_zppo.py", TINY_RUN)
  shape = plan.run_shape(config, student_preset=mc.tiny, teacher_preset=mc.tiny, teacher_fp8=True)
  lines = []
  result = plan.plan(shape, plan.parse_topology("v5e-4"), programs=("train", "teacher"),
                     log=lines.append)
  rows = {r["program"]: r for r in result["programs"]}
  assert set(rows) == {"train", "t_prefill", "t_decode"}, lines
  for r in rows.values():
    assert not r["error"] and r["fits"], r
    assert 0 < r["args_gib"] < r["total_gib"] <= r["hbm_gib"]
    assert r["tokens_per_s"] > 0 and 0 < r["mfu"] <= 1
  assert rows["train"]["chips"] == 4 and rows["t_decode"]["rows"] % 4 == 0
  assert result["fits"]
