"""Parity of the Flax vision encoder with transformers' `Qwen3_5VisionModel` (fp32, copied weights)."""
import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from flax import nnx
from transformers import Qwen3_5Config, Qwen3_5VisionConfig
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel
from transformers.vision_utils import (get_vision_cu_seqlens,
                                       get_vision_interpolation_indices_and_weights,
                                       get_vision_position_ids)

from zppo_jax.models.qwen3_5 import vision as V
from zppo_jax.models.qwen3_5 import vision_checkpoint as VC
from zppo_jax.models.qwen3_5.vision_config import VISION_PRESETS, VisionConfig, vision_tiny

# Two images of different sizes and a 2-temporal-patch video, packed in one sequence.
GRIDS = np.array([[1, 4, 6], [1, 6, 4], [2, 4, 4]])
PUBLISHED_VISION_PARAMS = {"0.8b": 100_592_896, "2b": 331_416_576, "4b": 333_514_240,
                           "9b": 456_010_480, "27b": 460_730_096}


def _hf_config(cfg: VisionConfig) -> Qwen3_5VisionConfig:
  return Qwen3_5VisionConfig(**{k: v for k, v in cfg.to_hf().items() if k != "model_type"})


@pytest.fixture(scope="module")
def pair():
  cfg = vision_tiny()
  torch.manual_seed(0)
  hf = Qwen3_5VisionModel(_hf_config(cfg)).float().eval()
  with torch.no_grad():
    # Random everything (LayerNorms and biases included) so that a swapped or untransposed
    # weight shows; weights at the checkpoint's scale, the position table larger so it matters.
    for name, p in hf.named_parameters():
      is_norm_scale = ".norm" in name and name.endswith(".weight")
      scale = 0.5 if "pos_embed" in name else 0.1 if is_norm_scale or name.endswith("bias") else 0.02
      p.copy_(torch.randn_like(p) * scale + (1.0 if is_norm_scale else 0.0))
  ours = V.VisionModel(cfg, rngs=nnx.Rngs(1))
  tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
  VC.load_vision_params(ours, VC.vision_params_from_hf(tensors, cfg, prefix=""))
  return cfg, hf, ours


@pytest.fixture(scope="module")
def batch(pair):
  cfg = pair[0]
  n = int(np.prod(GRIDS, axis=1).sum())
  # Normalised pixels lie in [-1, 1].
  pixels = np.random.default_rng(0).uniform(-1, 1, size=(n, cfg.patch_dim)).astype(np.float32)
  return pixels, V.vision_inputs(GRIDS, cfg)


def _close(ours, ref, atol):
  np.testing.assert_allclose(np.asarray(ours), ref.detach().numpy(), rtol=0, atol=atol)


def test_metadata_equals_reference(pair, batch):
  cfg, hf, _ = pair
  inputs = batch[1]
  grid = torch.tensor(GRIDS)
  np.testing.assert_array_equal(inputs.positions, get_vision_position_ids(grid, 2).numpy())
  index, weight = get_vision_interpolation_indices_and_weights(
      grid, num_grid_per_side=cfg.grid_side, mode="bilinear", align_corners=True,
      spatial_merge_size=2)
  np.testing.assert_array_equal(inputs.interp_index, index.numpy())
  np.testing.assert_allclose(inputs.interp_weight, weight.numpy(), rtol=0, atol=1e-7)
  boundaries = np.flatnonzero(np.diff(inputs.segment_ids)) + 1
  np.testing.assert_array_equal(boundaries, get_vision_cu_seqlens(grid).numpy()[1:-1])


def test_patch_embed_and_rotary(pair, batch):
  cfg, hf, ours = pair
  pixels, inputs = batch
  with torch.no_grad():
    _close(ours.patch_embed(pixels), hf.patch_embed(torch.from_numpy(pixels)), 1e-5)
    cos, sin = hf.rotary_pos_emb(torch.zeros(1), torch.from_numpy(inputs.positions).long())
  our_cos, our_sin = V.rotary_cos_sin(inputs.positions, cfg)
  _close(our_cos, cos, 1e-5)
  _close(our_sin, sin, 1e-5)


def _block(ours, i):
  graphdef, state = nnx.split(ours.blocks)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


def test_attention_block_and_merger(pair, batch):
  cfg, hf, ours = pair
  pixels, inputs = batch
  x = np.random.default_rng(1).normal(size=(pixels.shape[0], cfg.hidden_size)).astype(np.float32)
  xt = torch.from_numpy(x)
  cu = get_vision_cu_seqlens(torch.tensor(GRIDS))
  with torch.no_grad():
    emb = hf.rotary_pos_emb(xt, torch.from_numpy(inputs.positions).long())
    ref_attn = hf.blocks[1].attn(xt, cu_seqlens=cu, position_embeddings=emb)
    ref_block = hf.blocks[1](xt, cu_seqlens=cu, position_embeddings=emb)
    ref_merged = hf.merger(xt)
  cos, sin = V.rotary_cos_sin(inputs.positions, cfg)
  block = _block(ours, 1)
  _close(block.attn(x, cos, sin, inputs), ref_attn, 1e-5)
  _close(block(x, cos, sin, inputs), ref_block, 1e-4)
  _close(ours.merger(x), ref_merged, 1e-5)


def test_whole_model_parity(pair, batch):
  cfg, hf, ours = pair
  pixels, inputs = batch
  with torch.no_grad():
    ref = hf(torch.from_numpy(pixels), grid_thw=torch.tensor(GRIDS)).pooler_output
  assert ref.shape == (pixels.shape[0] // 4, cfg.out_hidden_size)
  _close(ours(pixels, GRIDS), ref, 1e-4)

  # Jitted with padding to a larger patch count, and with the blocks unrolled.
  n = pixels.shape[0]
  padded = V.vision_inputs(GRIDS, cfg, pad_to=n + 8)
  encode = nnx.jit(lambda m, p, i: m(p, inputs=i))
  out = encode(ours, np.concatenate([pixels, np.ones((8, cfg.patch_dim), np.float32)]), padded)
  _close(out[: n // 4], ref, 1e-4)
  unrolled = V.VisionModel(vision_tiny(scan_layers=False), rngs=nnx.Rngs(2))
  VC.load_vision_params(unrolled, VC.vision_state_dict(ours))
  _close(unrolled(pixels, GRIDS), ref, 1e-4)


@pytest.mark.parametrize("chunk", [8, 7])
def test_chunked_attention_equals_reference(pair, batch, chunk):
  cfg, hf, ours = pair
  pixels, _ = batch
  n = pixels.shape[0]
  inputs = V.vision_inputs(GRIDS, cfg, pad_to=n + 4, attention_chunk=chunk)
  assert inputs.key_start.shape == (-(-(n + 4) // chunk),) and inputs.attention_span < n + 4
  with torch.no_grad():
    ref = hf(torch.from_numpy(pixels), grid_thw=torch.tensor(GRIDS)).pooler_output
  padded = np.concatenate([pixels, np.zeros((4, cfg.patch_dim), np.float32)])
  _close(ours(padded, inputs=inputs)[: n // 4], ref, 1e-4)


def test_attention_stays_inside_each_frame(pair, batch):
  cfg, _, ours = pair
  pixels, _ = batch
  base = np.asarray(ours(pixels, GRIDS))
  changed = pixels.copy()
  changed[24:48] += 1.0  # the second image only
  out = np.asarray(ours(changed, GRIDS))
  np.testing.assert_array_equal(out[:6], base[:6])      # first image untouched
  np.testing.assert_array_equal(out[12:], base[12:])    # the video untouched
  assert np.abs(out[6:12] - base[6:12]).max() > 1e-3


def test_hf_weight_round_trip(pair):
  cfg, hf, ours = pair
  tensors = VC.vision_params_to_hf(VC.vision_state_dict(ours), cfg, prefix="model.visual.")
  reference = hf.state_dict()
  assert sorted(tensors) == sorted("model.visual." + k for k in reference)
  for key, value in reference.items():
    np.testing.assert_array_equal(tensors["model.visual." + key], value.numpy())


def test_bad_grids_and_patch_counts(pair, batch):
  cfg, _, ours = pair
  with pytest.raises(ValueError, match=r"grid_thw\[1\]"):
    V.vision_inputs([[1, 4, 4], [1, 3, 4]], cfg)
  with pytest.raises(ValueError, match="patches"):
    ours(batch[0][:-4], GRIDS)


@pytest.mark.parametrize("size", sorted(PUBLISHED_VISION_PARAMS))
def test_full_size_presets_parameter_count(size):
  cfg = VISION_PRESETS[size](param_dtype=jax.numpy.bfloat16)
  abstract = nnx.eval_shape(lambda: V.VisionModel(cfg, rngs=nnx.Rngs(0)))
  leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
  assert sum(int(np.prod(x.shape)) for x in leaves) == PUBLISHED_VISION_PARAMS[size]
  assert all(x.dtype == jax.numpy.bfloat16 for x in leaves)


def test_config_hf_round_trip(tmp_path):
  cfg = vision_tiny()
  hf = Qwen3_5Config(vision_config=_hf_config(cfg).to_dict())
  hf.save_pretrained(tmp_path)
  assert VisionConfig.from_hf(tmp_path) == cfg
  assert VisionConfig.from_hf(json.loads((tmp_path / "config.json").read_text())) == cfg
  assert VisionConfig.from_hf(cfg.to_hf()) == cfg
  # The released checkpoints store model_type "qwen3_5" and an empty deepstack list.
  released = dict(VISION_PRESETS["9b"]().to_hf(), model_type="qwen3_5", deepstack_visual_indexes=[])
  del released["rope_parameters"]
  assert VisionConfig.from_hf(released) == VISION_PRESETS["9b"]()
  with pytest.raises(ValueError, match="window_size"):
    VisionConfig.from_hf(dict(cfg.to_hf(), window_size=112))
  with pytest.raises(ValueError, match="deepstack"):
    VisionConfig.from_hf(dict(cfg.to_hf(), deepstack_visual_indexes=[3]))
  with pytest.raises(ValueError, match="divisible"):
    vision_tiny(num_heads=3)


def test_parameters_carry_logical_axes():
  from zppo_jax import parallel
  abstract = nnx.eval_shape(lambda: V.VisionModel(vision_tiny(), rngs=nnx.Rngs(0)))
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  shardings = parallel.state_shardings(nnx.state(abstract, nnx.Param), mesh, parallel.TRAIN_RULES)
  assert len(jax.tree.leaves(shardings)) == 21


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)),
                min_size=1, max_size=4),
       st.sampled_from([64, 2304]))
def test_metadata_equals_reference_for_random_grids(grids, table_size):
  cfg = vision_tiny(num_position_embeddings=table_size)
  grid = torch.tensor([[t, 2 * h, 2 * w] for t, h, w in grids])
  inputs = V.vision_inputs(grid.numpy(), cfg)
  np.testing.assert_array_equal(inputs.positions, get_vision_position_ids(grid, 2).numpy())
  index, weight = get_vision_interpolation_indices_and_weights(
      grid, num_grid_per_side=cfg.grid_side, mode="bilinear", align_corners=True,
      spatial_merge_size=2)
  np.testing.assert_array_equal(inputs.interp_index, index.numpy())
  np.testing.assert_allclose(inputs.interp_weight, weight.numpy(), rtol=0, atol=1e-7)
  boundaries = np.flatnonzero(np.diff(inputs.segment_ids)) + 1
  np.testing.assert_array_equal(boundaries, get_vision_cu_seqlens(grid).numpy()[1:-1])


def test_bfloat16_tower_runs(pair, batch):
  cfg, _, ours = pair
  pixels, _ = batch
  low = V.VisionModel(vision_tiny(dtype=jax.numpy.bfloat16, param_dtype=jax.numpy.bfloat16),
                      rngs=nnx.Rngs(3))
  VC.load_vision_params(low, VC.vision_state_dict(ours))
  out = low(pixels, GRIDS)
  assert out.dtype == jax.numpy.bfloat16 and bool(jax.numpy.isfinite(out).all())
