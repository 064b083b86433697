"""FP8 weights with block scales: the published `Qwen3.5-*-FP8` checkpoint format, kept in fp8.

The format (``quantization_config`` in config.json: ``quant_method: fp8``, ``fmt: e4m3``,
``weight_block_size: [128, 128]``, ``activation_scheme: dynamic``) stores each quantised linear
layer as a ``float8_e4m3fn`` ``weight`` [out, in] and a ``weight_scale_inv`` [⌈out/b0⌉, ⌈in/b1⌉];
the real weight is ``weight[i, j] * weight_scale_inv[i // b0, j // b1]``. Norms, the embedding,
the LM head and the small GDN tensors (``in_proj_a``/``in_proj_b``, conv, ``A_log``, ``dt_bias``)
stay in bf16; which layers are quantised is read from the checkpoint itself (a
``weight_scale_inv`` next to the weight), so ``modules_to_not_convert`` needs no parsing.

`Fp8Dense` keeps the kernel in fp8 on device ([in, out], our layout) with its scales and
dequantises inside the matmul (XLA fuses the convert and the scaling into the dot's operand, so the
full-precision weight is never stored). Activations are not quantised: the reference is
"dequantise, then compute in the compute dtype".

  model = load_fp8_pretrained("/ckpt/Qwen3.5-27B-FP8", dtype=jnp.bfloat16, mesh=mesh,
                              rules=parallel.SAMPLE_RULES)
  abstract = nnx.eval_shape(lambda: quantize_modules(Qwen3_5ForCausalLM(cfg, rngs=...)))  # plans
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from zppo_jax import parallel
from zppo_jax.models.qwen3_5 import checkpoint as ckpt
from zppo_jax.models.qwen3_5.config import ModelConfig
from zppo_jax.models.qwen3_5.layers import Dense
from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM

FP8 = jnp.float8_e4m3fn
FP8_MAX = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)  # 448
DEFAULT_BLOCK = (128, 128)
SCALE_SUFFIX = "_scale_inv"
# Linear layers the published FP8 checkpoints quantise (our module names); the rest stay bf16.
QUANTIZED_NAMES = frozenset({"gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj",
                             "o_proj", "in_proj_qkv", "in_proj_z", "out_proj"})


def expand_scale(scale: jax.Array, shape: tuple[int, int], block: tuple[int, int]) -> jax.Array:
  """Block scales [..., ⌈I/b0⌉, ⌈O/b1⌉] -> one scale per weight [..., I, O] (edge blocks cut)."""
  s = jnp.repeat(jnp.repeat(scale, block[0], axis=-2), block[1], axis=-1)
  return s[..., :shape[0], :shape[1]]


def dequantize(kernel: jax.Array, scale: jax.Array, block: tuple[int, int],
               dtype: Any = jnp.float32) -> jax.Array:
  """fp8 kernel [..., I, O] times its block scales, computed in float32, cast to ``dtype``."""
  full = expand_scale(scale.astype(jnp.float32), kernel.shape[-2:], block)
  return (kernel.astype(jnp.float32) * full).astype(dtype)


def quantize_blockwise(weight: np.ndarray, block: tuple[int, int] = DEFAULT_BLOCK
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Block-wise fp8 e4m3 quantisation of a float matrix [I, O] (scale = block amax / 448).

  Returns:
    (fp8 matrix [I, O] as ``ml_dtypes.float8_e4m3fn``, float32 scales [⌈I/b0⌉, ⌈O/b1⌉]).
  """
  weight = np.asarray(weight, np.float32)
  rows, cols = weight.shape
  nb0, nb1 = math.ceil(rows / block[0]), math.ceil(cols / block[1])
  padded = np.zeros((nb0 * block[0], nb1 * block[1]), np.float32)
  padded[:rows, :cols] = weight
  blocks = padded.reshape(nb0, block[0], nb1, block[1])
  amax = np.abs(blocks).max(axis=(1, 3))
  scale = np.where(amax > 0, amax / FP8_MAX, 1.0).astype(np.float32)
  q = (blocks / scale[:, None, :, None]).reshape(padded.shape)[:rows, :cols]
  return q.astype(ml_dtypes.float8_e4m3fn), scale


class Fp8Dense(nnx.Module):
  """``y = x @ (kernel * scale)``: an fp8 e4m3 kernel [in, out] dequantised inside the matmul.

  A drop-in for `layers.Dense` (same ``kernel`` path, same logical axes); the block scales
  [⌈in/b0⌉, ⌈out/b1⌉] (float32, replicated: they are tiny) live next to it as ``scale``. Either
  tensor may carry leading stacked axes (the scanned layers); the call sees one layer.

  Args:
    kernel: float8_e4m3fn [..., in, out].
    scale: float32 [..., ⌈in/b0⌉, ⌈out/b1⌉].
    names: logical axis names of the kernel (with LAYERS first when stacked).
    block: (b0, b1) block size along (in, out).
    dtype: compute dtype.
  """

  def __init__(self, kernel: jax.Array, scale: jax.Array, names: tuple[str | None, ...],
               block: tuple[int, int], dtype: Any):
    stacked = tuple(n for n in names[:-2])
    self.kernel = nnx.Param(kernel, out_sharding=tuple(names), eager_sharding=False)
    self.scale = nnx.Param(scale, out_sharding=stacked + (None, None), eager_sharding=False)
    self.block = tuple(block)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """float[..., in] -> float[..., out] in the compute dtype."""
    w = dequantize(self.kernel[...], self.scale[...], self.block, self.dtype)
    return jnp.dot(x.astype(self.dtype), w)


def _dense_paths(model: nnx.Module) -> list[tuple[Any, ...]]:
  return [tuple(path) for path, m in nnx.iter_modules(model) if isinstance(m, Dense)]


def _parent(model, path):
  node = model
  for p in path[:-1]:
    node = node[p] if isinstance(p, int) else getattr(node, p)
  return node


def quantize_modules(model: Qwen3_5ForCausalLM, paths: Iterable[tuple[Any, ...]] | None = None,
                     block: tuple[int, int] = DEFAULT_BLOCK) -> Qwen3_5ForCausalLM:
  """Replaces `Dense` layers by `Fp8Dense` in place (quantising their current weights).

  Works on real models (block-wise quantisation of the weights) and inside ``nnx.eval_shape``
  (abstract: shapes and dtypes only, e.g. for `zppo_jax.plan`).

  Args:
    model: the model.
    paths: module paths (as `nnx.iter_modules` yields them) to convert; default every layer whose
      name is in `QUANTIZED_NAMES` (what the published FP8 checkpoints quantise).
    block: block size.

  Returns:
    The same model object.
  """
  if paths is None:
    paths = [p for p in _dense_paths(model) if p[-1] in QUANTIZED_NAMES]
  for path in paths:
    parent = _parent(model, path)
    dense = getattr(parent, path[-1])
    if not isinstance(dense, Dense):
      raise ValueError(f"{'.'.join(map(str, path))} is {type(dense).__name__}, not Dense")
    kernel = dense.kernel[...]
    names = parallel.logical_axes(dense.kernel)
    lead, (i, o) = kernel.shape[:-2], kernel.shape[-2:]
    scale_shape = (*lead, math.ceil(i / block[0]), math.ceil(o / block[1]))
    if isinstance(kernel, jax.ShapeDtypeStruct) or isinstance(kernel, jax.core.Tracer):
      q = jnp.zeros(kernel.shape, FP8)
      s = jnp.ones(scale_shape, jnp.float32)
    else:
      flat = np.asarray(kernel, np.float32).reshape(-1, i, o)
      pairs = [quantize_blockwise(w, block) for w in flat]
      q = jnp.asarray(np.stack([p[0] for p in pairs]).reshape(kernel.shape))
      s = jnp.asarray(np.stack([p[1] for p in pairs]).reshape(scale_shape))
    setattr(parent, path[-1], Fp8Dense(q, s, names, block, dense.dtype))
  return model


def _read_config(path: str) -> tuple[dict[str, Any], tuple[int, int]]:
  """config.json without its ``quantization_config`` and the block size (checked)."""
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  holder = hf.get("text_config", hf) if "quantization_config" not in hf else hf
  quant = holder.pop("quantization_config", None)
  if quant is None:
    raise ValueError(f"{path}/config.json has no quantization_config: not an FP8 checkpoint")
  if quant.get("quant_method") != "fp8" or quant.get("fmt", "e4m3") != "e4m3":
    raise ValueError(f"{path}: quantization_config {quant} is not fp8 e4m3 (quant_method 'fp8')")
  block = quant.get("weight_block_size")
  if not (isinstance(block, (list, tuple)) and len(block) == 2):
    raise ValueError(f"{path}: quantization_config.weight_block_size must be [b0, b1], got "
                     f"{block!r} (per-tensor FP8 is not supported)")
  return hf, (int(block[0]), int(block[1]))


def _tensor(reader: ckpt.Reader, key: str) -> np.ndarray:
  """A tensor as numpy; fp8 ones are read from the file's bytes (safetensors' numpy backend
  has no fp8 dtype, ml_dtypes has)."""
  try:
    return reader.get(key)
  except (TypeError, AttributeError, ValueError):
    return _fp8_tensor(os.path.join(reader.path, reader.weight_map[key]), key)


def _fp8_tensor(path: str, key: str) -> np.ndarray:
  """An F8_E4M3 tensor of a safetensors file: an 8-byte header size, a JSON header giving each
  tensor's dtype, shape and byte range after the header, then the data."""
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    meta = json.loads(f.read(size))[key]
    if meta["dtype"] != "F8_E4M3":
      raise ValueError(f"{path}: tensor {key} has dtype {meta['dtype']}, which cannot be read")
    start, end = meta["data_offsets"]
    f.seek(8 + size + start)
    data = f.read(end - start)
  return np.frombuffer(data, ml_dtypes.float8_e4m3fn).reshape(meta["shape"])


def load_fp8_pretrained(path: str | os.PathLike, dtype: Any = jnp.bfloat16,
                        mesh: jax.sharding.Mesh | None = None,
                        rules: parallel.Rules = parallel.SAMPLE_RULES, *, param_dtype: Any = None,
                        **runtime) -> Qwen3_5ForCausalLM:
  """Loads an FP8 block-scaled Qwen3.5 checkpoint, quantised layers kept in fp8 on device.

  Args:
    path: directory with config.json (with ``quantization_config``) and safetensors.
    dtype: compute dtype.
    mesh: device mesh (each tensor goes straight to its sharding), or None.
    rules: logical-axis rule set.
    param_dtype: storage dtype of the unquantised tensors (default ``dtype``).
    **runtime: other runtime config fields (``scan_layers``, ``remat``, ...).

  Raises:
    ValueError: not an fp8 checkpoint, a missing/unexpected tensor, a shape mismatch, or a layer
      quantised in some repetitions of the layer cycle and not in others (naming the key).
  """
  path = os.fspath(path)
  hf, block = _read_config(path)
  cfg = ModelConfig.from_hf(hf, dtype=dtype,
                            param_dtype=dtype if param_dtype is None else param_dtype, **runtime)
  reader = ckpt.Reader(path)
  keys = set(reader.keys())
  prefix = (ckpt.MULTIMODAL_PREFIX if any(k.startswith(ckpt.MULTIMODAL_PREFIX) for k in keys)
            else ckpt.TEXT_PREFIX)
  plain = ckpt.abstract_model(cfg)
  entries = ckpt.key_entries(cfg, ckpt.flatten_state(nnx.state(plain)), prefix)
  quantized: dict[tuple, bool] = {}
  for e in entries:
    q = e.hf_key + SCALE_SUFFIX in keys
    if quantized.setdefault(e.path, q) != q:
      raise ValueError(f"{path}: {e.hf_key} is {'' if q else 'not '}quantised but other layers "
                       f"at the same position of the layer cycle ({'.'.join(map(str, e.path))}) "
                       "are not; mixed precision across repetitions is not supported")
  module_paths = [p[:-1] for p, q in quantized.items() if q]
  ours = (block[1], block[0])  # HF blocks are along (out, in); our kernels are [in, out].
  graphdef, abstract_state = nnx.split(nnx.eval_shape(
      lambda: quantize_modules(Qwen3_5ForCausalLM(cfg, rngs=nnx.Rngs(0)), module_paths, ours)))
  flat = ckpt.flatten_state(abstract_state)
  expected = {e.hf_key for e in entries} | {e.hf_key + SCALE_SUFFIX for e in entries
                                            if quantized[e.path]}
  available = {k for k in keys if not k.startswith(ckpt.SKIPPED_PREFIXES)}
  if cfg.tie_word_embeddings:
    available.discard("lm_head.weight")
  if expected - available or available - expected:
    raise ValueError(f"{path}: missing tensors {sorted(expected - available)[:10]}, unexpected "
                     f"tensors {sorted(available - expected)[:10]}")
  shardings = None if mesh is None else ckpt.flatten_state(
      parallel.state_shardings(abstract_state, mesh, rules))
  hosts: dict[tuple, np.ndarray] = {}

  def put(var_path, index, value):
    aval = flat[var_path].get_value()
    if var_path not in hosts:
      hosts[var_path] = np.empty(aval.shape, np.dtype(aval.dtype))
    if index is None:
      hosts[var_path][...] = value
    else:
      hosts[var_path][index] = value

  for e in entries:
    weight = _tensor(reader, e.hf_key)
    if tuple(weight.shape) != e.hf_shape:
      raise ValueError(f"{path}: tensor {e.hf_key} has shape {tuple(weight.shape)}, the config "
                       f"implies {e.hf_shape}")
    if quantized[e.path]:
      if weight.dtype != ml_dtypes.float8_e4m3fn:
        raise ValueError(f"{path}: {e.hf_key} has a scale but dtype {weight.dtype}, not fp8 e4m3")
      scale = _tensor(reader, e.hf_key + SCALE_SUFFIX).astype(np.float32)
      want = (math.ceil(e.hf_shape[0] / block[0]), math.ceil(e.hf_shape[1] / block[1]))
      if scale.shape != want:
        raise ValueError(f"{path}: {e.hf_key}{SCALE_SUFFIX} has shape {scale.shape}, expected "
                         f"{want} for blocks {block}")
      put(e.path, e.stack_index, weight.T)
      put(e.path[:-1] + ("scale",), e.stack_index, scale.T)
    else:
      put(e.path, e.stack_index, ckpt.hf_to_ours(weight.astype(np.float32), e))
  reader.close()
  for var_path, host in hosts.items():
    var = flat[var_path]
    if shardings is None:
      array = jax.device_put(host)
    else:
      array = jax.make_array_from_callback(host.shape, shardings[var_path].get_value(),
                                           lambda idx, h=host: h[idx])
    flat[var_path] = var.replace(array)
  hosts.clear()
  return nnx.merge(graphdef, nnx.from_flat_state(list(flat.items())))
