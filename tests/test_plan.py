"""`zppo plan`: topology names, the cost formula, the abstract learner, an AOT compile of the tiny
run for a TPU slice, the step estimates."""
import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from zppo_jax import parallel
from zppo_jax import plan
from zppo_jax.models.qwen3_5 import config as mc
from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM
from zppo_jax.plan import estimate, report
from zppo_jax.train import config as config_lib
from zppo_jax.train import learner as learner_lib

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


@pytest.fixture(scope="module")
def tiny_shape():
  config = config_lib.load_config("configs/qwen3_5_2b_zppo.py", TINY_RUN)
  return plan.run_shape(config, student_preset=mc.tiny, teacher_preset=mc.tiny, teacher_fp8=True)


def test_suggest_raises_the_failing_sides_tensor_then_the_chips(monkeypatch, tiny_shape):
  tried = []

  def fake_plan(shape, topo, log=print):
    tried.append((topo.name, shape.tensor, shape.teacher_tensor))
    return {"topology": topo.name, "fits": topo.chips * shape.tensor >= 64}

  monkeypatch.setattr(report, "plan", fake_plan)
  found = plan.suggest(tiny_shape, plan.parse_topology("v6e-8"), ["train"], log=lambda *_: None)
  assert tried == [("v6e-8", 2, 1), ("v6e-8", 4, 1), ("v6e-16", 1, 1), ("v6e-16", 2, 1),
                   ("v6e-16", 4, 1)]
  assert (found["topology"], found["tensor"], found["teacher_tensor"]) == ("v6e-16", 4, 1)
  tried.clear()
  assert plan.suggest(tiny_shape, plan.parse_topology("v6e-8"), ["t_prefill"], max_factor=1,
                      log=lambda *_: None) is None
  assert tried == [("v6e-8", 1, 2), ("v6e-8", 1, 4)]


def test_automatic_rollout_rows_halve_until_the_programs_fit(monkeypatch, tiny_shape):
  compiled = []

  def fake_rollout(name, cfg, rows, group, shape, devices, hbm, fp8=False, tensor=1):
    compiled.append(rows)
    error = "" if rows <= 8 else "RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom"
    return tuple(plan.Program(f"{name}{p}", len(devices), hbm, argument=1.0, error=error)
                 for p in ("prefill", "decode"))

  monkeypatch.setattr(report.topology_lib, "topology_devices", lambda topo: list(range(8)))
  monkeypatch.setattr(report.programs_lib, "compile_rollout", fake_rollout)
  topo = plan.parse_topology("v5e-8")
  lines = []
  result = plan.plan(tiny_shape, topo, programs=("teacher",), log=lines.append)
  assert compiled == [32, 16, 8] and result["fits"], lines
  assert [r["rows"] for r in result["programs"]] == [8, 8]
  assert sum("trying" in line for line in lines) == 2
  # Rows asked for are compiled as asked, fitting or not.
  compiled.clear()
  asked = dataclasses.replace(tiny_shape, teacher_rows=16)
  assert not plan.plan(asked, topo, programs=("teacher",), log=lines.append)["fits"]
  assert compiled == [16]


def test_abstract_learner_lowers_the_same_update_as_a_real_one():
  # The plan compiles `Learner.abstract`'s update: it must be the program a real learner runs.
  mesh = parallel.make_mesh()
  cfg = learner_lib.LearnerConfig(micro_batch_rows=2)
  build = lambda: Qwen3_5ForCausalLM(mc.tiny(), rngs=nnx.Rngs(0))
  real = learner_lib.Learner(build(), cfg, mesh=mesh)
  abstract = learner_lib.Learner.abstract(nnx.eval_shape(build), cfg, mesh=mesh)
  leaves = jax.tree.leaves(abstract.state)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert [(x.shape, x.dtype, x.sharding) for x in leaves] == \
      [(x.shape, x.dtype, x.sharding) for x in jax.tree.leaves(real.state)]
  row = NamedSharding(mesh, PartitionSpec((parallel.DATA, parallel.FSDP)))
  batch = {k: jax.ShapeDtypeStruct((4, 16), dtype, sharding=row) for k, dtype in (
      ("tokens", jnp.int32), ("targets", jnp.int32), ("segment_ids", jnp.int32),
      ("loss_mask", jnp.float32), ("advantages", jnp.float32), ("old_logprobs", jnp.float32))}
  batch["positions"] = jax.ShapeDtypeStruct(
      (3, 4, 16), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec(None, (parallel.DATA,
                                                                             parallel.FSDP))))
  assert abstract.lower_update(batch).as_text() == real.lower_update(batch).as_text()


def test_plan_compiles_the_tiny_run_for_a_tpu_slice(tiny_shape):
  reason = plan.libtpu_available()
  if reason:
    pytest.skip(f"no TPU compiler: {reason}")
  lines = []
  config = config_lib.load_config("configs/qwen3_5_2b_zppo.py", TINY_RUN)
  steps = estimate.from_flags(_flags(), tiny_shape, config)
  result = plan.plan(tiny_shape, plan.parse_topology("v5e-4"), programs=("train", "teacher"),
                     log=lines.append, steps=steps)
  rows = {r["program"]: r for r in result["programs"]}
  assert set(rows) == {"train", "t_prefill", "t_decode"}, lines
  for r in rows.values():
    assert not r["error"] and r["fits"], r
    assert 0 < r["args_gib"] < r["total_gib"] <= r["hbm_gib"]
    assert r["tokens_per_s"] > 0 and 0 < r["mfu"] <= 1
  assert rows["train"]["chips"] == 4 and rows["t_decode"]["rows"] % 4 == 0
  assert result["fits"]
  # The step estimates: the teacher's phases and the update, each a finite time.
  for label in ("worst-case", "typical"):
    phases = result["step_s"][label]
    assert list(phases) == ["teacher rollout", "teacher compression", "update"], lines
    assert all(0 < s < float("inf") for s in phases.values()), phases
    assert sum(line.startswith(f"{label} step ") for line in lines) == 1, lines


def _sampling_programs(chips, hbm, weights, rows, dec_row, pre_row, prefix=""):
  """A compiled prefill and decode of `rows` rows whose memory is weights + rows' bytes."""
  per_chip = rows // chips
  pre = plan.Program(f"{prefix}prefill", chips, hbm, argument=weights + per_chip * pre_row,
                     rows=rows, hbm_bytes=weights)
  dec = plan.Program(f"{prefix}decode", chips, hbm, argument=weights + per_chip * dec_row,
                     rows=rows, hbm_bytes=weights)
  return pre, dec


SLOW_CHIP = plan.Chip("test", hbm_gib=1.0, peak_tflops=1e-9, hbm_gbps=1e-6, cores_in_name=1,
                      dims=2)


def test_a_sampling_phase_takes_as_few_calls_as_fit_in_hbm():
  cfg = mc.tiny()
  cache_row = plan.cache_bytes_per_row(cfg, 64)
  weights, chips = 1e6, 4
  # Per row and chip: decode 40,000 bytes; prefill its row's cache + 10,000 (scores, buffers).
  fits_10 = weights + 10 * (cache_row + 10_000) + 1
  pre, dec = _sampling_programs(chips, fits_10, weights, 8, 40_000, cache_row + 10_000)
  phase = lambda pre, dec, rows: estimate.sampling(
      "p", cfg, pre, dec, SLOW_CHIP, rows=rows, group=8, prompt_len=32, steps=32,
      compiled_prompt_len=32, compiled_cache_len=64)
  got = phase(pre, dec, 100)
  assert (got.calls, got.rows, got.rollouts) == (3, 40, 100)   # 40 rows a call fit, 100 asked
  prefill = max(plan.forward_flops(cfg, 5 * 32, 16) / (chips * 1e3), weights / 1e3)
  step = max(plan.forward_flops(cfg, 40, 64) / (chips * 1e3),
             (weights + 40 * cache_row / chips) / 1e3)
  assert got.seconds == pytest.approx(3 * (prefill + 32 * step))
  # Twice the room: 80 rows fit, 100 rows take 2 calls of 56.
  roomy = fits_10 + 10 * (cache_row + 10_000)
  got = phase(*_sampling_programs(chips, roomy, weights, 8, 40_000, cache_row + 10_000), 100)
  assert (got.calls, got.rows) == (2, 56)
  # A longer prompt bucket makes the prefill's per-prompt bytes (attention scores) grow.
  longer = estimate.sampling("p", cfg, pre, dec, SLOW_CHIP, rows=100, group=8, prompt_len=64,
                             steps=32, compiled_prompt_len=32, compiled_cache_len=64)
  assert longer.calls > 3
  # Nothing fits: the phase says so.
  none = phase(*_sampling_programs(chips, weights, weights, 8, 40_000, cache_row), 100)
  assert none.seconds == float("inf")
  assert estimate.format_step("typical", [none]) == "typical step does not fit: p does not fit"


def _flags(*argv):
  parser = argparse.ArgumentParser()
  estimate.add_flags(parser)
  return parser.parse_args(list(argv))


def test_typical_and_worst_steps_count_the_methods_rows(tiny_shape):
  config = config_lib.load_config("configs/qwen3_5_2b_zppo.py", TINY_RUN)
  steps = estimate.from_flags(_flags(), tiny_shape, config)
  hbm, weights = 1e9, 1e6
  programs = dict(zip(("prefill", "decode"),
                      _sampling_programs(4, hbm, weights, 8, 50_000, 60_000)))
  programs.update(zip(("t_prefill", "t_decode"),
                      _sampling_programs(4, hbm, weights, 8, 50_000, 60_000, "t_")))
  programs["train"] = plan.Program("train", 4, hbm, tokens=1000, hw_flops=4e6)
  phases = {label: {p.name: p for p in estimate.step_phases(tiny_shape, programs, SLOW_CHIP, a)}
            for label, a in steps.items()}
  worst, typical = phases["worst-case"], phases["typical"]
  assert list(worst) == ["student rollout", "teacher rollout", "teacher compression",
                         "BCQ/NCQ rollout", "update"]
  # 8 new + 2 replayed prompts, G_S = 8, G_T = 4; the BCQ + NCQ pool is 0.25 * 8 = 2 prompts:
  # one question with both, compressing its teacher and student candidates and every wrong one.
  assert [p.rollouts for p in worst.values()][:4] == [80, 40, 1 * (2 + 8), 16]
  assert [p.rollouts for p in typical.values()][:4] == [80, 5 * 4, 1 * (2 + 7), 16]
  assert sum(p.seconds for p in typical.values()) < sum(p.seconds for p in worst.values())
  # The update is the train program's seconds per token times the step's tokens.
  per_token = programs["train"].seconds(SLOW_CHIP) / 1000
  candidates = (2 + 8) / 2 * 512
  assert worst["update"].seconds == pytest.approx(
      per_token * (80 * (32 + 32) + 16 * (32 + candidates + 32)))
  # Without compression the teacher writes no summaries.
  config.rl.compress = False
  off = estimate.from_flags(_flags(), tiny_shape, config)["typical"]
  assert {p.name: p.rollouts for p in estimate.step_phases(
      tiny_shape, programs, SLOW_CHIP, off)}["teacher compression"] == 0
  for bad in (["--hard-fraction", "1.5"], ["--wrong-per-kept", "9"], ["--mean-prompt", "33"],
              ["--mean-response", "40"], ["--longest-response", "64"]):
    with pytest.raises(ValueError, match=bad[0]):
      estimate.from_flags(_flags(*bad), tiny_shape, config)
