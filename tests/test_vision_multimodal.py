"""Whole-model parity of `Qwen3_5ForConditionalGeneration` with transformers, and its HF round trip."""
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors import safe_open

from zppo_jax.models import qwen3_5
from zppo_jax.models.qwen3_5 import config as config_lib
from zppo_jax.models.qwen3_5 import multimodal as mm
from zppo_jax.models.qwen3_5.vision_config import vision_tiny

IMG, VID, START, END, PAD = 120, 121, 122, 123, 0
TOKENS = dict(image_token_id=IMG, video_token_id=VID, vision_start_token_id=START,
              vision_end_token_id=END)
# Head dim 32 at 25% rotary gives 4 frequency pairs, so each of t, h and w gets at least one.
TEXT = config_lib.tiny(head_dim=32, mrope_section=(2, 1, 1))
VISION = vision_tiny(out_hidden_size=TEXT.hidden_size)
IMAGE_GRIDS = np.array([[1, 4, 6], [1, 6, 4], [1, 2, 2]])
VIDEO_GRIDS = np.array([[2, 4, 4]])


def hf_config(text_cfg=TEXT, vision_cfg=VISION) -> transformers.Qwen3_5Config:
  """The transformers config of our text and vision configs, with this file's token ids."""
  text = text_cfg.to_hf()
  for key in ("architectures", "model_type", "dtype"):
    text.pop(key)
  vision = {k: v for k, v in vision_cfg.to_hf().items() if k != "model_type"}
  return transformers.Qwen3_5Config(text_config=text, vision_config=vision,
                                    tie_word_embeddings=text_cfg.tie_word_embeddings, **TOKENS)


def _hf_model():
  torch.manual_seed(0)
  model = transformers.Qwen3_5ForConditionalGeneration(hf_config()).float().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "visual" in name:
        is_scale = ".norm" in name and name.endswith(".weight")
        scale = 0.5 if "pos_embed" in name else 0.1 if is_scale or name.endswith("bias") else 0.02
        p.copy_(torch.randn_like(p) * scale + (1.0 if is_scale else 0.0))
      elif name.endswith("norm.weight"):
        p.add_(0.1 * torch.randn_like(p))
  return model


def _text(rng, n):
  return list(rng.integers(1, 100, size=n))


def _inputs(seed, left_pad_both=False):
  """Row 0: two images of different sizes (right-padded); row 1: a small image and a 2-patch
  video with a timestamp between its patches (left-padded)."""
  rng = np.random.default_rng(seed)
  row0 = (_text(rng, 3) + [START] + [IMG] * 6 + [END] + _text(rng, 2) + [START] + [IMG] * 6
          + [END] + _text(rng, 3))
  row1 = (_text(rng, 2) + [START, IMG, END] + _text(rng, 2) + [START] + [VID] * 4 + [END]
          + _text(rng, 2) + [START] + [VID] * 4 + [END] + _text(rng, 3))
  length = max(len(row0), len(row1)) + 2
  ids = np.full((2, length), PAD, np.int64)
  mask = np.zeros((2, length), np.int64)
  if left_pad_both:
    ids[0, -len(row0):], mask[0, -len(row0):] = row0, 1
  else:
    ids[0, :len(row0)], mask[0, :len(row0)] = row0, 1
  ids[1, -len(row1):], mask[1, -len(row1):] = row1, 1
  patch = lambda grids: rng.uniform(-1, 1, (int(grids.prod(1).sum()), VISION.patch_dim))
  return dict(input_ids=ids, attention_mask=mask,
              pixel_values=patch(IMAGE_GRIDS).astype(np.float32), image_grid_thw=IMAGE_GRIDS,
              pixel_values_videos=patch(VIDEO_GRIDS).astype(np.float32),
              video_grid_thw=VIDEO_GRIDS)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  hf = _hf_model()
  path = tmp_path_factory.mktemp("hf_multimodal")
  hf.save_pretrained(path)
  assert qwen3_5.has_vision_weights(path)
  return hf, qwen3_5.load_pretrained_multimodal(path), path


def test_logits_match_transformers(models):
  hf, ours, _ = models
  for seed in (0, 1):
    inputs = _inputs(seed)
    types = np.isin(inputs["input_ids"], [IMG]) * 1 + np.isin(inputs["input_ids"], [VID]) * 2
    with torch.no_grad():
      ref = hf(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()},
               mm_token_type_ids=torch.from_numpy(types)).logits.numpy()
    logits = np.asarray(ours(**inputs))
    real = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(logits[real], ref[real], rtol=0, atol=1e-4)


def test_images_change_the_logits(models):
  _, ours, _ = models
  inputs = _inputs(0)
  base = np.asarray(ours(**inputs))
  inputs["pixel_values"] = inputs["pixel_values"] + 0.5
  assert np.abs(np.asarray(ours(**inputs)) - base).max() > 1e-3


def test_save_round_trip(models, tmp_path):
  hf, ours, _ = models
  qwen3_5.save_pretrained_multimodal(ours, tmp_path)
  reference = hf.state_dict()
  with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
    keys = set(f.keys())
    expected = set(reference) - ({"lm_head.weight"} if TEXT.tie_word_embeddings else set())
    assert keys == expected
    for key in keys:
      np.testing.assert_array_equal(f.get_tensor(key), reference[key].numpy(), err_msg=key)
  reloaded = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(tmp_path)
  assert reloaded.config.vision_config.depth == VISION.depth
  assert mm.MultimodalConfig.from_hf(tmp_path) == ours.cfg


def test_mismatched_placeholders_are_errors(models):
  _, ours, _ = models
  inputs = _inputs(0)
  inputs["image_grid_thw"] = np.array([[1, 4, 6], [1, 6, 4], [1, 2, 4]])
  inputs["pixel_values"] = np.zeros((int(inputs["image_grid_thw"].prod(1).sum()),
                                     VISION.patch_dim), np.float32)
  with pytest.raises(ValueError, match="13 placeholder tokens, 14 features"):
    ours(**inputs)
  inputs = _inputs(0)
  inputs["pixel_values"] = None
  with pytest.raises(ValueError, match="13 image placeholder tokens but no image pixel"):
    ours(**inputs)


def test_decoding_continues_from_the_multimodal_position(models):
  """Prefill the prompt into a cache, decode one token: equals the full forward's last logits."""
  from zppo_jax.models.qwen3_5.cache import init_cache
  _, ours, _ = models
  inputs = _inputs(0)
  ids, mask = inputs["input_ids"], inputs["attention_mask"]
  full = dict(inputs, input_ids=np.concatenate([ids, [[7], [9]]], axis=1),
              attention_mask=np.concatenate([mask, [[1], [1]]], axis=1))
  expected = np.asarray(ours(**full))[:, -1]
  embeds, positions, next_position = ours.prepare_inputs(**inputs)
  lm = ours.language_model
  cache = init_cache(lm.cfg, batch=2, max_len=ids.shape[1] + 1)
  prefill = nnx.jit(lambda m, e, p, a, c: m.forward(inputs_embeds=e, positions=p,
                                                   attention_mask=a, cache=c)[1])
  cache = prefill(lm, embeds, positions, mask, cache)
  np.testing.assert_array_equal(cache.next_position, next_position)
  decode = nnx.jit(lambda m, i, c: m.logits(m.forward(input_ids=i, cache=c)[0]))
  logits = decode(lm, np.array([[7], [9]], np.int32), cache)
  np.testing.assert_allclose(np.asarray(logits)[:, -1], expected, rtol=0, atol=1e-4)


def test_greedy_decoding_equals_transformers_generate(models):
  hf, ours, _ = models
  steps = 4
  inputs = _inputs(2, left_pad_both=True)
  types = np.isin(inputs["input_ids"], [IMG]) * 1 + np.isin(inputs["input_ids"], [VID]) * 2
  with torch.no_grad():
    ref = hf.generate(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()},
                      mm_token_type_ids=torch.from_numpy(types), max_new_tokens=steps,
                      do_sample=False, pad_token_id=PAD)[:, inputs["input_ids"].shape[1]:].numpy()
  from zppo_jax.models.qwen3_5.cache import init_cache
  lm = ours.language_model
  embeds, positions, _ = ours.prepare_inputs(**inputs)
  cache = init_cache(lm.cfg, batch=2, max_len=inputs["input_ids"].shape[1] + steps)
  step = nnx.jit(lambda m, e, p, a, c: _last_logits(m, m.forward(
      inputs_embeds=e, positions=p, attention_mask=a, cache=c)))
  logits, cache = step(lm, embeds, positions, inputs["attention_mask"], cache)
  tokens = []
  for _ in range(steps):
    token = np.asarray(logits).argmax(-1).astype(np.int32)[:, None]
    tokens.append(token)
    logits, cache = step(lm, lm.embed(token), None, None, cache)
  np.testing.assert_array_equal(np.concatenate(tokens, axis=1), ref)


def _last_logits(model, out):
  hidden, cache = out
  return model.logits(hidden[:, -1:])[:, 0], cache
