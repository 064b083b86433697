"""The student as the step loop sees it: the sampler and the learner over one Qwen3.5 model.

`train_step` takes the step's rollouts already split into the I disjoint mini-batches, packs each
mini-batch once into the same number of fixed-length rows (bucketed to powers of two so a run
compiles a handful of programs), asks the learner for every mini-batch's old log-probs, then calls
`Learner.update` once per mini-batch. After the step the sampler gets the new weights.

A multimodal student (`Qwen3_5ForConditionalGeneration`) samples prompts with images
(`data.prompts.ImagePrompt`); its vision tower is frozen and the learner trains the text decoder,
on packed rows that carry the same image features and 3-axis positions the sampler used
(`sampling.media.prompt_inputs`).
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from zppo_jax.data import packing
from zppo_jax.data.prompts import ImagePrompt
from zppo_jax.data.vision import VisionProcessorConfig
from zppo_jax.models.qwen3_5.multimodal import Qwen3_5ForConditionalGeneration, text_decoder
from zppo_jax.sampling import Sampler, SamplingParams, media
from zppo_jax.train.groups import Completion, sample
from zppo_jax.train.learner import Learner, LearnerConfig


def vision_processor(model: Qwen3_5ForConditionalGeneration,
                     config=None) -> VisionProcessorConfig:
  """Image preprocessing for `model`'s vision tower with the run's pixel budget.

  Without a run `config`, the paper's budget (`VisionProcessorConfig` defaults).
  """
  v = model.cfg.vision
  budget = {}
  if config is not None:
    budget = dict(min_pixels=int(config.data.image_min_pixels),
                  max_pixels=int(config.data.image_max_pixels),
                  min_side=int(config.data.min_image_side))
  return VisionProcessorConfig(patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                               merge_size=v.spatial_merge_size, **budget)


class Student:
  """Samples and trains one model.

  Attributes:
    vision: the image preprocessing that matches the model's vision tower (None: text model).

  Args:
    model: the student `Qwen3_5ForCausalLM` or `Qwen3_5ForConditionalGeneration`.
    config: the run config.
    stop_ids: generation stops after any of these tokens.
    mesh: optional device mesh for both sampler and learner.
  """

  def __init__(self, model, config, stop_ids: Sequence[int], mesh=None):
    self.model = model
    self.config = config
    multimodal = isinstance(model, Qwen3_5ForConditionalGeneration)
    self.text_model = text_decoder(model)
    self.vision = vision_processor(model, config) if multimodal else None
    self.row_len = int(config.rl.pack_row_len)
    # Prompts are bucketed by their actual length up to the context (augmented prompts may be
    # longer than plain ones); the trainer skips what does not fit.
    self.sampler = Sampler(model, max_total_len=int(config.sampling.max_context), mesh=mesh)
    self.sampling = SamplingParams(temperature=config.sampling.temperature,
                                   top_p=config.sampling.top_p, top_k=config.sampling.top_k,
                                   stop_token_ids=tuple(stop_ids))
    self.mesh = mesh
    self.learner = Learner(self.text_model, LearnerConfig.from_config(config), mesh=mesh)

  def generate(self, prompts, *, num_samples: int, max_new_tokens: int, seed: int
               ) -> list[list[Completion]]:
    return sample(self.sampler, self.sampling, prompts, num_samples=num_samples,
                  max_new_tokens=max_new_tokens, seed=seed,
                  rows_per_call=int(self.config.sampling.rows_per_call))

  def pack(self, parts: Sequence[Sequence], with_advantages: bool = True,
           encoder: media.VisionEncoder | None = None) -> list[dict[str, np.ndarray]]:
    """Packs each mini-batch once, all into the same bucketed number of rows.

    Image prompts get their features from `encoder` (default: the student's vision tower).
    """
    vision = self._vision_inputs([s for p in parts for s in p], encoder or self.sampler.vision)
    # Rows are `rl.pack_row_len` long, or the power of two that holds the step's longest
    # sequence (a long augmented prompt): one more compiled shape, never an error.
    longest = max(len(s.prompt_ids) + len(s.tokens) for p in parts for s in p)
    row_len = max(self.row_len, packing.bucket(longest))
    needed = max(packing.rows_needed([len(s.prompt_ids) + len(s.tokens) for s in p], row_len)
                 for p in parts)
    rows = packing.bucket(needed, max(int(self.config.rl.min_rows_per_update),
                                      int(self.config.rl.micro_batch_rows)))
    return [self._pack_part(p, rows, row_len, with_advantages, vision).arrays() for p in parts]

  def _vision_inputs(self, sequences, encoder) -> dict[int, tuple]:
    """id(prompt) -> (positions, image mask, features) of each distinct image prompt (the G
    rollouts of a prompt share one prompt object, so its features are computed once)."""
    out = {}
    for s in sequences:
      prompt = s.prompt_ids
      if isinstance(prompt, ImagePrompt) and id(prompt) not in out:
        if encoder is None:
          raise ValueError("a training sequence has images but the model has no vision tower")
        out[id(prompt)] = media.prompt_inputs(prompt, encoder, sample=len(out))
    return out

  def _pack_part(self, part, num_rows, row_len, with_advantages, vision):
    inputs = [vision.get(id(s.prompt_ids)) for s in part]
    return packing.pack(
        [s.prompt_ids for s in part], [s.tokens for s in part], row_len,
        advantages=[s.advantage for s in part] if with_advantages else None,
        sampler_logprobs=[s.old_logprobs if len(s.old_logprobs) == len(s.tokens)
                          else np.zeros(len(s.tokens)) for s in part],
        response_masks=[[0] * s.loss_start + [1] * (len(s.tokens) - s.loss_start)
                        for s in part], num_rows=num_rows,
        prompt_positions=[None if x is None else x[0] for x in inputs] if vision else None,
        prompt_features=[None if x is None else x[1:] for x in inputs] if vision else None)

  def train_step(self, parts: Sequence[Sequence]) -> list[dict[str, float]]:
    """One optimizer update per mini-batch of `TrainSequence`s (Algorithm 1, step 9).

    Every mini-batch's log π_old is taken before the first update, so all I updates of the step
    share the same π_old (the parameters the step's rollouts were sampled with).
    """
    minibatches = self.pack(parts)
    for minibatch, old in zip(minibatches, self.learner.old_logprobs(minibatches)):
      minibatch["old_logprobs"] = old
    metrics = [self.learner.update(minibatch) for minibatch in minibatches]
    self._sync()
    return [{k: float(v) for k, v in m.items()} for m in jax.device_get(metrics)]

  def distill_step(self, sequences: Sequence, teacher) -> dict[str, float]:
    """One JSD update towards the teacher's distributions on `sequences`' response tokens."""
    [batch] = self.pack([sequences], with_advantages=False)
    # The teacher sees the same packed layout, with its own vision tower's image features.
    [teacher_batch] = (self.pack([sequences], with_advantages=False, encoder=teacher.vision)
                       if "vision_embeds" in batch else [batch])
    batch["teacher_hidden"] = teacher.hidden_states(teacher_batch)
    metrics = self.learner.distill_update(batch, teacher.lm_head_kernel())
    self._sync()
    return metrics

  def _sync(self) -> None:
    self.learner.update_model(self.text_model)
    self.sampler.update_params(self.model)

  def state(self):
    return self.learner.state

  def load_state(self, state) -> None:
    self.learner.state = state
    self._sync()

  def num_params(self) -> int:
    return int(sum(x.size for x in jax.tree.leaves(self.learner.state.params)))
