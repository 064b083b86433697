"""TPU generations and slice names, and the devices of a topology libtpu can compile for.

A slice name is GEN-N: N counts TensorCores for v5p and v4 (`v5p-128` = 64 chips, two cores per
chip) and chips for v5e and v6e (`v6e-64` = 64 chips). `topology_devices` asks libtpu's compiler
(`jax.experimental.topologies`) for the slice's devices on a host that has no TPU.
"""
from __future__ import annotations

import dataclasses
import math
import os


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation.

  Attributes:
    name: e.g. "v5p".
    hbm_gib: HBM per chip; peak_tflops: bf16 peak per chip; hbm_gbps: HBM bandwidth per chip.
    cores_in_name: 2 where the slice name counts TensorCores (v4-32 = 16 chips), 1 where it counts
      chips (v5e-16 = 16 chips).
    dims: torus dimensions of the topology string ("2x4x4" has 3).
  """
  name: str
  hbm_gib: float
  peak_tflops: float
  hbm_gbps: float
  cores_in_name: int
  dims: int


CHIPS = {
    "v5p": Chip("v5p", 95.0, 459.0, 2765.0, 2, 3),
    "v6e": Chip("v6e", 32.0, 918.0, 1640.0, 1, 2),
    "v5e": Chip("v5e", 16.0, 197.0, 819.0, 1, 2),
    "v4": Chip("v4", 32.0, 275.0, 1200.0, 2, 3),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice: its name ("v5p-128"), chip, chip count and libtpu descriptor ("v5p:4x4x4")."""
  name: str
  chip: Chip
  chips: int
  desc: str


def _torus(chips: int, dims: int) -> str:
  if chips & (chips - 1):
    raise ValueError(f"{chips} chips: only power-of-two slices are supported")
  shape = [1] * dims
  i = 0
  while math.prod(shape) < chips:
    shape[i % dims] *= 2
    i += 1
  return "x".join(str(s) for s in sorted(shape))


def parse_topology(name: str) -> Topology:
  """`v5p-128` (TensorCores, 64 chips), `v6e-64`, `v5e-16`, `v4-32` -> a `Topology`."""
  gen, _, count = name.partition("-")
  if gen not in CHIPS or not count.isdigit() or int(count) < 1:
    raise ValueError(f"unknown topology {name!r}: expected GEN-N with GEN in {sorted(CHIPS)}, "
                     "e.g. v5p-128, v6e-64, v5e-16")
  chip = CHIPS[gen]
  chips = max(1, int(count) // chip.cores_in_name)
  return Topology(name, chip, chips, f"{gen}:{_torus(chips, chip.dims)}")


def scaled(topo: Topology, factor: int) -> Topology:
  """The same generation with `factor` times the chips."""
  n = topo.chips * factor
  return parse_topology(f"{topo.chip.name}-{n * topo.chip.cores_in_name}")


def libtpu_available() -> str | None:
  """None when AOT compilation for TPU works here, else the reason it does not."""
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return "libtpu is not installed (pip install -e '.[tpu]')"
  return None


def topology_devices(topo: Topology) -> list:
  """The slice's devices, for meshes whose programs are compiled but never run here."""
  # libtpu reads these at start-up; any TPU name works: the topology below is what counts.
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-16")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  return list(topologies.get_topology_desc(topology_name=topo.desc, platform="tpu").devices)
