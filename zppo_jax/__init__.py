"""zppo-jax: ZPPO post-training of Qwen3.5 vision-language models in JAX/Flax."""

__version__ = "0.1.0"
