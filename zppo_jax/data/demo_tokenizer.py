"""A small byte-level BPE tokenizer for the demo, saved as a normal HF tokenizer directory.

It has the special tokens the ZPPO prompts need (ChatML turns, `<think>`, `</think>`, end of text), a
ChatML chat template, and digits split one per token so arithmetic stays learnable. Trained on the
demo's own prompts and templates, so a prompt with the RL closer is a few dozen tokens.
"""
from __future__ import annotations

import pathlib
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
import transformers

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

# ChatML, as the Qwen3.5 tokenizers write turns; the generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}")


def build_tokenizer(corpus: Iterable[str], out_dir: str | pathlib.Path,
                    vocab_size: int = 512) -> transformers.PreTrainedTokenizerFast:
  """Trains the tokenizer on `corpus` and saves it to `out_dir` (loadable with AutoTokenizer).

  Args:
    corpus: training texts.
    out_dir: the directory to write (tokenizer.json, tokenizer_config.json, chat template).
    vocab_size: total size including the byte alphabet and the special tokens.

  Returns:
    The tokenizer, as `AutoTokenizer.from_pretrained(out_dir)` would return it.
  """
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(list(corpus), trainer=trainer)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
      additional_special_tokens=["<|im_start|>", "<think>", "</think>"])
  fast.chat_template = CHAT_TEMPLATE
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  fast.save_pretrained(str(out_dir))
  return transformers.AutoTokenizer.from_pretrained(str(out_dir))


def stop_token_ids(tokenizer) -> tuple[int, ...]:
  """Generation stops at the end of the assistant turn or at end of text (as Qwen3.5 does)."""
  return tuple(tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
