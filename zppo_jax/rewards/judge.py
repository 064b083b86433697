"""LLM judges for free-form gold answers (shared/ZPPO_SPEC.md §5).

A judge reads (question, gold answer, response) and must answer with exactly the JSON object
``{"verdict": "correct"}`` or ``{"verdict": "wrong"}`` (temperature 0, at most 512 new tokens).
Anything else — prose around the JSON, other keys, other values, a failed request — is *wrong*.
A ``<think> ... </think>`` block before the JSON (a thinking model) is removed first, and so is
surrounding whitespace; nothing else is forgiven.

The in-process teacher judge lives with the trainer; `OpenAICompatibleJudge` here talks to a
teacher served elsewhere through the OpenAI chat-completions HTTP API.
"""
import concurrent.futures
import dataclasses
import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Protocol

from zppo_jax.rewards.extract import strip_think, THINK_CLOSE

_log = logging.getLogger(__name__)

JUDGE_PROMPT = (
    "You are grading a response to a question against the reference answer.\n"
    "<question>\n{question}\n</question>\n"
    "<reference_answer>\n{gold}\n</reference_answer>\n"
    "<response>\n{response}\n</response>\n"
    "Decide whether the final answer of the response means the same as the reference answer. "
    "Reply with only a JSON object, exactly {{\"verdict\": \"correct\"}} or "
    "{{\"verdict\": \"wrong\"}}, and nothing else.")
JUDGE_MAX_TOKENS = 512
JUDGE_TEMPERATURE = 0.0


@dataclasses.dataclass(frozen=True)
class JudgeItem:
  """One judgement to make.

  Attributes:
    question: the question text (without candidates or format instructions).
    gold: the reference answer.
    response: the student's response with its reasoning block removed (or its final answer).
  """
  question: str
  gold: str
  response: str


class Judge(Protocol):
  """Anything that turns items into verdicts (True = correct), one per item, in order."""

  def verdicts(self, items: Sequence[JudgeItem]) -> list[bool]:
    ...


def judge_prompt(item: JudgeItem) -> str:
  """The user message sent to the judge for one item."""
  return JUDGE_PROMPT.format(question=item.question, gold=item.gold, response=item.response)


def parse_verdict(text: str | None) -> bool:
  """Reads a judge's output under the strict-JSON contract; malformed output is wrong (False).

  Args:
    text: the judge's raw output.

  Returns:
    True only for a JSON object whose only key is ``"verdict"`` with value ``"correct"``.
  """
  if not isinstance(text, str):
    return False
  if THINK_CLOSE in text.lower():  # The tag in any case, as `strip_think` reads it.
    text = strip_think(text)
  try:
    obj = json.loads(text.strip())
  except (ValueError, RecursionError):
    return False
  return isinstance(obj, dict) and obj.keys() == {"verdict"} and obj["verdict"] == "correct"


@dataclasses.dataclass
class JudgeStats:
  """Counters of an HTTP judge: requests sent, failed (network/HTTP/format), malformed verdicts."""
  requests: int = 0
  failures: int = 0
  malformed: int = 0


class OpenAICompatibleJudge:
  """A judge served behind an OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint.

  Args:
    base_url: e.g. ``http://127.0.0.1:8000/v1``.
    model: the model name the server expects.
    api_key: sent as a bearer token when given.
    timeout_s: per-request timeout.
    max_retries: extra attempts after a network or HTTP failure (not after a malformed verdict).
    concurrency: requests in flight at once.
    max_tokens, temperature: decoding of the judge (the paper: 512, 0).
  """

  def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
               timeout_s: float = 120.0, max_retries: int = 2, concurrency: int = 8,
               max_tokens: int = JUDGE_MAX_TOKENS, temperature: float = JUDGE_TEMPERATURE):
    self.url = base_url.rstrip("/") + "/chat/completions"
    self.model = model
    self.api_key = api_key
    self.timeout_s = timeout_s
    self.max_retries = max_retries
    self.concurrency = concurrency
    self.max_tokens = max_tokens
    self.temperature = temperature
    self.stats = JudgeStats()
    self._lock = threading.Lock()
    # A judge on this machine is reached directly, never through an HTTP(S)_PROXY of the env.
    host = urllib.parse.urlsplit(self.url).hostname or ""
    local = host == "localhost" or host == "::1" or host.startswith("127.")
    handlers = [urllib.request.ProxyHandler({})] if local else []
    self._opener = urllib.request.build_opener(*handlers)

  def _complete(self, prompt: str) -> str | None:
    """One chat completion; None after every attempt failed."""
    body = json.dumps({
        "model": self.model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": self.temperature,
        "max_tokens": self.max_tokens,
    }).encode()
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    for attempt in range(self.max_retries + 1):
      with self._lock:
        self.stats.requests += 1
      try:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with self._opener.open(request, timeout=self.timeout_s) as reply:
          payload = json.loads(reply.read())
        return payload["choices"][0]["message"]["content"]
      except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        _log.warning("judge request failed (attempt %d): %s", attempt + 1, e)
    with self._lock:
      self.stats.failures += 1
    return None

  def _verdict(self, item: JudgeItem) -> bool:
    text = self._complete(judge_prompt(item))
    if text is None:
      return False
    verdict = parse_verdict(text)
    if not verdict and not _says_wrong(text):
      with self._lock:
        self.stats.malformed += 1
    return verdict

  def verdicts(self, items: Sequence[JudgeItem]) -> list[bool]:
    """Judges every item (in parallel up to ``concurrency``); a failed request is wrong."""
    if not items:
      return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency) as pool:
      return list(pool.map(self._verdict, items))


def _says_wrong(text: str) -> bool:
  """Whether a judge output is a well-formed "wrong" verdict (for counting malformed ones)."""
  if THINK_CLOSE in text.lower():  # The tag in any case, as `strip_think` reads it.
    text = strip_think(text)
  try:
    obj = json.loads(text.strip())
  except (ValueError, RecursionError):
    return False
  return isinstance(obj, dict) and obj.keys() == {"verdict"} and obj["verdict"] == "wrong"
