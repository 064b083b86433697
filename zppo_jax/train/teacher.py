"""The frozen teacher: rollouts, compression, hints, judge verdicts, and token distributions.

The teacher is a second Qwen3.5 checkpoint loaded with the same loader and sampled with the same
sampler. Its placement is its own: the student's devices (a shared mesh) or a separate group of
devices, as in the paper's 6:2 split (`parallel.split_devices`). The distillation baselines need its
distributions at the student's positions: `hidden_states` runs its forward over the same packed
rows, and the learner applies its LM head chunk by chunk (`lm_head_kernel`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zppo_jax.models.qwen3_5.multimodal import text_decoder
from zppo_jax.rewards import JudgeItem, judge_prompt, parse_verdict
from zppo_jax.sampling import Sampler, SamplingParams
from zppo_jax.train.learner import packed_hidden
from zppo_jax.train.groups import Completion, sample


class Teacher:
  """Samples and scores with a frozen model.

  Attributes:
    vision: the `sampling.media.VisionEncoder` of a multimodal teacher (None: text model).

  Args:
    model: the teacher `Qwen3_5ForCausalLM`, or a `Qwen3_5ForConditionalGeneration` (then it
      samples image prompts too, and `hidden_states` takes packed rows with image features).
    max_total_len: longest prompt plus response a call may ask.
    sampling: temperature / top-p / top-k / stop ids of its rollouts.
    mesh: its own mesh (or the student's, or None).
    rows_per_call: rows (prompts × samples) per sampler call (0 = one call).
  """

  def __init__(self, model, max_total_len: int, sampling: SamplingParams, mesh=None,
               rows_per_call: int = 0):
    self.model = model
    self.mesh = mesh
    self.rows_per_call = rows_per_call
    self.sampler = Sampler(model, max_total_len=max_total_len, mesh=mesh)
    self.vision = self.sampler.vision
    self.sampling = sampling
    self.graphdef, self.params = nnx.split(text_decoder(model))

  def generate(self, prompts, *, num_samples: int, max_new_tokens: int, seed: int
               ) -> list[list[Completion]]:
    return sample(self.sampler, self.sampling, prompts, num_samples=num_samples,
                  max_new_tokens=max_new_tokens, seed=seed, rows_per_call=self.rows_per_call)

  def hidden_states(self, batch: dict[str, np.ndarray]) -> jax.Array:
    """float[R, T, Dt]: final hidden states over packed rows (`tokens`, `positions`,
    `segment_ids`, and `vision_embeds` / `vision_mask` when the prompts have images)."""
    keys = ("tokens", "positions", "segment_ids", "vision_embeds", "vision_mask")
    return _forward(self.graphdef, self.params,
                    {k: jnp.asarray(batch[k]) for k in keys if k in batch})

  def lm_head_kernel(self) -> jax.Array:
    """float[Dt, V]."""
    return nnx.merge(self.graphdef, self.params).lm_head_kernel()


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, batch):
  return jax.lax.stop_gradient(packed_hidden(nnx.merge(graphdef, params), batch))


class TeacherJudge:
  """The in-process judge: the teacher at temperature 0, 512 new tokens, strict JSON verdicts.

  Args:
    teacher: a `Teacher`.
    tokenizer: to build chat prompts and decode.
    max_new_tokens: the judge's budget (512 in the paper).
  """

  def __init__(self, teacher: Teacher, tokenizer, max_new_tokens: int = 512):
    self.teacher = teacher
    self.tokenizer = tokenizer
    self.max_new_tokens = max_new_tokens

  def verdicts(self, items: Sequence[JudgeItem]) -> list[bool]:
    from zppo_jax.data.prompts import encode_prompt  # Avoids an import cycle at module load.
    if not items:
      return []
    prompts = [encode_prompt(self.tokenizer, judge_prompt(item)) for item in items]
    params = dataclasses.replace(self.teacher.sampling, temperature=0.0, num_samples=1,
                                 max_new_tokens=self.max_new_tokens)
    out = self.teacher.sampler.generate(prompts, params, seed=0)
    stop = set(self.teacher.sampling.stop_token_ids)
    texts = [self.tokenizer.decode([t for t in toks[0] if t not in stop], skip_special_tokens=True)
             for toks in out.tokens]
    return [parse_verdict(t) for t in texts]

