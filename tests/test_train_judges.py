"""One judge for every method (shared/ZPPO_SPEC.md §5): `judge.url`, else `judge.checkpoint`, else
the teacher's checkpoint, for GRPO runs too; a run with free-form golds and none stops at
start-up with one line that says how to give one."""
import pytest

from zppo_jax.errors import UserError
from zppo_jax.rewards import JudgeItem, OpenAICompatibleJudge
from zppo_jax.train import judges
from zppo_jax.train.config import paper_config
from zppo_jax.train.teacher import TeacherJudge

ITEM = JudgeItem("JUDGE-OK: which shape?", "a red circle", "\\boxed{circle}")


class FakeTeacher:
  pass


def test_grpo_judges_with_the_teachers_checkpoint_loaded_on_first_use():
  config = paper_config("0.8B")
  config.method = "grpo"
  loaded = []

  def load(checkpoint):
    loaded.append(checkpoint)
    return FakeTeacher()

  judge = judges.make_judge(config, None, load, tokenizer=None)
  assert isinstance(judge, judges.LazyJudge) and loaded == []
  assert judge.verdicts([]) == [] and loaded == []   # nothing to judge: nothing loaded
  with pytest.raises(AttributeError):                 # the fake has no sampler: it was loaded
    judge.verdicts([ITEM])
  assert loaded == [config.teacher.checkpoint]


def test_the_loaded_teacher_judges_zppo_and_a_url_wins(stub_judge):
  config = paper_config("0.8B")
  teacher = FakeTeacher()
  judge = judges.make_judge(config, teacher, None, tokenizer=None)
  assert isinstance(judge, TeacherJudge) and judge.teacher is teacher
  url, prompts = stub_judge
  config.judge.url = url
  judge = judges.make_judge(config, teacher, None, tokenizer=None)
  assert isinstance(judge, OpenAICompatibleJudge) and judge.verdicts([ITEM]) == [True]
  assert "JUDGE-OK" in prompts[-1]


def test_free_form_golds_without_a_judge_stop_with_one_line():
  config = paper_config("0.8B")
  config.method, config.teacher.checkpoint = "grpo", ""
  assert judges.make_judge(config, None, None) is None
  records = [{"id": "a", "answer": "12"}, {"id": "b", "answer": "(B)", "choices": ["x", "y"]}]
  judges.require(None, records)                      # deterministic golds need no judge
  with pytest.raises(UserError, match=r"record 'c' .*--config.judge.url=") as err:
    judges.require(None, records + [{"id": "c", "answer": "a red circle"}])
  assert "\n" not in str(err.value)
