"""Preprocessing parity with the transformers Qwen3.5 processors, and bad-input errors.

torchvision is not installed, so the image reference is the PIL backend of the Qwen2-VL image
processor (`Qwen2VLImageProcessorPil`, what `AutoImageProcessor` picks for qwen3_5 without
torchvision). The video processor needs torchvision to run; its grid, frame sampling, timestamp
and patch-layout functions are called directly.
"""
import io
import types

import numpy as np
import PIL.Image
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as video_smart_resize
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from zppo_jax.data import vision as DV

# Small budgets keep the test fast while exercising both the min and the max branches.
CFG = DV.VisionProcessorConfig(min_pixels=8 * 32 * 32, max_pixels=40 * 32 * 32)


def _reference_processor(cfg):
  return Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2,
                                  min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                                  image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _images(rng):
  """Odd sizes and aspect ratios, in every mode the loader converts."""
  rgb = lambda h, w: rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
  palette = PIL.Image.fromarray(rgb(45, 77)).convert("P", palette=PIL.Image.Palette.ADAPTIVE)
  return [
      PIL.Image.fromarray(rgb(37, 91)),                 # min-pixels branch, wide
      PIL.Image.fromarray(rgb(301, 47)),                # tall
      PIL.Image.fromarray(rgb(250, 251)),               # max-pixels branch
      PIL.Image.fromarray(rng.integers(0, 256, (64, 97, 4), dtype=np.uint8), "RGBA"),
      PIL.Image.fromarray(rng.integers(0, 256, (55, 33), dtype=np.uint8), "L"),
      palette,
      PIL.Image.fromarray(rgb(40, 60)).convert("CMYK"),
  ]


def test_images_equal_reference_processor():
  images = _images(np.random.default_rng(0))
  ref = _reference_processor(CFG)(images, return_tensors="np")
  ours = DV.preprocess_images(images, CFG)
  np.testing.assert_array_equal(ours["image_grid_thw"], ref["image_grid_thw"])
  assert ours["pixel_values"].dtype == np.float32
  np.testing.assert_allclose(ours["pixel_values"], ref["pixel_values"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("height,width", [(33, 33), (32, 6399), (999, 41), (512, 700), (61, 3000)])
def test_smart_resize_matches_reference(height, width):
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
  paper = DV.VisionProcessorConfig()
  assert DV.smart_resize(height, width, 32, paper.min_pixels, paper.max_pixels) == smart_resize(
      height, width, 32, paper.min_pixels, paper.max_pixels)
  for frames in (1, 4, 9):
    args = (height, width, 2, 32, paper.video_min_pixels, paper.video_max_pixels)
    if frames < 2:
      with pytest.raises(ValueError):
        DV.smart_resize_video(frames, *args)
      continue
    assert DV.smart_resize_video(frames, *args) == video_smart_resize(
        frames, height, width, temporal_factor=2, factor=32, min_pixels=paper.video_min_pixels,
        max_pixels=paper.video_max_pixels)


def test_video_sampling_timestamps_and_layout():
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 256, size=(27, 50, 70, 3), dtype=np.uint8)
  cfg = DV.VisionProcessorConfig(video_min_pixels=4 * 32 * 32, video_max_pixels=24 * 32 * 32)
  out = DV.preprocess_videos([frames], [10.0], cfg)

  fake = types.SimpleNamespace(fps=cfg.fps, min_frames=cfg.min_frames, max_frames=cfg.max_frames)
  metadata = types.SimpleNamespace(total_num_frames=27, fps=10.0)
  indices = Qwen3VLVideoProcessor.sample_frames(fake, metadata)
  np.testing.assert_array_equal(DV.sample_frame_indices(27, 10.0, cfg), indices)
  assert out["video_timestamps"][0] == Qwen3VLProcessor._calculate_timestamps(None, indices, 10.0, 2)

  # Patch layout: our resized + normalised frames through the reference patchify.
  h, w = video_smart_resize(len(indices), 50, 70, 2, 32, cfg.video_min_pixels,
                                cfg.video_max_pixels)
  resized = np.stack([np.asarray(PIL.Image.fromarray(frames[i]).resize((w, h), PIL.Image.BICUBIC))
                      for i in indices])
  normalised = ((resized.astype(np.float64) / 255).astype(np.float32) - 0.5) / 0.5
  videos = torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))[None]
  patches, t, gh, gw = Qwen3VLVideoProcessor.patchify(None, videos, 16, 2, 2)
  np.testing.assert_array_equal(out["video_grid_thw"], [[t, gh, gw]])
  np.testing.assert_allclose(out["pixel_values_videos"], patches[0].numpy(), rtol=0, atol=1e-6)
  assert len(indices) % 2 == 1  # the odd frame count exercised the last-frame padding


def test_placeholder_expansion():
  grids = np.array([[1, 4, 6], [1, 2, 2]])
  video = np.array([[2, 4, 2]])
  text = (f"<|im_start|>user\n{DV.VISION_START}{DV.IMAGE_PAD}{DV.VISION_END}a"
          f"{DV.VISION_START}{DV.IMAGE_PAD}{DV.VISION_END}"
          f"{DV.VISION_START}{DV.VIDEO_PAD}{DV.VISION_END}q<|im_end|>")
  out = DV.expand_vision_placeholders(text, grids, video, [[0.25, 1.0]])
  fake = types.SimpleNamespace(image_processor=types.SimpleNamespace(merge_size=2),
                               image_token=DV.IMAGE_PAD)
  first = Qwen3VLProcessor.replace_image_token(fake, {"image_grid_thw": torch.tensor(grids)}, 0)
  frame = DV.VISION_START + DV.VIDEO_PAD * 2 + DV.VISION_END
  assert out == (f"<|im_start|>user\n{DV.VISION_START}{first}{DV.VISION_END}a"
                 f"{DV.VISION_START}{DV.IMAGE_PAD}{DV.VISION_END}"
                 f"<0.2 seconds>{frame}<1.0 seconds>{frame}q<|im_end|>")
  with pytest.raises(DV.VisionInputError, match="sample s7: the text has 2 image"):
    DV.expand_vision_placeholders(text, grids[:1], video, [[0.25, 1.0]], sample="s7")


def test_process_sample_end_to_end():
  rng = np.random.default_rng(2)
  image = PIL.Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  out = DV.process_sample(f"{DV.VISION_START}{DV.IMAGE_PAD}{DV.VISION_END}hi",
                          images=[buffer.getvalue()], cfg=CFG)
  n_tokens = int(out["image_grid_thw"].prod() // 4)
  assert out["text"].count(DV.IMAGE_PAD) == n_tokens == out["pixel_values"].shape[0] // 4
  np.testing.assert_array_equal(out["pixel_values"],
                                DV.preprocess_images([image], CFG)["pixel_values"])


def test_sixteen_bit_images_are_scaled_not_clipped():
  values = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
  buffer = io.BytesIO()
  PIL.Image.fromarray(values).save(buffer, format="PNG")  # a 16-bit grayscale PNG
  image = DV.load_image(buffer.getvalue(), "s1")
  gray = np.asarray(image)[..., 0].astype(int)
  np.testing.assert_array_equal(gray, (values.astype(int) * 255 + 32767) // 65535)


def test_bad_inputs_name_the_sample():
  with pytest.raises(DV.VisionInputError, match="sample s1 image 0: cannot decode"):
    DV.preprocess_images([b"\x89PNG\r\n\x1a\nnot really a png"], CFG, sample="s1")
  with pytest.raises(DV.VisionInputError, match="sample s2 image 1: 20x64 is below the minimum"):
    DV.preprocess_images([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 20, 3), np.uint8)],
                         CFG, sample="s2")
  with pytest.raises(DV.VisionInputError, match="sample s3 image 0: absolute aspect ratio"):
    DV.preprocess_images([np.zeros((40, 8100, 3), np.uint8)], CFG, sample="s3")
  with pytest.raises(DV.VisionInputError, match="sample s4: floating-point"):
    DV.load_image(PIL.Image.fromarray(np.zeros((40, 40), np.float32), "F"), "s4")
  with pytest.raises(DV.VisionInputError, match="sample s5: image arrays must be uint8"):
    DV.load_image(np.zeros((40, 40, 3), np.float32), "s5")
  with pytest.raises(DV.VisionInputError, match="sample s6 video 0: t:1"):
    DV.preprocess_videos([np.zeros((1, 64, 64, 3), np.uint8)], [2.0], sample="s6")
  with pytest.raises(DV.VisionInputError, match="sample s8 image 0: cannot decode"):
    DV.preprocess_images(["/nonexistent/image.png"], CFG, sample="s8")


@settings(max_examples=12, deadline=None)
@given(st.integers(32, 300), st.integers(32, 300), st.integers(0, 2**31))
def test_random_image_sizes_equal_reference_processor(height, width, seed):
  image = PIL.Image.fromarray(
      np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
  ref = _reference_processor(CFG)([image], return_tensors="np")
  ours = DV.preprocess_images([image], CFG)
  np.testing.assert_array_equal(ours["image_grid_thw"], ref["image_grid_thw"])
  np.testing.assert_allclose(ours["pixel_values"], ref["pixel_values"], rtol=0, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 40))
def test_random_sizes_resize_like_reference(height, width, frames):
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
  paper = DV.VisionProcessorConfig()
  try:
    expected = smart_resize(height, width, 32, paper.min_pixels, paper.max_pixels)
  except ValueError:
    with pytest.raises(ValueError):
      DV.smart_resize(height, width, 32, paper.min_pixels, paper.max_pixels)
  else:
    assert DV.smart_resize(height, width, 32, paper.min_pixels, paper.max_pixels) == expected
  args = (frames, height, width, 2, 32, paper.video_min_pixels, paper.video_max_pixels)
  try:
    expected = video_smart_resize(*args)
  except ValueError:
    with pytest.raises(ValueError):
      DV.smart_resize_video(*args)
  else:
    assert DV.smart_resize_video(*args) == expected
