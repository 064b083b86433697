"""The student as the step loop sees it: the sampler and the learner over one Qwen3.5 model.

`train_step` takes the step's rollouts already split into the I disjoint mini-batches, packs each
mini-batch into the same number of fixed-length rows (bucketed to powers of two so a run compiles a
handful of programs), and hands the concatenated rows to `Learner.train_step`, which applies one
update per row block. After an update the sampler gets the new weights.

A multimodal student (`Qwen3_5ForConditionalGeneration`) samples prompts with images
(`data.prompts.ImagePrompt`); its vision tower is frozen and the learner trains the text decoder,
on packed rows that carry the same image features and 3-axis positions the sampler used
(`sampling.media.prompt_inputs`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from zppo_jax.data import packing
from zppo_jax.data.prompts import ImagePrompt
from zppo_jax.data.vision import VisionProcessorConfig
from zppo_jax.models.qwen3_5.multimodal import Qwen3_5ForConditionalGeneration, text_decoder
from zppo_jax.sampling import Sampler, SamplingParams, media
from zppo_jax.train.groups import Completion
from zppo_jax.train.learner import Learner, LearnerConfig


def learner_config(config, num_updates: int) -> LearnerConfig:
  rl, opt = config.rl, config.optim
  return LearnerConfig(
      num_updates=num_updates, clip_low=rl.clip_low, clip_high=rl.clip_high,
      dual_clip=rl.dual_clip or None, loss_agg=rl.loss_agg, kl_coef=rl.kl_coef,
      kl_estimator=rl.kl_estimator, learning_rate=opt.lr, adam_b1=opt.b1, adam_b2=opt.b2,
      adam_eps=opt.eps, weight_decay=opt.weight_decay, max_grad_norm=opt.clip_norm or None,
      opt_state_dtype=opt.state_dtype, jsd_beta=rl.jsd_beta,
      max_response_len=config.sampling.max_new_tokens,
      micro_batch_rows=config.rl.micro_batch_rows or None)


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


def _bucket(n: int, minimum: int = 1) -> int:
  return max(minimum, 1 << (max(n, 1) - 1).bit_length())


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
    self.sampler = Sampler(model, max_total_len=self.row_len, mesh=mesh)
    self.sampling = SamplingParams(temperature=config.sampling.temperature,
                                   top_p=config.sampling.top_p, top_k=config.sampling.top_k,
                                   stop_token_ids=tuple(stop_ids))
    self.learners: dict[int, Learner] = {}
    self.mesh = mesh
    self.learner = self._learner(config.rl.inner_updates)

  def _learner(self, num_updates: int) -> Learner:
    """The learner for `num_updates` updates per call (distillation uses one); shared state."""
    if num_updates not in self.learners:
      learner = Learner(self.text_model, learner_config(self.config, num_updates), mesh=self.mesh)
      if self.learners:
        learner.state = next(iter(self.learners.values())).state
      self.learners[num_updates] = learner
    return self.learners[num_updates]

  def generate(self, prompts, *, num_samples: int, max_new_tokens: int, seed: int
               ) -> list[list[Completion]]:
    params = dataclasses.replace(self.sampling, num_samples=num_samples,
                                 max_new_tokens=max_new_tokens)
    out = self.sampler.generate(prompts, params, seed=seed)
    return [[Completion(t, lp) for t, lp in zip(ts, lps)]
            for ts, lps in zip(out.tokens, out.logprobs)]

  def pack(self, parts: Sequence[Sequence], with_advantages: bool = True,
           encoder: media.VisionEncoder | None = None) -> dict[str, np.ndarray]:
    """Packs each mini-batch into the same bucketed number of rows; rows concatenated.

    Image prompts get their features from `encoder` (default: the student's vision tower).
    """
    vision = self._vision_inputs([s for p in parts for s in p], encoder or self.sampler.vision)
    # First pass for the row count only (no image features: the rows are the same).
    packed = [self._pack_part(p, None, with_advantages, {}) for p in parts]
    rows = _bucket(max(b.tokens.shape[0] for b in packed),
                   max(int(self.config.rl.min_rows_per_update),
                       int(self.config.rl.micro_batch_rows)))
    packed = [self._pack_part(p, rows, with_advantages, vision) for p in parts]
    return {k: np.concatenate([b.arrays()[k] for b in packed], axis=1 if k == "positions" else 0)
            for k in packed[0].arrays()}

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

  def _pack_part(self, part, num_rows, with_advantages, vision):
    inputs = [vision.get(id(s.prompt_ids)) for s in part]
    return packing.pack(
        [s.prompt_ids for s in part], [s.tokens for s in part], self.row_len,
        advantages=[s.advantage for s in part] if with_advantages else None,
        sampler_logprobs=[s.old_logprobs if len(s.old_logprobs) == len(s.tokens)
                          else np.zeros(len(s.tokens)) for s in part],
        response_masks=[[0] * s.loss_start + [1] * (len(s.tokens) - s.loss_start)
                        for s in part], num_rows=num_rows,
        prompt_positions=[None if x is None else x[0] for x in inputs] if vision else None,
        prompt_features=[None if x is None else x[1:] for x in inputs] if vision else None)

  def train_step(self, parts: Sequence[Sequence]) -> list[dict[str, float]]:
    """One optimizer update per mini-batch of `TrainSequence`s (Algorithm 1, step 9)."""
    learner = self._learner(len(parts))
    metrics = learner.train_step(self.pack(parts))
    self._sync(learner)
    return metrics

  def distill_step(self, sequences: Sequence, teacher) -> dict[str, float]:
    """One JSD update towards the teacher's distributions on `sequences`' response tokens."""
    learner = self._learner(1)
    batch = self.pack([sequences], with_advantages=False)
    # The teacher sees the same packed layout, with its own vision tower's image features.
    teacher_batch = (self.pack([sequences], with_advantages=False, encoder=teacher.vision)
                     if "vision_embeds" in batch else batch)
    batch["teacher_hidden"] = teacher.hidden_states(teacher_batch)
    metrics = learner.distill_step(batch, teacher.lm_head_kernel())
    self._sync(learner)
    return metrics

  def _sync(self, learner: Learner) -> None:
    for other in self.learners.values():
      other.state = learner.state
    learner.update_model(self.text_model)
    self.sampler.update_params(self.model)

  def state(self):
    return self.learner.state

  def load_state(self, state) -> None:
    self.learner.state = state
    self._sync(self.learner)

  def num_params(self) -> int:
    return int(sum(x.size for x in jax.tree.leaves(self.learner.state.params)))
