"""Length budgets that never crash (shared/ZPPO_SPEC.md §3, §6): rollouts in calls of
`sampling.rows_per_call` rows, the forced prefix inside the response budget, augmented prompts that
do not fit the context skipped and counted, packed rows as long as the longest sequence, and the
teacher's text jobs with thinking off."""
import random

from test_trainer_loop import ScriptedPolicy, assets, make_trainer  # noqa: F401 (fixture)
from zppo_jax.data.prompts import encode_prompt
from zppo_jax.sampling import SamplingParams
from zppo_jax.sampling.sampler import SamplerOutput
from zppo_jax.train import augment
from zppo_jax.train.groups import Completion, Group, RolloutSpec, sample


class RecordingSampler:
  """Returns, per prompt and sample, the prompt's first id repeated; records each call."""

  def __init__(self):
    self.calls = []

  def generate(self, prompts, params, seed):
    self.calls.append((len(prompts), params.num_samples, seed))
    tokens = [[[p[0]] * 3 for _ in range(params.num_samples)] for p in prompts]
    logprobs = [[[-1.0] * 3 for _ in range(params.num_samples)] for _ in prompts]
    return SamplerOutput(tokens, logprobs, logprobs, [], [])


def test_rollouts_are_sampled_in_calls_of_rows_per_call_rows():
  sampler = RecordingSampler()
  prompts = [[i] for i in range(5)]
  out = sample(sampler, SamplingParams(), prompts, num_samples=4, max_new_tokens=8, seed=7,
               rows_per_call=8)
  assert [c[0] for c in sampler.calls] == [2, 2, 1]        # 8 rows = 2 prompts x 4 samples
  assert sampler.calls[0][2] == 7 and len({c[2] for c in sampler.calls}) == 3
  assert [group[0].tokens[0] for group in out] == [0, 1, 2, 3, 4]   # order kept
  one = RecordingSampler()
  sample(one, SamplingParams(), prompts, num_samples=4, max_new_tokens=8, seed=7)
  assert one.calls == [(5, 4, 7)]                           # 0 = one call, the seed as given


class LongPolicy(ScriptedPolicy):
  """Every rollout runs to the budget it is given (no stop token), and records the budgets."""

  def __init__(self, tok):
    super().__init__(tok)
    self.budgets = []

  def generate(self, prompts, *, num_samples, max_new_tokens, seed):
    self.budgets.append(max_new_tokens)
    return [[Completion([5] * max_new_tokens, [-1.0] * max_new_tokens)] * num_samples
            for _ in prompts]


def test_forced_prefix_is_inside_the_response_budget(assets, tmp_path):
  trainer = make_trainer(assets, tmp_path, "prefix")
  trainer.student = LongPolicy(trainer.tokenizer)
  budget = trainer.config.sampling.max_new_tokens
  record = {"id": "q", "question": "What is 1 + 2?", "answer": "3"}
  specs = [RolloutSpec(record, "prefix", [1, 2, 3], tuple(range(10))),
           RolloutSpec(record, "prefix", [1, 2, 3], tuple(range(4)))]
  groups = trainer._rollouts(specs, seed=0, times={})
  assert trainer.student.budgets == [budget - 4]   # one call, at the shortest prefix's budget
  for g, spec in zip(groups, specs):
    assert g.loss_start == len(spec.prefix)
    assert all(len(c.tokens) == budget for c in g.completions)      # prefix + continuation
    assert all(len(c.logprobs) == budget for c in g.completions)


def test_augmented_prompts_longer_than_the_context_are_skipped_and_counted(assets, tmp_path):
  trainer = make_trainer(assets, tmp_path, "zppo", overrides=["--config.sampling.max_context=100"])
  budget = trainer.config.sampling.max_new_tokens             # 24
  record = {"id": "q", "question": "q", "answer": "1"}
  fits = RolloutSpec(record, "ncq", [1] * (100 - budget))
  too_long = RolloutSpec(record, "ncq", [1] * (101 - budget))
  prefix_too_long = RolloutSpec(record, "prefix", [1] * 10, tuple([2] * budget))
  kept, skipped = trainer._fitting([fits, too_long, prefix_too_long])
  assert kept == [fits] and skipped == 2


def test_every_step_counts_the_prompts_skipped_for_length(assets, tmp_path):
  # A context that holds the plain prompts but no NCQ prompt: the step runs, NCQs are counted.
  trainer = make_trainer(assets, tmp_path, "grpo_replay_ncq", steps=1,
                         overrides=["--config.sampling.max_context=120"])
  metrics = trainer.run_step(1)
  assert metrics["reform/ncq"] >= 1
  assert metrics["reform/skipped_too_long"] == metrics["reform/ncq"]
  assert "groups/ncq" not in metrics


def test_teacher_text_jobs_run_with_thinking_off(assets, tmp_path):
  trainer = make_trainer(assets, tmp_path, "hint")
  tok = trainer.tokenizer
  tok.chat_template = ("{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + "
                       "m['content'] + '<|im_end|>\\n' }}{%- endfor -%}"
                       "{{ '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and "
                       "not enable_thinking -%}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif -%}")
  seen = []
  trainer.teacher.generate = lambda ids, **kw: seen.extend(ids) or [
      [Completion([1], [0.0])] for _ in ids]
  assert trainer.config.teacher.enable_thinking is False
  trainer._teacher_text(["summarise this"], 8)
  assert tok.decode(seen[0]).endswith("<think>\n\n</think>\n\n")
  on = encode_prompt(tok, "summarise this", enable_thinking=True)
  assert not tok.decode(on).endswith("</think>\n\n")


def test_empty_candidates_are_counted(assets, tmp_path):
  trainer = make_trainer(assets, tmp_path, "zppo", overrides=["--config.rl.compress=True"])
  record = {"id": "q", "question": "What is 1 + 2?", "answer": "3"}
  plain = Group("q", "plain", record, [1, 2], [Completion([1], [0.0])] * 2,
                texts=["\\boxed{4}", "\\boxed{5}"], rewards=[0.0, 0.0])
  outputs = {"<think>ran out of budget": 0, "<summary>ok \\boxed{5}</summary>": 1}
  _, metrics, _ = augment.build_specs(
      [plain], [], 4, trainer.config, trainer.flags, random.Random(0), trainer.tokenizer,
      lambda prompts, n: list(outputs)[:len(prompts)])
  assert metrics["reform/compressions"] == 2 and metrics["reform/empty_candidates"] == 1

