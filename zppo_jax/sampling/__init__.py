"""The rollout engine: jitted prefill + decode loop over the hybrid cache, and the host `Sampler`."""
from zppo_jax.sampling.filters import SamplingKnobs, sample_step
from zppo_jax.sampling.sampler import Sampler, SamplerOutput, SamplingParams

__all__ = ["Sampler", "SamplerOutput", "SamplingParams", "SamplingKnobs", "sample_step"]
