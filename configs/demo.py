"""The CPU demo, the default of `zppo train`: ZPPO on procedurally generated arithmetic.

A tiny Qwen3.5 student and a larger tiny teacher are warm-started by `zppo sft` on a generated
addition task (the student on the easy levels only), cached, then trained with ZPPO for a few steps.

  zppo train                                           # ZPPO
  zppo train --config configs/demo.py --config.method=grpo_replay   # the comparison run
  zppo train --config configs/demo.py:tiny             # a seconds-long smoke run (tests)
  zppo train --config configs/demo.py:visual           # the multimodal path: digits in images

The visual variant asks "What is the sum of the digits in the image?" about 64 x 64 images of
rendered digits; student and teacher are multimodal (the tiny decoders plus a one-block vision
tower), so images flow through sampling, BCQ / NCQ prompts and the learner's packed rows.
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
  if arg in ("tiny", "visual"):
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
  if arg == "visual":
    c.name = "demo_visual"
    c.demo.visual = True
    c.demo.train_levels = (1, 2)
    c.demo.eval_level = 2
    c.demo.image_size = 64
    # Every image is 64 x 64 pixels: a 4 x 4 patch grid, 4 image tokens, one vision program.
    c.data.image_min_pixels = c.data.image_max_pixels = 64 * 64
    c.data.min_image_side = 32
  elif arg not in ("", "tiny"):
    raise ValueError(f"configs/demo.py: unknown argument {arg!r} (use '', 'tiny' or 'visual')")
  return c


def get_hyper(h):
  """The demo's comparison sweep: every method of the paper on the same task."""
  return h.product([h.sweep("config.method", sorted(METHODS))])
