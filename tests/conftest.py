"""Shared test set-up: fp32 on CPU, a persistent XLA compilation cache, and the tiny-model fixtures.

Compilation dominates small-model tests on a 2-core CPU, so compiled executables are cached on disk
(``.jax_cache`` at the repository root) and reused across test files, xdist workers and CI runs.
"""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_ROOT = pathlib.Path(__file__).resolve().parents[1]
jax.config.update("jax_compilation_cache_dir", str(_ROOT / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_default_matmul_precision", "highest")


# --- A stub OpenAI-compatible judge on 127.0.0.1, shared by the judge, eval and training tests. ---

import contextlib  # noqa: E402
import http.server  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402

import pytest  # noqa: E402


@contextlib.contextmanager
def serve_judge(reply):
  """Serves `POST .../chat/completions`: the assistant's content is `reply(user prompt)`.

  Yields:
    (base URL ending in /v1, the list of user prompts received).
  """
  prompts = []

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the http.server API.
      body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
      prompt = body["messages"][0]["content"]
      prompts.append(prompt)
      payload = json.dumps({"choices": [{"message": {"role": "assistant",
                                                     "content": reply(prompt)}}]})
      self.send_response(200)
      self.send_header("Content-Type", "application/json")
      self.end_headers()
      self.wfile.write(payload.encode())

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", prompts
  finally:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stub_judge():
  """A judge that says correct exactly when the question contains `JUDGE-OK`:
  (base URL, prompts received)."""
  verdict = lambda prompt: ('{"verdict": "correct"}' if "JUDGE-OK" in prompt  # noqa: E731
                            else '{"verdict": "wrong"}')
  with serve_judge(verdict) as served:
    yield served


def without_timings(rows):
  """Metrics rows without their wall-clock fields (`time_*`): what a resumed or re-run run must
  reproduce exactly."""
  return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]
