"""The model-backed `Generator`: chat-format, sample with `zppo_jax.sampling.Sampler`, decode.

Prompts are rendered with the checkpoint's chat template (assistant turn opened), sampled in one
batched `Sampler` call per batch with the evaluation decoding settings, and decoded with the
special tokens kept (``<think>`` must survive for the answer extractor) and the stop token dropped.
Special-token strings inside a benchmark's text are written as plain text first (`data.markup`),
as in training prompts, so a question cannot forge a chat turn or an image slot.

A checkpoint with vision weights is loaded as the multimodal model. A batch holding any image or
video prompt then goes through the embedding path: each prompt's media are preprocessed with the
evaluation pixel budget and frame rate, one ``<|vision_start|><|image_pad|><|vision_end|>`` (or
``<|video_pad|>``) placeholder per medium is put before the first user turn's text and expanded to
its token count, the vision features are placed by `prepare_inputs`, and the sampler decodes from
the embeddings and 3-axis positions.
"""
import os
import pathlib
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import transformers

from zppo_jax.data import markup
from zppo_jax.data import vision as vision_data
from zppo_jax.eval.items import EvalPrompt, Media
from zppo_jax.eval.runner import DecodingConfig
from zppo_jax.models import qwen3_5
from zppo_jax.models.qwen3_5 import multimodal
from zppo_jax.sampling import Sampler, SamplingParams

_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
_IMAGE_SLOT = vision_data.VISION_START + vision_data.IMAGE_PAD + vision_data.VISION_END
_VIDEO_SLOT = vision_data.VISION_START + vision_data.VIDEO_PAD + vision_data.VISION_END
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


def video_frames(video: Media, uid: str) -> tuple[list, float | None]:
  """The frames of a video and its frame rate (None: the frames are already sampled).

  A directory of image files is taken as pre-extracted frames, in name order; a video file is
  decoded with PyAV.
  """
  path = pathlib.Path(video.path) if video.path else None
  if path is not None and path.is_dir():
    frames = sorted(p for p in path.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES)
    if not frames:
      raise ValueError(f"{uid}: frame directory {path} holds no images")
    return [str(p) for p in frames], None
  try:
    import av  # Optional: only needed to decode video files.
  except ImportError:
    raise ValueError(f"{uid}: decoding video files needs PyAV (pip install av), or give a "
                     "directory of frames") from None
  import io
  source = str(path) if path is not None else io.BytesIO(video.data)
  try:
    with av.open(source) as container:
      stream = container.streams.video[0]
      fps = float(stream.average_rate) if stream.average_rate else None
      frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
  except (av.FFmpegError, IndexError, OSError) as e:
    raise ValueError(f"{uid}: cannot decode video {path or '<bytes>'}: {e}") from None
  if not frames:
    raise ValueError(f"{uid}: video {path or '<bytes>'} has no frames")
  return frames, fps


class SamplerGenerator:
  """Generates evaluation responses with the project's sampler.

  Args:
    model: the text model (`qwen3_5.load_pretrained`), or a multimodal model
      (`qwen3_5.load_pretrained` of a checkpoint with vision weights), whose language model is
      sampled.
    tokenizer: the HF tokenizer with a chat template (and the vision tokens for a multimodal model).
    decoding: the evaluation decoding settings (sampling, pixel budget, video frame rate and cap).
    mesh: optional device mesh for the sampler.
  """

  def __init__(self, model, tokenizer, decoding: DecodingConfig = DecodingConfig(), mesh=None):
    is_multimodal = isinstance(model, multimodal.Qwen3_5ForConditionalGeneration)
    self.multimodal = model if is_multimodal else None
    text_model = multimodal.text_decoder(model)
    self.tokenizer = tokenizer
    self.decoding = decoding
    self.stop_ids = stop_token_ids(tokenizer)
    self.sampler = Sampler(text_model, max_total_len=decoding.max_prompt_tokens
                           + decoding.max_new_tokens, mesh=mesh)
    self.params = SamplingParams(
        temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k,
        presence_penalty=decoding.presence_penalty, max_new_tokens=decoding.max_new_tokens,
        stop_token_ids=self.stop_ids)
    if self.multimodal is not None:
      vision = self.multimodal.cfg.vision
      self.processor = vision_data.VisionProcessorConfig(
          patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size,
          merge_size=vision.spatial_merge_size, min_pixels=decoding.min_pixels,
          max_pixels=decoding.max_pixels, fps=decoding.video_fps,
          max_frames=decoding.video_max_frames)
    self.calls = 0

  @classmethod
  def from_path(cls, path: os.PathLike, decoding: DecodingConfig = DecodingConfig(),
                dtype=jnp.float32) -> "SamplerGenerator":
    """Loads the checkpoint (and its tokenizer) at ``path`` or the newest one in a workdir."""
    directory = resolve_checkpoint(path)
    model = qwen3_5.load_pretrained(directory, dtype=dtype)  # multimodal with vision weights
    return cls(model, transformers.AutoTokenizer.from_pretrained(str(directory)), decoding)

  def _chat_text(self, prompt: EvalPrompt, slots: str = "") -> str:
    # A benchmark's text is data: a chat marker or image pad inside a question must not become
    # the real token (`data.markup`); the media slots are added after.
    messages = [dict(m, content=markup.neutralize_special_tokens(m["content"], self.tokenizer))
                for m in prompt.messages]
    if slots:
      first_user = next(m for m in messages if m["role"] == "user")
      first_user["content"] = slots + first_user["content"]
    return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                              add_generation_prompt=True)

  def _ids(self, text: str, uid: str) -> list[int]:
    ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > self.decoding.max_prompt_tokens:
      raise ValueError(f"{uid}: prompt of {len(ids)} tokens exceeds max_prompt_tokens "
                       f"{self.decoding.max_prompt_tokens}")
    return ids

  def encode(self, prompt: EvalPrompt) -> list[int]:
    """Token ids of a text prompt under the chat template, assistant turn opened."""
    if prompt.images or prompt.video is not None:
      raise ValueError(f"{prompt.uid}: image/video prompts need a checkpoint with vision "
                       "weights; this model is text-only")
    return self._ids(self._chat_text(prompt), prompt.uid)

  def encode_multimodal(self, prompt: EvalPrompt) -> tuple[list[int], dict]:
    """Token ids (placeholders expanded) and the preprocessed media of a prompt."""
    media = {}
    if prompt.images:
      media.update(vision_data.preprocess_images([m.data or m.path for m in prompt.images],
                                                 self.processor, sample=prompt.uid))
    if prompt.video is not None:
      frames, fps = video_frames(prompt.video, prompt.uid)
      media.update(vision_data.preprocess_videos([frames], [fps], self.processor,
                                                 sample=prompt.uid))
    slots = _IMAGE_SLOT * len(prompt.images) + (_VIDEO_SLOT if prompt.video is not None else "")
    text = vision_data.expand_vision_placeholders(
        self._chat_text(prompt, slots), media.get("image_grid_thw"), media.get("video_grid_thw"),
        media.get("video_timestamps"), merge_size=self.processor.merge_size, sample=prompt.uid)
    return self._ids(text, prompt.uid), media

  def embed(self, prompt: EvalPrompt) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings float[L, D] and mRoPE positions int[3, L] of a prompt with its media."""
    ids, media = self.encode_multimodal(prompt)
    embeds, positions, _ = self.multimodal.prepare_inputs(
        np.asarray([ids], np.int32), pixel_values=media.get("pixel_values"),
        image_grid_thw=media.get("image_grid_thw"),
        pixel_values_videos=media.get("pixel_values_videos"),
        video_grid_thw=media.get("video_grid_thw"))
    return np.asarray(embeds[0]), np.asarray(positions[:, 0])

  def generate(self, prompts: Sequence[EvalPrompt]) -> list[str]:
    """One response per prompt; batch ``i`` of this generator samples with ``seed + i``."""
    seed = self.decoding.seed + self.calls
    self.calls += 1
    has_media = any(p.images or p.video is not None for p in prompts)
    if has_media and self.multimodal is not None:
      embedded = [self.embed(p) for p in prompts]
      out = self.sampler.generate_from_embeddings([e for e, _ in embedded],
                                                  [pos for _, pos in embedded], self.params, seed)
    else:
      out = self.sampler.generate([self.encode(p) for p in prompts], self.params, seed=seed)
    responses = []
    for (tokens,) in out.tokens:
      if tokens and tokens[-1] in self.stop_ids:
        tokens = tokens[:-1]
      responses.append(self.tokenizer.decode(tokens, skip_special_tokens=False))
    return responses
