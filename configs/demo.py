"""The CPU demo, the default of `zppo train`: ZPPO on a procedurally generated letter code.

Letters stand for digits and a question asks for the number a word spells
(`zppo_jax/data/letter_code.py`). Levels 1-2 spell common letters; a level-3 word has one rare
letter. A larger tiny teacher (SFT on every level with the code) and a tiny Qwen3.5 student (SFT on
every level, the rare letters from an outdated code, plus practice at reading BCQ / NCQ prompts)
are built by `zppo sft`, cached, then the student is trained with ZPPO for 30 steps; held-out
accuracy is reported per level.

  zppo train                                           # ZPPO
  zppo train --config configs/demo.py --config.method=grpo_replay   # the comparison run
  zppo sweep --config configs/demo.py:compare          # GRPO†, ZPPO, GRPO on two seeds
  zppo sweep report --config configs/demo.py:compare   # side by side, with the seed spread
  zppo train --config configs/demo.py:tiny             # a seconds-long smoke run (tests)
  zppo train --config configs/demo.py:visual           # the multimodal path: digits in images

The visual variant asks "What is the sum of the digits in the image?" about 64 x 64 images of
rendered digits; student and teacher are multimodal (the tiny decoders plus a one-block vision
tower), so images flow through sampling, BCQ / NCQ prompts and the learner's packed rows.
"""
import ml_collections

from zppo_jax.train.config import base_config, METHODS


def demo_fields() -> ml_collections.ConfigDict:
  """The demo's own fields (`config.demo`); a config with this group runs `train.demo.prepare`,
  which builds the procedural task, tokenizer and warm-started models."""
  d = ml_collections.ConfigDict()
  d.cache_dir = ""
  d.train_levels = (1, 2, 3)
  d.eval_level = 3           # the visual variant's held-out level
  d.num_train = 4096
  d.num_eval = 32            # held-out words per level (every level is evaluated)
  d.vocab_size = 512
  d.student_hidden = 64
  d.student_layers = 4
  d.teacher_hidden = 96
  d.teacher_layers = 4
  d.attention_every = 2      # full attention every this many layers (the rest GDN)
  d.student_sft_levels = (1, 2, 3)   # level 3 with the outdated rare digits (letter_code)
  d.teacher_sft_levels = (1, 2, 3)
  d.sft_examples_per_level = 2000
  d.practice_examples = 3000  # BCQ / NCQ practice on level-3-shaped words (letter_code)
  d.student_sft_steps = 800   # a sharper outdated belief: GRPO† finds no lucky rare digit
  d.teacher_sft_steps = 400
  d.student_sft_batch = 32   # examples per SFT step
  d.teacher_sft_batch = 32
  d.sft_row_len = 512        # packed SFT rows (the longest practice prompt is ~330 tokens)
  d.sft_lr = 3e-3
  # The visual variant (`configs/demo.py:visual`): "what is the sum of the digits in the image?"
  # on rendered digits; student and teacher are multimodal with a tiny vision tower.
  d.visual = False
  d.image_size = 64          # rendered images are image_size x image_size pixels
  d.vision_depth = 1
  d.vision_hidden = 32
  return d


ARGS = ("tiny", "visual", "compare")


def _parts(arg: str) -> set[str]:
  """`tiny`, `visual`, `compare`, or a comma-joined combination (`tiny,compare`: the comparison
  at the smoke-test size, as CI runs it)."""
  parts = set(filter(None, arg.split(",")))
  if parts - set(ARGS):
    raise ValueError(f"configs/demo.py: unknown argument {arg!r} (use '', 'tiny', 'visual', "
                     "'compare' or a comma-joined combination such as 'tiny,compare')")
  return parts


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  parts = _parts(arg)
  c = base_config()
  c.demo = demo_fields()
  c.name = "demo"
  c.total_steps = 30
  c.checkpoint_every = 5
  c.async_checkpointing = True
  c.student.param_dtype = c.student.compute_dtype = "float32"
  c.student.scan_layers = False   # two layer cycles: unrolled, a CPU step is ~25% faster
  c.teacher.param_dtype = c.teacher.compute_dtype = "float32"
  c.teacher.device_fraction = 0.0
  c.data.max_prompt_tokens = 128
  # Demo sequences (an augmented prompt with its candidates, plus the response) fit 512 tokens;
  # 512-token rows make the update's attention ~20% cheaper per token than 1024 (a longer
  # sequence gets longer rows for that step, never an error).
  c.rl.pack_row_len = 512
  c.rl.batch_prompts = 16
  c.rl.group_size = 8
  c.rl.teacher_group_size = 4
  c.rl.buffer_capacity = 256
  c.rl.inner_updates = 2
  c.rl.min_rows_per_update = 16   # one packed shape for every step: one compile of the update
  # The demo teacher is not trained to summarise, so candidates are its raw rollouts (the spec's
  # compression-off option).
  c.rl.compress = False
  c.rl.compress_max_tokens = c.rl.raw_candidate_max_tokens = c.rl.hint_max_tokens = 48
  c.sampling.max_new_tokens = 40
  c.sampling.teacher_max_new_tokens = 40
  # Tiny models from a short warm start: a larger step than the paper's 1e-6 for 27B-class
  # models, and every hard question of a step may get its BCQ and NCQ (the paper's rho_aug = 0.25
  # of a 384-prompt batch leaves 96 slots; of the demo's 16 prompts it would leave 4).
  c.optim.lr = 1e-3
  # At this rate Adam's first updates (each parameter moved by about lr) shake a tiny model hard
  # enough to scramble what it knows; a short warm-up keeps the start of the run about RL.
  c.optim.warmup_steps = 10
  c.rl.aug_ratio = 1.0
  c.optim.state_dtype = "float32"
  c.demo.cache_dir = "runs/.demo_cache"
  if parts & {"tiny", "visual"}:
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
    c.demo.sft_examples_per_level = c.demo.practice_examples = 50
    c.demo.student_sft_steps = 2
    c.demo.teacher_sft_steps = 2
    # One shape: student and teacher share every compiled program.
    c.demo.student_hidden = c.demo.teacher_hidden = 32
  if "visual" in parts:
    c.name = "demo_visual"
    c.demo.visual = True
    c.demo.train_levels = (1, 2)
    c.demo.eval_level = 2
    c.demo.image_size = 64
    # Every image is 64 x 64 pixels: a 4 x 4 patch grid, 4 image tokens, one vision program.
    c.data.image_min_pixels = c.data.image_max_pixels = 64 * 64
    c.data.min_image_side = 32
  if "compare" in parts:
    c.name += "_compare"
  return c


COMPARE_METHODS = ("grpo_replay", "zppo", "grpo")   # GRPO†, ZPPO, GRPO
COMPARE_SEEDS = (0, 1)


def get_hyper(h, arg: str = ""):
  """`configs/demo.py`: every method of the paper on the same task, one seed.
  `configs/demo.py:compare`: GRPO†, ZPPO and GRPO on each of `COMPARE_SEEDS` (a seed builds its
  own task split and warm starts), for `zppo sweep report`'s side-by-side diagnostics."""
  if "compare" in _parts(arg):
    return h.product([h.sweep("config.seed", COMPARE_SEEDS),
                      h.sweep("config.method", COMPARE_METHODS)])
  return h.product([h.sweep("config.method", sorted(METHODS))])
