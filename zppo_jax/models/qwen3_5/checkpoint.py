"""Hugging Face checkpoint I/O for the Qwen3.5 text decoder.

One declarative table maps HF tensor names to our parameter paths (``KEY_TABLE``); loading reads
it forwards, saving backwards. A rule's ``transpose`` reverses all axes (HF ``nn.Linear`` stores
``weight`` as [out, in], we store ``kernel`` as [in, out]; the GDN conv's [C, 1, K] becomes
[K, 1, C]); the result is then reshaped to our parameter's shape. Per-layer rules apply to
``<prefix>layers.{i}.<hf>``, where HF layer ``i`` is our ``layers[i % P]`` at index ``i // P`` of
the stacked leading axis (P = ``len(cfg.cycle)``, see ``model.py``).

Loading is tensor by tensor: the model is first traced abstractly (``nnx.eval_shape``), then each
parameter is assembled on the host from its HF tensor(s) (memory-mapped safetensors), cast,
placed with ``jax.make_array_from_callback`` straight into its target sharding and dropped from
host memory before the next one. Peak host memory is therefore one (stacked) parameter, never the
checkpoint.

Checkpoints: a text model (``Qwen3_5ForCausalLM``: ``model.*``, ``lm_head.weight``) or the
multimodal ``Qwen3_5ForConditionalGeneration`` (``model.language_model.*``, ``lm_head.weight``;
``model.visual.*`` is skipped). Multi-token-prediction weights (``mtp.*``) are always skipped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors import safe_open
from safetensors.numpy import save_file

from zppo_jax import parallel
from zppo_jax.models.qwen3_5.config import ModelConfig
from zppo_jax.models.qwen3_5.model import Qwen3_5ForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TEXT_PREFIX = "model."
MULTIMODAL_PREFIX = "model.language_model."
SKIPPED_PREFIXES = ("mtp.", "model.visual.")


@dataclasses.dataclass(frozen=True)
class KeyRule:
  """One HF tensor <-> one of our parameters.

  Attributes:
    hf: HF name, relative to the model prefix (and to ``layers.{i}.`` for per-layer rules).
    ours: our parameter path, dotted, relative to the model (or to ``layers[p]``).
    transpose: reverse all axes going HF -> ours (then reshape to our shape).
    hf_shape: HF shape from the config when it is not just our shape (reversed if transposed).
  """
  hf: str
  ours: str
  transpose: bool = False
  hf_shape: Callable[[ModelConfig], tuple[int, ...]] | None = None


def _linear(name: str) -> KeyRule:
  return KeyRule(f"{name}.weight", f"{name}.kernel", transpose=True)


_NORMS = (KeyRule("input_layernorm.weight", "input_layernorm.weight"),
          KeyRule("post_attention_layernorm.weight", "post_attention_layernorm.weight"))
_MLP = tuple(_linear(f"mlp.{n}") for n in ("gate_proj", "up_proj", "down_proj"))

KEY_TABLE: dict[str, tuple[KeyRule, ...]] = {
    # Outside the layers; "lm_head.weight" has no model prefix and exists only when untied.
    "global": (
        KeyRule("embed_tokens.weight", "embed_tokens.embedding"),
        KeyRule("norm.weight", "norm.weight"),
    ),
    "lm_head": (_linear("lm_head"),),
    "full_attention": _NORMS + _MLP + tuple(
        _linear(f"self_attn.{n}") for n in ("q_proj", "k_proj", "v_proj", "o_proj")) + (
        KeyRule("self_attn.q_norm.weight", "self_attn.q_norm.weight"),
        KeyRule("self_attn.k_norm.weight", "self_attn.k_norm.weight"),
    ),
    "linear_attention": _NORMS + _MLP + tuple(
        _linear(f"linear_attn.{n}")
        for n in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")) + (
        KeyRule("linear_attn.conv1d.weight", "linear_attn.conv1d.kernel", transpose=True,
                hf_shape=lambda c: (c.gdn_conv_dim, 1, c.linear_conv_kernel_dim)),
        KeyRule("linear_attn.dt_bias", "linear_attn.dt_bias"),
        KeyRule("linear_attn.A_log", "linear_attn.A_log"),
        KeyRule("linear_attn.norm.weight", "linear_attn.norm.weight"),
    ),
}


@dataclasses.dataclass(frozen=True)
class KeyEntry:
  """A resolved rule: HF key, our flat path, index on the stacked axis (or None), shapes."""
  hf_key: str
  path: tuple[Any, ...]
  stack_index: int | None
  rule: KeyRule
  hf_shape: tuple[int, ...]
  our_shape: tuple[int, ...]   # without the stacked axis


def key_entries(cfg: ModelConfig, flat_state: dict[tuple, Any], prefix: str) -> list[KeyEntry]:
  """All HF tensors the model has, in HF order, resolved against the (abstract) state."""

  def entry(hf_key, path, stack_index, rule):
    if path not in flat_state:
      raise KeyError(f"key table names {'.'.join(map(str, path))} for {hf_key}, which the model "
                     "does not have")
    shape = tuple(flat_state[path].get_value().shape)
    if stack_index is not None:
      shape = shape[1:]
    hf_shape = (rule.hf_shape(cfg) if rule.hf_shape else
                tuple(reversed(shape)) if rule.transpose else shape)
    if math.prod(hf_shape) != math.prod(shape):
      raise AssertionError(f"{hf_key}: HF shape {hf_shape} vs ours {shape}")
    return KeyEntry(hf_key, path, stack_index, rule, hf_shape, shape)

  def split(dotted):
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))

  entries = [entry(prefix + r.hf, split(r.ours), None, r) for r in KEY_TABLE["global"][:1]]
  period = len(cfg.cycle)
  for i, layer_type in enumerate(cfg.layer_types):
    for r in KEY_TABLE[layer_type]:
      entries.append(entry(f"{prefix}layers.{i}.{r.hf}", ("layers", i % period, *split(r.ours)),
                           i // period, r))
  entries += [entry(prefix + r.hf, split(r.ours), None, r) for r in KEY_TABLE["global"][1:]]
  if not cfg.tie_word_embeddings:
    entries += [entry(r.hf, split(r.ours), None, r) for r in KEY_TABLE["lm_head"]]
  return entries


def hf_to_ours(tensor: np.ndarray, e: KeyEntry) -> np.ndarray:
  """One HF tensor -> its slice of our parameter (transposed and reshaped by the entry's rule)."""
  if e.rule.transpose:
    tensor = tensor.T
  return tensor.reshape(e.our_shape)


def ours_to_hf(array: np.ndarray, e: KeyEntry) -> np.ndarray:
  """The inverse of `hf_to_ours`: our (unstacked) parameter value -> the HF tensor."""
  if e.rule.transpose:
    return np.ascontiguousarray(array.reshape(tuple(reversed(e.hf_shape))).T)
  return np.ascontiguousarray(array.reshape(e.hf_shape))


def flatten_state(state) -> dict[tuple, Any]:
  """An nnx.State as {path tuple: Variable} (the paths `key_entries` resolves against)."""
  return {tuple(path): var for path, var in nnx.to_flat_state(state)}


def abstract_model(cfg: ModelConfig) -> Qwen3_5ForCausalLM:
  """The model with ``jax.ShapeDtypeStruct`` leaves (no memory allocated)."""
  return nnx.eval_shape(lambda: Qwen3_5ForCausalLM(cfg, rngs=nnx.Rngs(0)))


class Reader:
  """Lazy access to the tensors of a single-file or sharded safetensors directory."""

  def __init__(self, path: str):
    index = os.path.join(path, INDEX_FILE)
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    elif os.path.exists(os.path.join(path, SINGLE_FILE)):
      with safe_open(os.path.join(path, SINGLE_FILE), "np") as f:
        weight_map = {k: SINGLE_FILE for k in f.keys()}
    else:
      raise FileNotFoundError(f"{path} has neither {SINGLE_FILE} nor {INDEX_FILE}")
    self.path, self.weight_map = path, weight_map
    self._open: dict[str, Any] = {}

  def keys(self) -> list[str]:
    return list(self.weight_map)

  def _file(self, key):
    name = self.weight_map[key]
    if name not in self._open:
      self._open[name] = safe_open(os.path.join(self.path, name), "np")
    return self._open[name]

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._file(key).get_slice(key).get_shape())

  def get(self, key: str) -> np.ndarray:
    return self._file(key).get_tensor(key)

  def close(self):
    for handle in self._open.values():
      handle.__exit__(None, None, None)
    self._open.clear()


def load_text_pretrained(path: str | os.PathLike, dtype: Any = jnp.float32,
                         mesh: jax.sharding.Mesh | None = None,
                         rules: parallel.Rules = parallel.TRAIN_RULES, *, param_dtype: Any = None,
                         **runtime) -> Qwen3_5ForCausalLM:
  """Loads the text decoder of a HF Qwen3.5 checkpoint directory as `Qwen3_5ForCausalLM`.

  Vision weights (`model.visual.*`) are skipped: `pretrained.load_pretrained` is the entry point
  that gives a vision-language model for them.

  Args:
    path: directory with ``config.json`` and ``model.safetensors`` or a sharded index.
    dtype: compute dtype (and storage dtype unless ``param_dtype`` is given).
    mesh: device mesh; each parameter is placed straight into its sharding under ``rules``.
      None puts everything on the default device.
    rules: logical-axis rule set (``parallel.TRAIN_RULES`` or ``parallel.SAMPLE_RULES``).
    param_dtype: storage dtype; default ``dtype``.
    **runtime: other runtime config fields (``scan_layers``, ``remat``, ``gdn_chunk_size``).

  Returns:
    The model.

  Raises:
    ValueError: unsupported config, a missing or unexpected tensor, or a shape mismatch, naming
      the key (and both shapes).
  """
  path = os.fspath(path)
  cfg = ModelConfig.from_hf(path, dtype=dtype,
                            param_dtype=dtype if param_dtype is None else param_dtype, **runtime)
  graphdef, abstract_state = nnx.split(abstract_model(cfg))
  flat_state = flatten_state(abstract_state)
  reader = Reader(path)
  keys = reader.keys()
  prefix = MULTIMODAL_PREFIX if any(k.startswith(MULTIMODAL_PREFIX) for k in keys) else TEXT_PREFIX
  entries = key_entries(cfg, flat_state, prefix)
  expected = {e.hf_key for e in entries}
  available = {k for k in keys if not k.startswith(SKIPPED_PREFIXES)}
  missing = sorted(expected - available)
  if missing:
    shapes = {e.hf_key: e.hf_shape for e in entries}
    raise ValueError(f"{path}: missing tensors " +
                     ", ".join(f"{k} (expected shape {shapes[k]})" for k in missing[:10]) +
                     (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
  extra = available - expected
  tied_head = "lm_head.weight" if cfg.tie_word_embeddings else None
  unexpected = sorted(extra - {tied_head})
  if unexpected:
    raise ValueError(f"{path}: unexpected tensors {unexpected[:10]}"
                     + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else ""))
  for e in entries:
    got = reader.shape(e.hf_key)
    if got != e.hf_shape:
      raise ValueError(f"{path}: tensor {e.hf_key} has shape {got} in the checkpoint but the "
                       f"config implies {e.hf_shape}")
  shardings = (None if mesh is None else
               flatten_state(parallel.state_shardings(abstract_state, mesh, rules)))

  by_path: dict[tuple, list[KeyEntry]] = {}
  for e in entries:
    by_path.setdefault(e.path, []).append(e)
  if set(by_path) != set(flat_state):
    # Every variable of the model must come from the checkpoint (no buffers, no RNG state).
    raise AssertionError("the key table does not cover the model's variables: "
                         f"{sorted(set(flat_state) ^ set(by_path))}")
  for p, param_entries in by_path.items():
    var = flat_state[p]
    aval = var.get_value()
    host = np.empty(aval.shape, np.dtype(aval.dtype))
    for e in param_entries:
      value = hf_to_ours(reader.get(e.hf_key), e)
      if e.stack_index is None:
        host[...] = value
      else:
        host[e.stack_index] = value
    if shardings is None:
      array = jax.device_put(host)
    else:
      sharding = shardings[p].get_value()
      array = jax.make_array_from_callback(host.shape, sharding, lambda idx, h=host: h[idx])
    flat_state[p] = var.replace(array)
    del host
  if tied_head in extra:
    _check_tied_head(reader, prefix, path)
  reader.close()
  state = nnx.from_flat_state(list(flat_state.items()))
  return nnx.merge(graphdef, state)


def _check_tied_head(reader: Reader, prefix: str, path: str):
  """A tied model's checkpoint may still store the LM head; it must equal the embedding."""
  if not np.array_equal(reader.get("lm_head.weight"), reader.get(prefix + "embed_tokens.weight")):
    raise ValueError(f"{path}: tie_word_embeddings is true but lm_head.weight differs from "
                     f"{prefix}embed_tokens.weight")


def host_value(array: jax.Array, index: int | None) -> np.ndarray:
  """A (possibly sharded) parameter, or its `index` on the stacked axis, as a host array."""
  if index is not None:
    array = array[index]
  if not array.is_fully_addressable:
    array = multihost_utils.process_allgather(array, tiled=True)
  return np.asarray(jax.device_get(array))


def _plan_shards(entries: list[KeyEntry], itemsize: int, max_shard_bytes: int
                 ) -> list[list[KeyEntry]]:
  shards, size = [[]], 0
  for e in entries:
    nbytes = math.prod(e.hf_shape) * itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(e)
    size += nbytes
  return shards


def save_text_pretrained(model: Qwen3_5ForCausalLM, out_dir: str | os.PathLike,
                         max_shard_bytes: int = 5 * 2**30, dtype: Any = None) -> list[str]:
  """Writes ``model`` as a HF ``Qwen3_5ForCausalLM`` checkpoint (config.json + safetensors).

  Args:
    model: our model (sharded or not).
    out_dir: output directory (created).
    max_shard_bytes: largest safetensors file; more than one file adds the index JSON.
    dtype: storage dtype of the written tensors; default the model's ``param_dtype``.

  Returns:
    The written file names. In a multi-process run every process must call this (the
    parameters are gathered collectively); only process 0 writes.
  """
  out_dir = os.fspath(out_dir)
  cfg = model.cfg
  dtype = np.dtype(cfg.param_dtype if dtype is None else dtype)
  flat_state = flatten_state(nnx.state(model, nnx.Param))
  entries = key_entries(cfg, flat_state, TEXT_PREFIX)
  shards = _plan_shards(entries, dtype.itemsize, max_shard_bytes)
  writer = jax.process_index() == 0
  if writer:
    os.makedirs(out_dir, exist_ok=True)
  names = ([SINGLE_FILE] if len(shards) == 1 else
           [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
  weight_map = {}
  for name, shard in zip(names, shards):
    tensors = {}
    for e in shard:
      value = host_value(flat_state[e.path].get_value(), e.stack_index)
      tensors[e.hf_key] = ours_to_hf(value.astype(dtype), e)
      weight_map[e.hf_key] = name
    if writer:
      save_file(tensors, os.path.join(out_dir, name), metadata={"format": "pt"})
    del tensors
  if writer:
    hf_config = cfg.to_hf()
    hf_config["dtype"] = dtype.name
    with open(os.path.join(out_dir, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    if len(shards) > 1:
      total = sum(math.prod(e.hf_shape) * dtype.itemsize for e in entries)
      with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return names + ["config.json"] + ([INDEX_FILE] if len(shards) > 1 else [])


def parameter_count(model_or_state) -> int:
  """Number of parameter elements (works on abstract models)."""
  state = nnx.state(model_or_state, nnx.Param)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(state))
