"""The ZPPO method on the host (no JAX): templates, reformulation, replay buffer, diagnostics."""
from zppo_jax.zppo import templates
from zppo_jax.zppo.reformulate import (QuestionGroup, Reformulation, ReformulationConfig,
                                       ReformulationPlan, Rollout, build_prefixes,
                                       build_reformulations, plan_hints, plan_reformulations,
                                       prefix_loss_mask, select_hard)
from zppo_jax.zppo.replay_buffer import ReplayBuffer
from zppo_jax.zppo.teacher_cache import TeacherRolloutCache

__all__ = [
    "QuestionGroup", "Reformulation", "ReformulationConfig", "ReformulationPlan", "ReplayBuffer",
    "Rollout", "TeacherRolloutCache", "build_prefixes", "build_reformulations", "plan_hints", "plan_reformulations",
    "prefix_loss_mask", "select_hard", "templates",
]
