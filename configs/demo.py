"""The CPU demo, the default of `zppo train`: ZPPO on procedurally generated arithmetic.

A tiny Qwen3.5 student and a larger tiny teacher are warm-started by `zppo sft` on a generated
addition task (the student on the easy levels only), cached, then trained with ZPPO for a few steps.

  zppo train                                           # ZPPO
  zppo train --config configs/demo.py --config.method=grpo_replay   # the comparison run
  zppo train --config configs/demo.py:tiny             # a seconds-long smoke run (tests)
"""
import ml_collections

from zppo_jax.train.config import base_config, METHODS


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.name = "demo"
  c.total_steps = 12
  c.checkpoint_every = 4
  c.async_checkpointing = True
  c.student.param_dtype = c.student.compute_dtype = "float32"
  c.teacher.param_dtype = c.teacher.compute_dtype = "float32"
  c.teacher.device_fraction = 0.0
  c.data.max_prompt_tokens = 128
  c.rl.pack_row_len = 1024
  c.rl.batch_prompts = 16
  c.rl.group_size = 8
  c.rl.teacher_group_size = 4
  c.rl.buffer_capacity = 256
  c.rl.inner_updates = 2
  c.rl.min_rows_per_update = 16   # one packed shape for every step: one compile of the update
  # The demo teacher is not trained to summarise, so candidates are its raw rollouts (the spec's
  # compression-off option).
  c.rl.compress = False
  c.rl.compress_max_tokens = 48
  c.sampling.max_new_tokens = 48
  c.sampling.teacher_max_new_tokens = 48
  c.optim.lr = 1e-4
  c.optim.state_dtype = "float32"
  c.demo.enabled = True
  c.demo.cache_dir = "runs/.demo_cache"
  if arg == "tiny":
    c.name = "demo_tiny"
    c.total_steps = 2
    c.checkpoint_every = 1
    c.rl.batch_prompts = 4
    c.rl.group_size = 4
    c.rl.teacher_group_size = 2
    c.rl.inner_updates = 2
    c.rl.min_rows_per_update = 4
    c.sampling.max_new_tokens = c.sampling.teacher_max_new_tokens = 24
    c.demo.num_train = 256
    c.demo.num_eval = 8
    c.demo.sft_examples_per_level = 50
    c.demo.student_sft_steps = 2
    c.demo.teacher_sft_steps = 2
    c.demo.student_hidden = c.demo.teacher_hidden = 32  # One shape: student and teacher share
    c.rl.pack_row_len = 512                              # every compiled program.
  elif arg:
    raise ValueError(f"configs/demo.py: unknown argument {arg!r} (use '' or 'tiny')")
  return c


def get_hyper(h):
  """The demo's comparison sweep: every method of the paper on the same task."""
  return h.product([h.sweep("config.method", sorted(METHODS))])
