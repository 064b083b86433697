"""Rewards: final-answer extraction, grading with a hard timeout, and LLM judges."""
from zppo_jax.rewards.extract import extract_answer, find_boxed, strip_think
from zppo_jax.rewards.grading import (GradeConfig, grade_answer, grade_local, is_free_form,
                                      strip_degree_percent)
from zppo_jax.rewards.judge import (Judge, JudgeItem, OpenAICompatibleJudge, judge_prompt,
                                    parse_verdict)
from zppo_jax.rewards.pool import GradeItem, GradingPool, PoolStats
from zppo_jax.rewards.scoring import RewardItem, default_pool, grade, grade_batch, needs_judge

__all__ = [
    "GradeConfig", "GradeItem", "GradingPool", "Judge", "JudgeItem", "OpenAICompatibleJudge",
    "PoolStats", "RewardItem", "default_pool", "extract_answer", "find_boxed", "grade",
    "grade_answer", "grade_batch", "grade_local", "is_free_form", "judge_prompt", "needs_judge",
    "parse_verdict", "strip_degree_percent", "strip_think",
]
