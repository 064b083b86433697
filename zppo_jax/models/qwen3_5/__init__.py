"""Qwen3.5 in Flax NNX: the dense text decoder and the vision-language model, with HF checkpoint I/O.

    from zppo_jax.models import qwen3_5
    model = qwen3_5.load_pretrained(path, dtype=jnp.float32, mesh=None)  # HF dir -> nnx.Module
    logits = model(input_ids, attention_mask=None)   # int32[B, T] -> float32[B, T, V]
    qwen3_5.save_pretrained(model, out_dir)          # HF directory transformers can load

A checkpoint with vision weights loads as `Qwen3_5ForConditionalGeneration` (`text_only=True`
loads its text decoder alone), whose call also takes `pixel_values`, `image_grid_thw`,
`pixel_values_videos`, `video_grid_thw` and `mm_token_type_ids` as transformers does;
`save_pretrained_multimodal` writes it back.
"""
from zppo_jax.models.qwen3_5.checkpoint import abstract_model, parameter_count
from zppo_jax.models.qwen3_5.config import (
    PRESETS, ModelConfig, bench_small, qwen3_5_0_8b, qwen3_5_27b, qwen3_5_2b, qwen3_5_4b,
    qwen3_5_9b, tiny)
from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM
from zppo_jax.models.qwen3_5.multimodal import MultimodalConfig, Qwen3_5ForConditionalGeneration
from zppo_jax.models.qwen3_5.multimodal_checkpoint import (
    has_vision_weights, load_pretrained_multimodal, save_pretrained_multimodal)
from zppo_jax.models.qwen3_5.pretrained import load_pretrained, save_pretrained
from zppo_jax.models.qwen3_5.rope_index import get_rope_index
from zppo_jax.models.qwen3_5.vision import VisionModel
from zppo_jax.models.qwen3_5.vision_config import VISION_PRESETS, VisionConfig, vision_tiny

__all__ = [
    "ModelConfig", "MultimodalConfig", "PRESETS", "Qwen3_5ForCausalLM",
    "Qwen3_5ForConditionalGeneration", "VISION_PRESETS", "VisionConfig", "VisionModel",
    "abstract_model", "bench_small", "get_rope_index", "has_vision_weights", "load_pretrained",
    "load_pretrained_multimodal", "parameter_count", "qwen3_5_0_8b", "qwen3_5_27b", "qwen3_5_2b",
    "qwen3_5_4b", "qwen3_5_9b", "save_pretrained", "save_pretrained_multimodal", "tiny",
    "vision_tiny",
]
