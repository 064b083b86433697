"""Image and video preprocessing for Qwen3.5, numpy + PIL only (no torch at run time).

Matches transformers' Qwen3.5 processor (`Qwen2VLImageProcessor` for images, `Qwen3VLVideoProcessor`
for videos, `Qwen3VLProcessor` for the placeholder expansion):

1. decode and convert to RGB (transparency composited onto white, like the reference);
2. `smart_resize` to multiples of patch x merge (32 px) inside a pixel budget, bicubic;
3. rescale by 1/255 and normalise with mean = std = 0.5;
4. patchify into rows of C * temporal_patch * P * P values, in spatial-merge-block order, with
   the grid (t, h, w) in patches; an image is repeated to fill the temporal patch, a video's
   frames are padded to a multiple of it by repeating the last frame;
5. in the chat text, each `<|image_pad|>` becomes one pad per merged token, and each
   `<|vision_start|><|video_pad|><|vision_end|>` becomes, per temporal patch, a timestamp
   `<1.2 seconds>` followed by `<|vision_start|>`, the pads and `<|vision_end|>`.

Bad input (undecodable bytes, an unsupported mode, an image below `min_side`, an extreme aspect
ratio, a placeholder count that does not match the media) raises `VisionInputError` naming the sample.

Known difference: transformers resizes video frames with torchvision (antialiased bicubic on
tensors), we resize them with PIL bicubic like images; grids, frame sampling, timestamps and the
patch layout are identical, pixel values differ by the resampling kernels' rounding.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image

from zppo_jax.data import record_images

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"


class VisionInputError(ValueError):
  """An image, video or placeholder that cannot be processed; the message names the sample."""


class SmallImageError(VisionInputError):
  """An image with a side below the processor's minimum."""


@dataclasses.dataclass(frozen=True)
class VisionProcessorConfig:
  """Preprocessing settings (defaults: the paper's image budget, the processor's video budget).

  Attributes:
    patch_size: P, pixels per patch side.
    temporal_patch_size: frames per patch.
    merge_size: M, patches per merged token side.
    min_pixels / max_pixels: image pixel budget after resizing (paper: 256 and 1280 tokens).
    min_side: images with a side below this many pixels are rejected (the original Qwen2-VL
      limit of one merged token, 32); 1 accepts everything the transformers processor accepts.
    image_mean / image_std: per-channel normalisation.
    rescale_factor: multiplies the uint8 values before normalising.
    video_min_pixels / video_max_pixels: budget over all frames of a video (t * h * w).
    fps: frames sampled per second of video.
    min_frames / max_frames: bounds on the number of sampled frames.
  """
  patch_size: int = 16
  temporal_patch_size: int = 2
  merge_size: int = 2
  min_pixels: int = 256 * 32 * 32
  max_pixels: int = 1280 * 32 * 32
  min_side: int = 32
  image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
  rescale_factor: float = 1 / 255
  video_min_pixels: int = 128 * 32 * 32
  video_max_pixels: int = 768 * 32 * 32
  fps: float = 2.0
  min_frames: int = 4
  max_frames: int = 768

  @property
  def factor(self) -> int:
    return self.patch_size * self.merge_size


def smart_resize(height: int, width: int, factor: int, min_pixels: int,
                 max_pixels: int) -> tuple[int, int]:
  """Target (height, width): multiples of `factor`, area within the budget, aspect kept."""
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"absolute aspect ratio must be smaller than 200, got "
                     f"{max(height, width) / min(height, width)}")
  h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def smart_resize_video(num_frames: int, height: int, width: int, temporal_factor: int,
                       factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
  """`smart_resize` with the budget counted over all (rounded) frames of a video."""
  if num_frames < temporal_factor:
    raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
  if height < factor or width < factor:
    scale = max(factor / height, factor / width)
    height, width = int(height * scale), int(width * scale)
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"absolute aspect ratio must be smaller than 200, got "
                     f"{max(height, width) / min(height, width)}")
  h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
  t_bar = round(num_frames / temporal_factor) * temporal_factor
  if t_bar * h_bar * w_bar > max_pixels:
    beta = math.sqrt(num_frames * height * width / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif t_bar * h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (num_frames * height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def _to_rgb(image: PIL.Image.Image, sample: Any) -> PIL.Image.Image:
  """Converts any supported PIL mode to RGB; transparency is composited onto white."""
  mode = image.mode
  if mode.startswith("I;16") or mode == "I":
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
      raise VisionInputError(f"sample {sample}: {mode} image values outside 0..65535")
    if mode.startswith("I;16") or (values.size and values.max() > 255):
      values = (values * 255 + 32767) // 65535   # 16-bit to 8-bit, rounded
    return PIL.Image.fromarray(values.astype(np.uint8), "L").convert("RGB")
  if mode == "F":
    raise VisionInputError(f"sample {sample}: floating-point (mode F) images are not supported; "
                           "convert to 8 bits per channel first")
  try:
    if "A" in image.getbands() or image.info.get("transparency") is not None:
      rgba = image.convert("RGBA")
      white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
      return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
  except (ValueError, OSError) as e:
    raise VisionInputError(f"sample {sample}: cannot convert a {mode} image to RGB: {e}") from e


def load_image(source, sample: Any = "?") -> PIL.Image.Image:
  """Decodes an image fully and converts it to RGB.

  Args:
    source: a PIL image, encoded bytes, a file path, an image in the shards (a
      `record_images.uri`), or a uint8 array [H, W] / [H, W, 1|3|4].
    sample: identifies the sample in error messages.

  Raises:
    VisionInputError: for corrupt bytes, a missing file, an unsupported array or mode.
  """
  try:
    if isinstance(source, PIL.Image.Image):
      image = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
      image = PIL.Image.open(io.BytesIO(bytes(source)))
    elif record_images.is_uri(source):   # an image stored in the training shards
      image = PIL.Image.open(io.BytesIO(record_images.read(source)))
    elif isinstance(source, (str, os.PathLike)):
      image = PIL.Image.open(source)
    elif isinstance(source, np.ndarray):
      if source.dtype != np.uint8 or not (source.ndim == 2 or (source.ndim == 3
                                                               and source.shape[2] in (1, 3, 4))):
        raise VisionInputError(f"sample {sample}: image arrays must be uint8 [H, W] or "
                               f"[H, W, 1|3|4], got {source.dtype} {source.shape}")
      image = PIL.Image.fromarray(source[..., 0] if source.ndim == 3 and source.shape[2] == 1
                                  else source)
    else:
      raise VisionInputError(f"sample {sample}: unsupported image type {type(source).__name__}")
    image.load()
  except VisionInputError:
    raise
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise VisionInputError(f"sample {sample}: cannot decode image: {e}") from e
  return _to_rgb(image, sample)


def _normalise(rgb: np.ndarray, cfg: VisionProcessorConfig) -> np.ndarray:
  """uint8[..., H, W, C] -> float32[..., C, H, W], rescaled and normalised like the reference.

  All in float32 (as the reference processor computes): within 1 ulp of a float64 computation.
  """
  x = rgb.astype(np.float32) * np.float32(cfg.rescale_factor)
  x = (x - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
  return np.moveaxis(x, -1, -3)


def _patchify(frames: np.ndarray, cfg: VisionProcessorConfig) -> tuple[np.ndarray, tuple]:
  """float32[F, C, H, W] (F a multiple of the temporal patch) -> [t*h*w, C*Tp*P*P], (t, h, w)."""
  f, c, height, width = frames.shape
  p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
  t, h, w = f // tp, height // p, width // p
  x = frames.reshape(t, tp, c, h // m, m, p, w // m, m, p)
  # -> (t, block_row, block_col, in_row, in_col, C, Tp, P, P)
  x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
  return np.ascontiguousarray(x).reshape(t * h * w, c * tp * p * p), (t, h, w)


def preprocess_images(images: Sequence, cfg: VisionProcessorConfig = VisionProcessorConfig(),
                      sample: Any = "?") -> dict[str, np.ndarray]:
  """Images -> `pixel_values` float32[N, C*Tp*P*P] and `image_grid_thw` int64[I, 3].

  Args:
    images: anything `load_image` takes.
    cfg: the preprocessing settings.
    sample: identifies the sample in error messages.
  """
  patches, grids = [], []
  for i, source in enumerate(images):
    name = f"{sample} image {i}"
    image = load_image(source, name)
    if min(image.size) < cfg.min_side:
      raise SmallImageError(f"sample {name}: {image.width}x{image.height} is below the minimum "
                             f"side of {cfg.min_side} pixels")
    try:
      height, width = smart_resize(image.height, image.width, cfg.factor, cfg.min_pixels,
                                   cfg.max_pixels)
    except ValueError as e:
      raise VisionInputError(f"sample {name}: {e}") from e
    resized = np.asarray(image.resize((width, height), PIL.Image.Resampling.BICUBIC))
    frame = _normalise(resized, cfg)[None]
    rows, grid = _patchify(np.repeat(frame, cfg.temporal_patch_size, axis=0), cfg)
    patches.append(rows)
    grids.append(grid)
  dim = 3 * cfg.temporal_patch_size * cfg.patch_size ** 2
  return {
      "pixel_values": np.concatenate(patches) if patches else np.zeros((0, dim), np.float32),
      "image_grid_thw": np.asarray(grids, np.int64).reshape(-1, 3),
  }


def sample_frame_indices(total_frames: int, video_fps: float | None,
                         cfg: VisionProcessorConfig = VisionProcessorConfig()) -> np.ndarray:
  """Indices of the frames kept: `cfg.fps` per second, within [min_frames, max_frames].

  With `video_fps=None` the frames are taken as already sampled (all kept, bounded the same way).
  """
  if video_fps is not None:
    num = int(total_frames / video_fps * cfg.fps)
    num = min(max(num, cfg.min_frames), cfg.max_frames, total_frames)
  else:
    num = min(max(total_frames, cfg.min_frames), cfg.max_frames)
  return np.linspace(0, total_frames - 1, num).round().astype(int)


def frame_timestamps(indices: Sequence[int], video_fps: float, temporal_patch_size: int) -> list:
  """Seconds at the middle of each temporal patch (frames padded by repeating the last)."""
  indices = list(indices)
  indices += [indices[-1]] * (-len(indices) % temporal_patch_size)
  seconds = [i / video_fps for i in indices]
  return [(seconds[i] + seconds[i + temporal_patch_size - 1]) / 2
          for i in range(0, len(seconds), temporal_patch_size)]


def preprocess_videos(videos: Sequence, video_fps: Sequence[float | None] | None = None,
                      cfg: VisionProcessorConfig = VisionProcessorConfig(),
                      sample: Any = "?") -> dict[str, Any]:
  """Videos (frame stacks) -> `pixel_values_videos`, `video_grid_thw` and per-patch timestamps.

  Args:
    videos: each a uint8 array [F, H, W, 3] or a sequence of images `load_image` takes.
    video_fps: frames per second of each source video; None for a video means its frames are
      already sampled (timestamps then assume 24 fps, as the reference does).
    cfg: the preprocessing settings.
    sample: identifies the sample in error messages.

  Returns:
    dict with `pixel_values_videos` float32[N, C*Tp*P*P], `video_grid_thw` int64[V, 3] and
    `video_timestamps`, a list per video of the seconds of each temporal patch.
  """
  video_fps = [None] * len(videos) if video_fps is None else list(video_fps)
  if len(video_fps) != len(videos):
    raise VisionInputError(f"sample {sample}: {len(videos)} videos but {len(video_fps)} fps values")
  patches, grids, stamps = [], [], []
  for v, (video, fps) in enumerate(zip(videos, video_fps)):
    name = f"{sample} video {v}"
    if len(video) == 0:
      raise VisionInputError(f"sample {name}: the video has no frames")
    indices = sample_frame_indices(len(video), fps, cfg)
    frames = [load_image(video[int(i)], f"{name} frame {int(i)}") for i in indices]
    if len({f.size for f in frames}) != 1:
      raise VisionInputError(f"sample {name}: frames differ in size")
    width, height = frames[0].size
    try:
      new_h, new_w = smart_resize_video(len(frames), height, width, cfg.temporal_patch_size,
                                        cfg.factor, cfg.video_min_pixels, cfg.video_max_pixels)
    except ValueError as e:
      raise VisionInputError(f"sample {name}: {e}") from e
    stack = _normalise(np.stack([np.asarray(f.resize((new_w, new_h), PIL.Image.Resampling.BICUBIC))
                                 for f in frames]), cfg)
    pad = -len(stack) % cfg.temporal_patch_size
    stack = np.concatenate([stack, np.repeat(stack[-1:], pad, axis=0)])
    rows, grid = _patchify(stack, cfg)
    patches.append(rows)
    grids.append(grid)
    stamps.append(frame_timestamps(indices, 24.0 if fps is None else fps, cfg.temporal_patch_size))
  dim = 3 * cfg.temporal_patch_size * cfg.patch_size ** 2
  return {
      "pixel_values_videos": np.concatenate(patches) if patches else np.zeros((0, dim), np.float32),
      "video_grid_thw": np.asarray(grids, np.int64).reshape(-1, 3),
      "video_timestamps": stamps,
  }


_PLACEHOLDER = re.compile("|".join(map(re.escape, (VISION_START + VIDEO_PAD + VISION_END,
                                                    VIDEO_PAD, IMAGE_PAD))))


def expand_vision_placeholders(text: str, image_grid_thw=None, video_grid_thw=None,
                               video_timestamps=None, merge_size: int = 2,
                               sample: Any = "?") -> str:
  """Expands each image/video placeholder of a chat-formatted prompt to its token count.

  Args:
    text: the prompt with one `<|image_pad|>` per image and one
      `<|vision_start|><|video_pad|><|vision_end|>` (or bare `<|video_pad|>`) per video.
    image_grid_thw: int[I, 3] grids of the images in order of appearance.
    video_grid_thw: int[V, 3] grids of the videos in order of appearance.
    video_timestamps: per video, the seconds of each temporal patch (`preprocess_videos`).
    merge_size: M; an image of grid (t, h, w) takes t * h * w / M^2 tokens.
    sample: identifies the sample in error messages.

  Raises:
    VisionInputError: if the number of placeholders differs from the number of images/videos.
  """
  images = np.asarray(image_grid_thw if image_grid_thw is not None else [], np.int64).reshape(-1, 3)
  videos = np.asarray(video_grid_thw if video_grid_thw is not None else [], np.int64).reshape(-1, 3)
  stamps = list(video_timestamps) if video_timestamps is not None else [None] * len(videos)
  n_image = text.count(IMAGE_PAD)
  n_video = text.count(VIDEO_PAD)
  if n_image != len(images) or n_video != len(videos):
    raise VisionInputError(f"sample {sample}: the text has {n_image} image and {n_video} video "
                           f"placeholders but {len(images)} images and {len(videos)} videos were "
                           "given")
  counters = {"image": 0, "video": 0}

  def expand(match: re.Match) -> str:
    if match.group() == IMAGE_PAD:
      grid = images[counters["image"]]
      counters["image"] += 1
      return IMAGE_PAD * int(grid.prod() // merge_size ** 2)
    v = counters["video"]
    counters["video"] += 1
    t, h, w = videos[v].tolist()
    if stamps[v] is None or len(stamps[v]) != t:
      raise VisionInputError(f"sample {sample}: video {v} needs {t} timestamps, got "
                             f"{None if stamps[v] is None else len(stamps[v])}")
    frame = VISION_START + VIDEO_PAD * (h * w // merge_size ** 2) + VISION_END
    return "".join(f"<{seconds:.1f} seconds>" + frame for seconds in stamps[v])

  return _PLACEHOLDER.sub(expand, text)


def process_sample(text: str, images: Sequence = (), videos: Sequence = (),
                   video_fps: Sequence[float | None] | None = None,
                   cfg: VisionProcessorConfig = VisionProcessorConfig(),
                   sample: Any = "?") -> dict[str, Any]:
  """One prompt with its media -> expanded text and the model's vision inputs."""
  out: dict[str, Any] = {}
  if images:
    out.update(preprocess_images(images, cfg, sample))
  if videos:
    out.update(preprocess_videos(videos, video_fps, cfg, sample))
  out["text"] = expand_vision_placeholders(
      text, out.get("image_grid_thw"), out.get("video_grid_thw"), out.get("video_timestamps"),
      cfg.merge_size, sample)
  return out
