"""Qwen3.5 dense text decoder in Flax NNX, with Hugging Face checkpoint I/O.

    from zppo_jax.models import qwen3_5
    model = qwen3_5.load_pretrained(path, dtype=jnp.float32, mesh=None)  # HF dir -> nnx.Module
    logits = model(input_ids, attention_mask=None)   # int32[B, T] -> float32[B, T, V]
    qwen3_5.save_pretrained(model, out_dir)          # HF directory transformers can load
"""
from zppo_jax.models.qwen3_5.checkpoint import (
    abstract_model, load_pretrained, parameter_count, save_pretrained)
from zppo_jax.models.qwen3_5.config import (
    PRESETS, ModelConfig, bench_small, qwen3_5_0_8b, qwen3_5_27b, qwen3_5_2b, qwen3_5_4b,
    qwen3_5_9b, tiny)
from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM

__all__ = [
    "ModelConfig", "PRESETS", "Qwen3_5ForCausalLM", "abstract_model", "bench_small",
    "load_pretrained", "parameter_count", "qwen3_5_0_8b", "qwen3_5_27b", "qwen3_5_2b",
    "qwen3_5_4b", "qwen3_5_9b", "save_pretrained", "tiny",
]
