"""The model-backed `Generator`: chat-format prompts, sample with `zppo_jax.sampling.Sampler`, decode.

Prompts are rendered with the checkpoint's chat template (assistant turn opened), sampled in one
batched `Sampler.generate` call per batch with the evaluation decoding settings, and decoded with
the special tokens kept (``<think>`` must survive for the answer extractor) and the stop token
dropped.
"""
import os
import pathlib
from collections.abc import Sequence

import jax.numpy as jnp
import transformers

from zppo_jax.eval.items import EvalPrompt
from zppo_jax.eval.runner import DecodingConfig
from zppo_jax.models import qwen3_5
from zppo_jax.sampling import Sampler, SamplingParams

_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def resolve_checkpoint(path: os.PathLike) -> pathlib.Path:
  """The HF checkpoint directory of ``path``: itself, or the newest export inside a workdir.

  A workdir's exports are the sub-directories holding a ``config.json`` (e.g. ``hf/step_200``);
  the most recently written one is used.
  """
  path = pathlib.Path(path)
  if (path / "config.json").is_file():
    return path
  exports = sorted((p.parent for p in path.rglob("config.json") if p.parent != path),
                   key=lambda p: p.stat().st_mtime)
  if not exports:
    raise FileNotFoundError(f"{path} has no config.json and no exported HF checkpoint inside it")
  return exports[-1]


def stop_token_ids(tokenizer) -> tuple[int, ...]:
  """End of the assistant turn and end of text, as far as the tokenizer knows them."""
  ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
  vocab = tokenizer.get_vocab()
  ids += [vocab[t] for t in _STOP_TOKENS if t in vocab]
  return tuple(dict.fromkeys(ids))


class SamplerGenerator:
  """Generates evaluation responses with the project's sampler.

  Args:
    model: a text model (`qwen3_5.load_pretrained`).
    tokenizer: its HF tokenizer with a chat template.
    decoding: the evaluation decoding settings.
    mesh: optional device mesh for the sampler.
  """

  def __init__(self, model, tokenizer, decoding: DecodingConfig = DecodingConfig(), mesh=None):
    self.tokenizer = tokenizer
    self.decoding = decoding
    self.stop_ids = stop_token_ids(tokenizer)
    self.sampler = Sampler(model, max_total_len=decoding.max_prompt_tokens
                           + decoding.max_new_tokens, mesh=mesh)
    self.params = SamplingParams(
        temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k,
        presence_penalty=decoding.presence_penalty, max_new_tokens=decoding.max_new_tokens,
        stop_token_ids=self.stop_ids)
    self.calls = 0

  @classmethod
  def from_path(cls, path: os.PathLike, decoding: DecodingConfig = DecodingConfig(),
                dtype=jnp.float32) -> "SamplerGenerator":
    """Loads the checkpoint (and its tokenizer) at ``path`` or the newest one in a workdir."""
    directory = resolve_checkpoint(path)
    model = qwen3_5.load_pretrained(directory, dtype=dtype)
    return cls(model, transformers.AutoTokenizer.from_pretrained(str(directory)), decoding)

  def encode(self, prompt: EvalPrompt) -> list[int]:
    """Token ids of a prompt under the chat template, assistant turn opened."""
    if prompt.images or prompt.video is not None:
      raise ValueError(f"{prompt.uid}: image/video prompts need the multimodal model; "
                       "this generator is text-only")
    text = self.tokenizer.apply_chat_template(list(prompt.messages), tokenize=False,
                                              add_generation_prompt=True)
    ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > self.decoding.max_prompt_tokens:
      raise ValueError(f"{prompt.uid}: prompt of {len(ids)} tokens exceeds max_prompt_tokens "
                       f"{self.decoding.max_prompt_tokens}")
    return ids

  def generate(self, prompts: Sequence[EvalPrompt]) -> list[str]:
    """One response per prompt; batch ``i`` of this generator samples with ``seed + i``."""
    ids = [self.encode(p) for p in prompts]
    out = self.sampler.generate(ids, self.params, seed=self.decoding.seed + self.calls)
    self.calls += 1
    responses = []
    for (tokens,) in out.tokens:
      if tokens and tokens[-1] in self.stop_ids:
        tokens = tokens[:-1]
      responses.append(self.tokenizer.decode(tokens, skip_special_tokens=False))
    return responses
