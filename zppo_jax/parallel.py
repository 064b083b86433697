"""Device mesh and logical-axis sharding rules.

Every parameter carries a tuple of *logical* axis names, one per dimension, in the standard Flax
``out_sharding`` metadata (with ``eager_sharding=False``, so that a model can be built with no mesh
at all); use ``param`` below to create one. A rule set maps logical names to mesh axes. There are
two rule sets: ``TRAIN_RULES`` (FSDP + tensor parallelism: weights sharded over ``fsdp`` on their
model dimension and over ``tensor`` on their head/MLP/vocab dimension) and ``SAMPLE_RULES``
(weights only tensor-parallel, replicated over ``data`` and ``fsdp``, so decode steps do not
all-gather weights). In both, the batch is split over ``data`` and ``fsdp``.

Layers stacked for ``jax.lax.scan`` get a leading ``LAYERS`` axis from ``nnx.vmap`` when built with
``transform_metadata=SCAN_METADATA``.

Typical use::

  mesh = parallel.make_mesh(data=1, fsdp=-1, tensor=2)
  with jax.set_mesh(mesh), parallel.use_rules(parallel.TRAIN_RULES):
    model = parallel.create_sharded(lambda: Model(cfg, rngs=nnx.Rngs(0)), mesh)
    logits = jax.jit(...)(...)   # activations constrained with `parallel.constrain`
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# Mesh axes.
DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)

# Logical axes of parameters.
VOCAB = "vocab"            # V: embedding rows / LM-head columns
EMBED = "embed"            # D: the residual stream dimension of weights
MLP = "mlp"                # F: MLP hidden dimension
Q_HEADS = "q_heads"        # N (or N * H, N * 2H when heads are flattened into one dimension)
KV_HEADS = "kv_heads"      # K (or K * H)
HEAD_DIM = "head_dim"      # H, Dk, Dv: per-head features (never sharded)
GDN_CONV = "gdn_conv"      # C = 2 * Hk * Dk + Hv * Dv: GDN q/k/v projection and conv channels
GDN_HEADS = "gdn_heads"    # Hv (or Hv * Dv): GDN value heads (z, a, b projections, A_log, dt_bias)
CONV_KERNEL = "conv_kernel"  # the causal conv's taps
NORM = "norm"              # RMSNorm scales (replicated)
LAYERS = "layers"          # stacked repetitions of the layer cycle (scan axis, never sharded)

# Logical axes of activations.
BATCH = "batch"            # B
LENGTH = "length"          # T / S
ACT_EMBED = "act_embed"    # D of activations
ACT_MLP = "act_mlp"        # F of activations
ACT_HEADS = "act_heads"    # N / K / Hv of activations
ACT_VOCAB = "act_vocab"    # V of logits

# A rule set: (logical name, mesh axis | tuple of mesh axes | None) pairs, Flax's LogicalRules.
Rules = tuple[tuple[str, Any], ...]

_ACTIVATION_RULES: Rules = (
    (BATCH, (DATA, FSDP)),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_MLP, TENSOR),
    (ACT_HEADS, TENSOR),
    (ACT_VOCAB, TENSOR),
)
_REPLICATED: Rules = ((HEAD_DIM, None), (CONV_KERNEL, None), (NORM, None), (LAYERS, None))

TRAIN_RULES: Rules = (
    (VOCAB, TENSOR),
    (EMBED, FSDP),
    (MLP, TENSOR),
    (Q_HEADS, TENSOR),
    (KV_HEADS, TENSOR),
    (GDN_CONV, TENSOR),
    (GDN_HEADS, TENSOR),
) + _REPLICATED + _ACTIVATION_RULES

SAMPLE_RULES: Rules = (
    (VOCAB, TENSOR),
    (EMBED, None),
    (MLP, TENSOR),
    (Q_HEADS, TENSOR),
    (KV_HEADS, TENSOR),
    (GDN_CONV, TENSOR),
    (GDN_HEADS, TENSOR),
) + _REPLICATED + _ACTIVATION_RULES

# `nnx.vmap(..., transform_metadata=SCAN_METADATA)` prepends LAYERS to stacked params' names.
SCAN_METADATA = {nnx.PARTITION_NAME: LAYERS}


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``(data, fsdp, tensor)`` mesh over all (or the given) devices.

  Args:
    data: size of the pure data-parallel axis.
    fsdp: size of the FSDP axis; -1 takes all devices left over.
    tensor: size of the tensor-parallel axis.
    devices: devices to use (default ``jax.devices()``).

  Returns:
    A mesh with Auto axis types (shardings inside jit propagate from constraints).

  Raises:
    ValueError: when the sizes do not multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"bad mesh sizes data={data} fsdp={fsdp} tensor={tensor}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
                     f"{math.prod(sizes)} devices, have {len(devices)}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


@contextlib.contextmanager
def use_rules(rules: Rules):
  """Makes ``rules`` the current rule set (for ``constrain`` and Flax's partition specs)."""
  with flax_spmd.logical_axis_rules(rules):
    yield


def current_rules() -> Rules:
  """The rule set of the innermost ``use_rules``, else ``TRAIN_RULES``."""
  return tuple(flax_spmd.get_logical_axis_rules()) or TRAIN_RULES


def logical_to_spec(names: Sequence[str | None], rules: Rules | None = None) -> PartitionSpec:
  """Maps logical axis names to a ``PartitionSpec``.

  Args:
    names: one logical name (or None for replicated) per dimension.
    rules: rule set; default ``current_rules()``.

  Raises:
    ValueError: a name without a rule, or a mesh axis used by two dimensions.
  """
  table = dict(current_rules() if rules is None else rules)
  spec, used = [], []
  for name in names:
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no rule (known: {sorted(table)})")
    axes = table[name]
    flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
    for axis in flat:
      if axis in used:
        raise ValueError(f"mesh axis {axis!r} used twice in logical axes {tuple(names)}")
      used.append(axis)
    spec.append(axes)
  return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None], rules: Rules | None = None,
                   shape: Sequence[int] | None = None, what: str = "array") -> NamedSharding:
  """``NamedSharding`` for an array with the given logical axes.

  Args:
    mesh: the device mesh.
    names: logical axis names, one per dimension.
    rules: rule set; default ``current_rules()``.
    shape: when given, checked against ``names`` and for divisibility by the mesh axes.
    what: name of the array, for error messages.

  Raises:
    ValueError: rank mismatch or a dimension not divisible by its mesh axes' size.
  """
  spec = logical_to_spec(names, rules)
  if shape is not None:
    if len(shape) != len(names):
      raise ValueError(f"{what}: shape {tuple(shape)} has rank {len(shape)} but logical axes "
                       f"{tuple(names)} have {len(names)}")
    for dim, (size, axes) in enumerate(zip(shape, spec)):
      flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
      parts = math.prod(mesh.shape[a] for a in flat)
      if size % parts:
        raise ValueError(f"{what}: dim {dim} ({names[dim]}) of size {size} is not divisible by "
                         f"mesh axes {flat} of total size {parts}")
  return NamedSharding(mesh, spec)


def param(init: Callable, key: jax.Array, shape: Sequence[int], names: Sequence[str | None],
          dtype: Any = jnp.float32) -> nnx.Param:
  """A parameter carrying its logical axis names.

  Args:
    init: a ``jax.nn.initializers`` function ``(key, shape, dtype) -> array``.
    key: PRNG key (e.g. ``rngs.params()``).
    shape: parameter shape.
    names: one logical axis name per dimension.
    dtype: storage dtype.
  """
  if len(names) != len(shape):
    raise ValueError(f"shape {tuple(shape)} and logical axes {tuple(names)} differ in rank")
  return nnx.Param(init(key, tuple(shape), dtype), out_sharding=tuple(names),
                   eager_sharding=False)


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  """The logical axis names of a variable, or None when it has none."""
  names = variable.get_metadata().get("out_sharding")
  return None if names is None else tuple(names)


def state_shardings(state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
  """Maps every variable of an ``nnx.State`` (real or abstract) to its ``NamedSharding``.

  Parameters must carry logical names of the right rank; other variables without names (e.g. RNG
  state) are replicated.

  Returns:
    A tree like ``state`` whose variables hold a ``NamedSharding`` instead of an array.

  Raises:
    ValueError: naming the parameter that lacks names or cannot be sharded.
  """
  rules = current_rules() if rules is None else rules

  def one(path, var):
    what = jax.tree_util.keystr(path, simple=True, separator="/")
    names = logical_axes(var)
    shape = tuple(var.get_value().shape)
    if names is None:
      if isinstance(var, nnx.Param):
        raise ValueError(f"parameter {what} of shape {shape} has no logical axis names")
      names = (None,) * len(shape)
    return var.replace(named_sharding(mesh, names, rules, shape, what))

  return jax.tree.map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded(constructor: Callable[[], nnx.Module], mesh: Mesh,
                   rules: Rules | None = None) -> nnx.Module:
  """Builds a module with every variable created directly in its target sharding.

  The module is traced abstractly first (``nnx.eval_shape``); initialisation then runs under
  ``jax.jit`` with the resulting output shardings, so no device ever holds a full copy.
  """
  abstract = nnx.eval_shape(constructor)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(abstract_state, mesh, rules)

  @jax.jit
  def init():
    state = nnx.state(constructor())
    return jax.lax.with_sharding_constraint(state, shardings)

  with jax.set_mesh(mesh):
    state = init()
  return nnx.merge(graphdef, state)


def constrain(x: jax.Array, names: Sequence[str | None], rules: Rules | None = None) -> jax.Array:
  """Constrains an activation's sharding inside jit by logical names.

  Uses the mesh set with ``jax.set_mesh``; without a mesh there is nothing to shard over and
  ``x`` is returned unchanged (with a mesh, CPU or not, the constraint is always applied).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  if x.ndim != len(names):
    raise ValueError(f"activation of shape {x.shape} and logical axes {tuple(names)} differ "
                     "in rank")
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))


def split_devices(fraction: float, devices: Sequence) -> tuple[list, list]:
  """(student devices, teacher devices): the last ⌈fraction·n⌉ devices go to the teacher (the
  paper's 6:2 split is fraction 0.25); the same list twice when they share (fraction 0, or too
  few devices to split)."""
  devices = list(devices)
  n_teacher = int(math.ceil(fraction * len(devices)))
  if fraction <= 0 or len(devices) < 2 or n_teacher >= len(devices):
    return devices, devices
  return devices[:-n_teacher], devices[-n_teacher:]


def layout_mesh(layout: Sequence[int], devices: Sequence, name: str) -> Mesh | None:
  """The mesh of a config layout (`config.mesh.student` / `.teacher`) over `devices`.

  Args:
    layout: (data, fsdp, tensor) sizes; -1 takes the devices left over.
    devices: the devices of that side (`split_devices`).
    name: the config key, for the error.

  Returns:
    The mesh, or None for a single device (plain, unsharded execution).

  Raises:
    UserError: naming the key, when the sizes do not fit the devices.
  """
  from zppo_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  if len(layout) != 3 or not all(isinstance(s, int) for s in layout):
    raise UserError(f"config.{name}={tuple(layout)} must be three integers (data, fsdp, tensor), "
                    f"e.g. --config.{name}=1,-1,2")
  if len(devices) < 2 and all(s in (1, -1) for s in layout):
    return None
  try:
    return make_mesh(*layout, devices=devices)
  except ValueError as err:
    raise UserError(f"config.{name}={tuple(layout)} does not fit its {len(devices)} devices "
                    f"({err}); give sizes (data, fsdp, tensor) whose product is {len(devices)}, "
                    f"or -1 for one of them") from None
