"""Judges: the strict-JSON verdict contract, the OpenAI-compatible HTTP judge against a local stub
server on 127.0.0.1, and `grade_batch`'s judge fallback for free-form golds."""
import http.server
import json
import threading

import pytest

from zppo_jax.rewards import (GradingPool, JudgeItem, OpenAICompatibleJudge, RewardItem,
                              grade_batch, judge_prompt, needs_judge, parse_verdict)


@pytest.mark.parametrize("text, verdict", [
    ('{"verdict": "correct"}', True),
    ('  {"verdict":"correct"}\n', True),
    ('<think>the answers match</think>\n{"verdict": "correct"}', True),
    ('{"verdict": "wrong"}', False),
    ('{"verdict": "Correct"}', False),  # Values are exact.
    ('{"verdict": "correct", "why": "same"}', False),  # No other keys.
    ('The verdict: {"verdict": "correct"}', False),  # No prose around the JSON.
    ('```json\n{"verdict": "correct"}\n```', False),  # No code fences.
    ('{"verdict": true}', False),
    ('["correct"]', False),
    ('"correct"', False),
    ('{"verdict": "correct"', False),
    ('', False),
    (None, False),
    ('<think>{"verdict": "correct"}', False),  # An unclosed think block is all reasoning.
])
def test_parse_verdict(text, verdict):
  assert parse_verdict(text) is verdict


def test_judge_prompt_contains_the_item_and_the_contract():
  prompt = judge_prompt(JudgeItem("What is red?", "a rose {x}", "\\boxed{rose}"))
  assert "What is red?" in prompt and "a rose {x}" in prompt and "\\boxed{rose}" in prompt
  assert '{"verdict": "correct"}' in prompt and '{"verdict": "wrong"}' in prompt


class _StubHandler(http.server.BaseHTTPRequestHandler):
  """Answers chat completions: the verdict depends on the prompt's content."""
  requests: list = []

  def do_POST(self):  # noqa: N802 - the http.server API.
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    type(self).requests.append((self.path, self.headers.get("Authorization"), body))
    prompt = body["messages"][0]["content"]
    if "FAIL500" in prompt:
      self.send_response(500)
      self.end_headers()
      return
    if "MALFORMED" in prompt:
      content = "I think it is correct."
    elif "RIGHT" in prompt:
      content = '<think>ok</think>{"verdict": "correct"}'
    else:
      content = '{"verdict": "wrong"}'
    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.end_headers()
    self.wfile.write(payload.encode())

  def log_message(self, *args):
    pass


@pytest.fixture(scope="module")
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
  httpd.shutdown()
  httpd.server_close()


def test_http_judge(server):
  _StubHandler.requests.clear()
  judge = OpenAICompatibleJudge(server + "/", "teacher", api_key="k", max_retries=1,
                                timeout_s=10, concurrency=3)
  items = [JudgeItem("q", "g", "RIGHT"), JudgeItem("q", "g", "nope"),
           JudgeItem("q", "g", "MALFORMED"), JudgeItem("q", "g", "FAIL500"),
           JudgeItem("q", "g", "RIGHT again")]
  assert judge.verdicts(items) == [True, False, False, False, True]
  assert judge.verdicts([]) == []
  # FAIL500 is tried twice (one retry); the others once.
  assert judge.stats.requests == 6 and judge.stats.failures == 1 and judge.stats.malformed == 1
  path, auth, body = _StubHandler.requests[0]
  assert path == "/v1/chat/completions" and auth == "Bearer k"
  assert body["model"] == "teacher" and body["temperature"] == 0.0 and body["max_tokens"] == 512


def test_http_judge_unreachable_is_wrong():
  judge = OpenAICompatibleJudge("http://127.0.0.1:9/v1", "m", max_retries=0, timeout_s=2)
  assert judge.verdicts([JudgeItem("q", "g", "RIGHT")]) == [False]
  assert judge.stats.failures == 1


def test_needs_judge():
  assert needs_judge("a red rose")
  assert not needs_judge("\\frac{1}{2}")
  assert not needs_judge("B")
  assert not needs_judge("Paris", choices=["Paris", "Rome"])


class _ListJudge:
  def __init__(self):
    self.seen = []

  def verdicts(self, items):
    self.seen.extend(items)
    return ["RIGHT" in item.response for item in items]


def test_grade_batch_asks_the_judge_only_about_free_form_failures():
  items = [
      RewardItem("\\boxed{0.5}", "\\frac12", "q1"),  # Math, right: no judge.
      RewardItem("\\boxed{3} RIGHT", "4", "q2"),  # Math, wrong: no judge (deterministic).
      RewardItem("<think>hm</think>\\boxed{a rose} RIGHT", "a red rose", "q3"),  # Judge: right.
      RewardItem("\\boxed{a tulip}", "a red rose", "q4"),  # Judge: wrong.
      RewardItem("\\boxed{a red rose}", "a red rose", "q5"),  # String match: no judge.
      RewardItem("no box RIGHT", "a red rose", "q6"),  # No final answer: no judge.
  ]
  judge = _ListJudge()
  with GradingPool(num_workers=1) as pool:
    assert grade_batch(items, pool, judge) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert [i.question for i in judge.seen] == ["q3", "q4"]
    assert judge.seen[0].response == "\\boxed{a rose} RIGHT"  # Reasoning removed.
    assert grade_batch(items, pool) == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


class _CharTokenizer:
  """A stand-in tokenizer: one id per character, a fixed chat wrapper around the user turn."""

  def apply_chat_template(self, messages, tokenize, add_generation_prompt):
    assert not tokenize and add_generation_prompt
    return f"<user>{messages[0]['content']}</user><assistant>"

  def __call__(self, text, add_special_tokens):
    return {"input_ids": [ord(c) for c in text]}

  def decode(self, ids, skip_special_tokens):
    return "".join(chr(i) for i in ids)


def test_teacher_judge_decodes_greedily_with_512_tokens_and_strict_json():
  """The in-process judge (spec §5): the teacher at temperature 0, one sample, at most 512 new
  tokens, whatever the teacher's rollout sampling is; malformed output is wrong."""
  import dataclasses
  import types

  from zppo_jax.sampling import SamplingParams
  from zppo_jax.train.teacher import TeacherJudge

  stop = 3
  replies = {"RIGHT": '{"verdict": "correct"}', "WRONG": '{"verdict": "wrong"}',
             "MALFORMED": "It is correct."}

  class Sampler:
    calls = []

    def generate(self, prompts, params, seed):
      type(self).calls.append(params)
      texts = ["".join(chr(i) for i in p) for p in prompts]
      reply = [next(v for k, v in replies.items() if f"<response>\n{k}\n" in t) for t in texts]
      return types.SimpleNamespace(tokens=[[[ord(c) for c in r] + [stop]] for r in reply])

  rollout_sampling = SamplingParams(temperature=1.0, top_p=1.0, num_samples=4,
                                    max_new_tokens=12_288, stop_token_ids=(stop,))
  teacher = types.SimpleNamespace(sampler=Sampler(), sampling=rollout_sampling)
  judge = TeacherJudge(teacher, _CharTokenizer())
  items = [JudgeItem("q", "g", "RIGHT"), JudgeItem("q", "g", "WRONG"),
           JudgeItem("q", "g", "MALFORMED")]
  assert judge.verdicts(items) == [True, False, False]
  assert judge.verdicts([]) == []
  (params,) = Sampler.calls
  assert params.temperature == 0.0 and params.num_samples == 1 and params.max_new_tokens == 512
  assert dataclasses.replace(params, temperature=1.0, num_samples=4, max_new_tokens=12_288) == \
      rollout_sampling  # Nothing else of the rollout sampling changes.
