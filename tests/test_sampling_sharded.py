"""The sampler on a (data 2, fsdp 2, tensor 2) mesh of 8 simulated CPU devices gives the tokens
and log-probs of one device. Runs in a subprocess because the device count is fixed at start-up."""
import os
import pathlib
import subprocess
import sys
import textwrap

_ROOT = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_compilation_cache_dir", {cache!r})
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_default_matmul_precision", "highest")
    import numpy as np
    from flax import nnx
    from zppo_jax import parallel
    from zppo_jax.models.qwen3_5 import Qwen3_5ForCausalLM, tiny
    from zppo_jax.sampling import Sampler, SamplingParams

    assert len(jax.devices()) == 8, jax.devices()
    model = Qwen3_5ForCausalLM(tiny(), rngs=nnx.Rngs(0))
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    single = Sampler(model, max_total_len=64)
    sharded = Sampler(model, max_total_len=64, mesh=mesh)
    embedding = sharded.params["embed_tokens"]["embedding"][...]
    assert len(embedding.sharding.device_set) == 8 and not embedding.sharding.is_fully_replicated
    prompts = [[3, 17, 29], [5, 6, 7, 8, 9, 10, 11], [100], [42, 1, 99, 12, 64]]
    for params in (SamplingParams(temperature=0.0, max_new_tokens=12, num_samples=2),
                   SamplingParams(temperature=1.0, max_new_tokens=12, num_samples=2)):
      a = single.generate(prompts, params, seed=4)
      b = sharded.generate(prompts, params, seed=4)
      assert a.tokens == b.tokens, (a.tokens, b.tokens)
      assert a.finish_reasons == b.finish_reasons
      for x, y in zip(a.logprobs, b.logprobs):
        for u, v in zip(x, y):
          np.testing.assert_allclose(u, v, rtol=0, atol=1e-4)
    print("SHARDED_OK")
""")


def test_sharded_sampling_equals_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(_ROOT))
  script = _SCRIPT.format(cache=str(_ROOT / ".jax_cache"))
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0 and "SHARDED_OK" in result.stdout, result.stderr[-4000:]
