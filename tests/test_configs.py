"""Every config loads, carries the paper's values, and takes command-line overrides."""
import pathlib

import pytest

from zppo_jax.train import config as config_lib

CONFIGS = sorted(str(p) for p in (pathlib.Path(config_lib.REPO_ROOT) / "configs").glob("*.py"))
PAPER = sorted(p for p in CONFIGS if "_zppo" in p)


class Hyper:
  """The sweep helpers of big_vision style `get_hyper(h)`."""

  @staticmethod
  def sweep(key, values):
    return [{key: v} for v in values]

  @staticmethod
  def product(sweeps):
    out = [{}]
    for sweep in sweeps:
      out = [dict(a, **b) for a in out for b in sweep]
    return out

  @staticmethod
  def chainit(parts):
    return [x for part in parts for x in part]


def test_there_are_the_demo_and_four_paper_configs():
  names = {pathlib.Path(p).stem for p in CONFIGS}
  assert {"demo", "qwen3_5_0_8b_zppo", "qwen3_5_2b_zppo", "qwen3_5_4b_zppo",
          "qwen3_5_9b_zppo"} <= names


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_has_the_top_level_fields_and_sweeps(path):
  c = config_lib.load_config(path)
  for field in ("method", "seed", "total_steps", "checkpoint_every"):
    assert field in c
  assert c.method in config_lib.METHODS
  module = {}
  exec(compile(pathlib.Path(path).read_text(), path, "exec"), module)
  sweep = module["get_hyper"](Hyper())
  assert sweep and all(k.startswith("config.") for point in sweep for k in point)
  for point in sweep:  # Every sweep point is a valid override of this config.
    overrides = [f"--{k}={v}" for k, v in point.items()]
    swept = config_lib.load_config(path, overrides)
    config_lib.method_flags(swept)


@pytest.mark.parametrize("path", PAPER)
def test_paper_values(path):
  c = config_lib.load_config(path)
  rl, opt, s = c.rl, c.optim, c.sampling
  assert c.method == "zppo"
  assert (rl.group_size, rl.teacher_group_size, rl.tau) == (8, 4, 0.5)
  assert (rl.replay_ratio, rl.aug_ratio, rl.buffer_capacity, rl.inner_updates) == (
      0.25, 0.25, 10_000, 4)
  assert rl.batch_prompts == 384 and rl.adv_norm == "without_zero"
  assert (rl.clip_low, rl.clip_high, rl.dual_clip, rl.loss_agg) == (0.2, 0.28, 10.0,
                                                                      "token_mean")
  assert rl.kl_coef == 0.0 and rl.compress and rl.compress_max_tokens == 512
  assert rl.raw_candidate_max_tokens == 512 and rl.hint_max_tokens == 512
  assert not rl.cache_teacher_rollouts and rl.prefix_fraction == 0.4 and rl.jsd_beta == 0.5
  assert (opt.lr, opt.b1, opt.b2, opt.eps, opt.weight_decay, opt.clip_norm) == (
      1e-6, 0.9, 0.999, 1e-8, 0.1, 1.0)
  assert opt.state_dtype == "bfloat16" and c.student.param_dtype == "bfloat16"
  assert (s.temperature, s.top_p, s.top_k) == (1.0, 1.0, 0)
  assert s.max_new_tokens == s.teacher_max_new_tokens == 12_288
  assert c.data.max_prompt_tokens == 4096
  assert c.teacher.checkpoint == "Qwen/Qwen3.5-27B" and c.teacher.device_fraction == 0.25
  size = pathlib.Path(path).stem.split("_")[2:-1]
  assert c.student.checkpoint.lower().replace(".", "_").endswith("-" + "_".join(size))


def test_paper_sweep_covers_methods_inner_updates_and_norms():
  points = config_lib.paper_hyper(Hyper())
  assert {p["config.method"] for p in points if "config.method" in p} == set(
      config_lib.METHODS)
  assert {p["config.rl.inner_updates"] for p in points if "config.rl.inner_updates" in p} == {
      1, 4, 8, 16}
  assert {p["config.rl.adv_norm"] for p in points if "config.rl.adv_norm" in p} == {
      "without_zero", "with_zero", "none"}


def test_command_line_overrides_and_default_config():
  c, flags = config_lib.parse_args(["--config.method=grpo", "--config.rl.tau=0.3",
                                    "--workdir", "/tmp/x"])
  assert c.name == "demo" and c.method == "grpo" and c.rl.tau == 0.3 and flags.workdir == "/tmp/x"
  c, _ = config_lib.parse_args(["--config", "configs/demo.py:tiny"])
  assert c.name == "demo_tiny"
  with pytest.raises(Exception):
    config_lib.parse_args(["--config.rl.no_such_field=1"])


def test_method_flags():
  c = config_lib.load_config("configs/demo.py", ["--config.method=off_distill"])
  assert config_lib.method_flags(c).replay and config_lib.method_flags(c).distill == "off"
  c = config_lib.load_config("configs/demo.py", ["--config.method=on_distill",
                                                 "--config.rl.distill_with_buffer=False"])
  assert not config_lib.method_flags(c).replay
  c.method = "ppo"
  with pytest.raises(ValueError, match="ppo"):
    config_lib.method_flags(c)
  zppo = config_lib.METHODS["zppo"]
  assert zppo.replay and zppo.bcq and zppo.ncq
  assert not any(getattr(config_lib.METHODS["grpo"], k) for k in ("replay", "bcq", "ncq", "hint",
                                                                  "prefix", "distill"))


@pytest.mark.parametrize("size", ["0.8b", "2b", "4b", "9b"])
def test_one_paper_config_takes_the_size_and_the_old_names_are_aliases(size):
  c = config_lib.load_config(f"configs/zppo.py:{size}")
  alias = config_lib.load_config(f"configs/qwen3_5_{size.replace('.', '_')}_zppo.py")
  assert c.to_dict() == alias.to_dict()
  assert c.student.checkpoint == f"Qwen/Qwen3.5-{size.upper()}"
  with pytest.raises(Exception, match="unknown student size"):
    config_lib.load_config("configs/zppo.py:3b")
