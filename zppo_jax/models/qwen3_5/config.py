"""Configuration of the Qwen3.5 text decoder: one frozen dataclass, presets and strict HF interop.

Field names follow transformers' ``Qwen3_5TextConfig`` so that a value can be looked up in a
published ``config.json`` by name. The rotary parameters that HF nests in ``rope_parameters`` are
flattened here (``rope_theta``, ``partial_rotary_factor``, ``mrope_section``, ``mrope_interleaved``).

``ModelConfig.from_hf`` refuses any HF field it does not handle: a silently ignored field is the
classic porting bug. Fields that provably do not change the text model's numbers (bookkeeping,
the vision tower, the multi-token-prediction head we skip) are listed in ``IGNORED_*`` sets; fields
that change the numbers but are only supported with one value (``hidden_act`` must be ``silu``,
``attn_output_gate`` must be true, ...) are checked against that value.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Literal, Mapping

import jax.numpy as jnp

LayerType = Literal["linear_attention", "full_attention"]
LAYER_TYPES = ("linear_attention", "full_attention")
REMAT_POLICIES = ("none", "full", "dots")

# Keys any transformers `PreTrainedConfig.to_dict()` writes that do not affect the model's math.
IGNORED_COMMON_FIELDS = frozenset({
    "transformers_version", "architectures", "output_hidden_states", "output_attentions",
    "return_dict", "dtype", "torch_dtype", "chunk_size_feed_forward", "is_encoder_decoder",
    "id2label", "label2id", "problem_type", "_name_or_path", "use_cache", "initializer_range",
    "tokenizer_class", "_attn_implementation_autoset",
})
# Text-config keys without effect on the text model's logits. `max_position_embeddings` only sizes
# HF's rotary cache (default rope has no length scaling); the MTP head is skipped on load.
IGNORED_TEXT_FIELDS = frozenset({
    "max_position_embeddings", "mtp_num_hidden_layers", "mtp_use_dedicated_embeddings",
})
# Top-level keys of a multimodal `qwen3_5` config.json that do not affect the text model.
IGNORED_MULTIMODAL_FIELDS = frozenset({
    "vision_config", "image_token_id", "video_token_id", "vision_start_token_id",
    "vision_end_token_id",
})
# HF fields that change the numbers and that we support with exactly one value.
REQUIRED_HF_VALUES: Mapping[str, Any] = {
    "hidden_act": "silu",
    "attn_output_gate": True,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mamba_ssm_dtype": "float32",
}
_ROPE_KEYS = frozenset({
    "rope_type", "rope_theta", "partial_rotary_factor", "mrope_section", "mrope_interleaved",
})
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Qwen3.5 dense text decoder (hybrid Gated DeltaNet + gated full attention).

  Dimension letters used across the model: D ``hidden_size``, F ``intermediate_size``, V
  ``vocab_size``, N ``num_attention_heads``, K ``num_key_value_heads``, H ``head_dim``; for the
  Gated DeltaNet (GDN) layers Hk ``linear_num_key_heads`` of dim Dk ``linear_key_head_dim`` and Hv
  ``linear_num_value_heads`` of dim Dv ``linear_value_head_dim``.

  Attributes:
    vocab_size: V, rows of the embedding (and LM head).
    hidden_size: D.
    intermediate_size: F of the SwiGLU MLP.
    num_hidden_layers: number of decoder layers; equals ``len(layer_types)``.
    layer_types: per layer, "linear_attention" (GDN) or "full_attention".
    num_attention_heads: N query heads of the full-attention layers.
    num_key_value_heads: K key/value heads (GQA); N % K == 0.
    head_dim: H of the full-attention layers.
    linear_num_key_heads: Hk, GDN query/key heads.
    linear_num_value_heads: Hv, GDN value heads; Hv % Hk == 0.
    linear_key_head_dim: Dk.
    linear_value_head_dim: Dv.
    linear_conv_kernel_dim: width of the causal depthwise convolution of the GDN layers.
    rope_theta: rotary base.
    partial_rotary_factor: fraction of ``head_dim`` that is rotated.
    mrope_section: rotary frequency pairs per position axis (t, h, w); sums to rotary_dim / 2.
    mrope_interleaved: frequencies of the three axes interleaved (the only layout HF implements).
    rms_norm_eps: epsilon of every RMSNorm.
    tie_word_embeddings: LM head is the transposed embedding.
    eos_token_id: end-of-sequence id(s), or None.
    pad_token_id: padding id, or None.
    bos_token_id: beginning-of-sequence id, or None.
    dtype: compute dtype of activations and matmuls.
    param_dtype: storage dtype of the parameters.
    scan_layers: run the repetitions of the layer cycle with ``jax.lax.scan`` over the stacked
      parameters in passes without a cache (training, scoring); False unrolls them. Passes with a
      cache (prefill, decode) are always unrolled.
    remat: rematerialisation policy per scanned cycle: "none", "full" or "dots" (save matmul
      outputs, recompute the rest).
    gdn_chunk_size: chunk length of the chunked delta rule (training and prefill).
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  layer_types: tuple[LayerType, ...]
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  linear_num_key_heads: int
  linear_num_value_heads: int
  linear_key_head_dim: int
  linear_value_head_dim: int
  linear_conv_kernel_dim: int = 4
  rope_theta: float = 10_000_000.0
  partial_rotary_factor: float = 0.25
  mrope_section: tuple[int, int, int] = (11, 11, 10)
  mrope_interleaved: bool = True
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None
  bos_token_id: int | None = None
  # Runtime fields (not part of the HF config).
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan_layers: bool = True
  remat: str = "none"
  gdn_chunk_size: int = 64

  def __post_init__(self):
    object.__setattr__(self, "layer_types", tuple(self.layer_types))
    object.__setattr__(self, "mrope_section", tuple(int(s) for s in self.mrope_section))
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    errors = []
    positive = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "linear_num_key_heads",
                "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
                "linear_conv_kernel_dim", "gdn_chunk_size")
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        errors.append(f"{name} must be a positive int, got {value!r}")
    if errors:
      raise ValueError("invalid ModelConfig: " + "; ".join(errors))
    if len(self.layer_types) != self.num_hidden_layers:
      errors.append(f"len(layer_types)={len(self.layer_types)} != "
                    f"num_hidden_layers={self.num_hidden_layers}")
    bad = sorted({t for t in self.layer_types if t not in LAYER_TYPES})
    if bad:
      errors.append(f"unknown layer_types {bad}; expected {LAYER_TYPES}")
    if self.num_attention_heads % self.num_key_value_heads:
      errors.append(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                    f"num_key_value_heads={self.num_key_value_heads}")
    if self.linear_num_value_heads % self.linear_num_key_heads:
      errors.append(f"linear_num_value_heads={self.linear_num_value_heads} is not a multiple of "
                    f"linear_num_key_heads={self.linear_num_key_heads}")
    if not 0.0 < self.partial_rotary_factor <= 1.0:
      errors.append(f"partial_rotary_factor={self.partial_rotary_factor} not in (0, 1]")
    elif self.rotary_dim % 2 or self.rotary_dim == 0:
      errors.append(f"rotary dim head_dim*partial_rotary_factor={self.rotary_dim} must be even "
                    "and positive")
    if len(self.mrope_section) != 3 or sum(self.mrope_section) != self.rotary_dim // 2:
      errors.append(f"mrope_section={self.mrope_section} must have 3 entries summing to "
                    f"rotary_dim/2={self.rotary_dim // 2}")
    if not self.mrope_interleaved:
      errors.append("mrope_interleaved=False is not supported (transformers' Qwen3.5 always "
                    "interleaves)")
    if self.rope_theta <= 0:
      errors.append(f"rope_theta={self.rope_theta} must be positive")
    if self.rms_norm_eps <= 0:
      errors.append(f"rms_norm_eps={self.rms_norm_eps} must be positive")
    if self.remat not in REMAT_POLICIES:
      errors.append(f"remat={self.remat!r} not in {REMAT_POLICIES}")
    for name in ("dtype", "param_dtype"):
      try:
        # Normalised to a numpy dtype so that equal configs compare (and hash) equal.
        object.__setattr__(self, name, jnp.dtype(getattr(self, name)))
      except TypeError:
        errors.append(f"{name}={getattr(self, name)!r} is not a dtype")
    if errors:
      raise ValueError("invalid ModelConfig: " + "; ".join(errors))

  # ----- derived sizes -----
  @property
  def rotary_dim(self) -> int:
    """Rotated dims per attention head (64 of 256 for the released models)."""
    return int(self.head_dim * self.partial_rotary_factor)

  @property
  def q_per_kv(self) -> int:
    """Query heads per key/value head (GQA group size)."""
    return self.num_attention_heads // self.num_key_value_heads

  @property
  def gdn_key_dim(self) -> int:
    """Hk * Dk, width of the GDN query and of the GDN key projections."""
    return self.linear_num_key_heads * self.linear_key_head_dim

  @property
  def gdn_value_dim(self) -> int:
    """Hv * Dv, width of the GDN value projection (and of the output gate z)."""
    return self.linear_num_value_heads * self.linear_value_head_dim

  @property
  def gdn_conv_dim(self) -> int:
    """Channels C of the causal conv: q, k and v concatenated (2 * Hk * Dk + Hv * Dv)."""
    return 2 * self.gdn_key_dim + self.gdn_value_dim

  @property
  def gdn_v_per_k(self) -> int:
    """GDN value heads per key head."""
    return self.linear_num_value_heads // self.linear_num_key_heads

  @property
  def cycle(self) -> tuple[LayerType, ...]:
    """Shortest repeating prefix of ``layer_types`` (e.g. 3 GDN + 1 attention)."""
    n = self.num_hidden_layers
    for p in range(1, n + 1):
      if n % p == 0 and self.layer_types == self.layer_types[:p] * (n // p):
        return self.layer_types[:p]
    raise AssertionError("unreachable")

  @property
  def num_cycles(self) -> int:
    """How many times ``cycle`` repeats."""
    return self.num_hidden_layers // len(self.cycle)

  @property
  def stop_token_ids(self) -> tuple[int, ...]:
    """``eos_token_id`` as a tuple (empty when unset)."""
    if self.eos_token_id is None:
      return ()
    if isinstance(self.eos_token_id, int):
      return (self.eos_token_id,)
    return tuple(self.eos_token_id)

  def replace(self, **changes) -> "ModelConfig":
    """A copy with some fields changed (validated again)."""
    return dataclasses.replace(self, **changes)

  # ----- HF interop -----
  @classmethod
  def from_hf(cls, config: Mapping[str, Any] | str | os.PathLike, **runtime) -> "ModelConfig":
    """Reads a HF ``qwen3_5_text`` config or the ``text_config`` of a ``qwen3_5`` config.

    Args:
      config: a dict (``config.json`` contents or ``PreTrainedConfig.to_dict()``), a path to a
        ``config.json``, or a directory containing one.
      **runtime: runtime fields (``dtype``, ``param_dtype``, ``scan_layers``, ``remat``,
        ``gdn_chunk_size``).

    Returns:
      The config.

    Raises:
      ValueError: naming every HF field that is unknown or set to an unsupported value.
    """
    if not isinstance(config, Mapping):
      if hasattr(config, "to_dict"):
        config = config.to_dict()
      else:
        path = os.fspath(config)
        if os.path.isdir(path):
          path = os.path.join(path, "config.json")
        with open(path) as f:
          config = json.load(f)
    config = dict(config)
    model_type = config.get("model_type", "qwen3_5_text")
    if model_type == "qwen3_5":
      outer = config
      if "text_config" not in outer:
        raise ValueError("qwen3_5 config has no text_config")
      unknown = sorted(set(outer) - IGNORED_COMMON_FIELDS - IGNORED_MULTIMODAL_FIELDS
                       - {"text_config", "model_type", "tie_word_embeddings"})
      if unknown:
        raise ValueError(f"unknown fields in qwen3_5 config: {unknown}")
      text = dict(outer["text_config"])
      # transformers ties the multimodal model's LM head from the top-level flag.
      if "tie_word_embeddings" in outer:
        text["tie_word_embeddings"] = outer["tie_word_embeddings"]
      text.setdefault("model_type", "qwen3_5_text")
      return cls._from_text_dict(text, runtime)
    if model_type != "qwen3_5_text":
      raise ValueError(f"model_type={model_type!r}: expected 'qwen3_5_text' or 'qwen3_5'")
    return cls._from_text_dict(config, runtime)

  @classmethod
  def _from_text_dict(cls, hf: dict[str, Any], runtime: dict[str, Any]) -> "ModelConfig":
    hf = dict(hf)
    model_type = hf.pop("model_type", "qwen3_5_text")
    if model_type != "qwen3_5_text":
      raise ValueError(f"text_config model_type={model_type!r}: expected 'qwen3_5_text'")
    errors = []
    for key, want in REQUIRED_HF_VALUES.items():
      if key in hf:
        got = hf.pop(key)
        if got != want:
          errors.append(f"{key}={got!r} (only {want!r} is supported)")
    rope = dict(hf.pop("rope_parameters", None) or {})
    # Older configs put rope fields at the top level; accept them when they do not conflict.
    for key in ("rope_theta", "partial_rotary_factor", "rope_type"):
      if key in hf:
        value = hf.pop(key)
        if key in rope and rope[key] != value:
          errors.append(f"{key}={value!r} conflicts with rope_parameters[{key!r}]={rope[key]!r}")
        rope.setdefault(key, value)
    if hf.pop("rope_scaling", None) is not None:
      errors.append("rope_scaling is not supported")
    unknown_rope = sorted(set(rope) - _ROPE_KEYS)
    if unknown_rope:
      errors.append(f"unknown rope_parameters fields {unknown_rope}")
    if rope.get("rope_type", "default") != "default":
      errors.append(f"rope_parameters.rope_type={rope['rope_type']!r} (only 'default')")
    for key in IGNORED_COMMON_FIELDS | IGNORED_TEXT_FIELDS:
      hf.pop(key, None)
    interval = hf.pop("full_attention_interval", None)
    names = {f.name for f in dataclasses.fields(cls)} - set(_RUNTIME_FIELDS)
    names -= {"rope_theta", "partial_rotary_factor", "mrope_section", "mrope_interleaved"}
    unknown = sorted(set(hf) - names)
    if unknown:
      errors.append(f"unknown fields {unknown}")
    if errors:
      raise ValueError("unsupported Qwen3.5 text config: " + "; ".join(errors))
    kwargs = {k: hf[k] for k in names if k in hf}
    if kwargs.get("layer_types") is not None and interval is not None:
      if tuple(kwargs["layer_types"]) != _layer_pattern(len(kwargs["layer_types"]), interval):
        raise ValueError(f"full_attention_interval={interval} contradicts layer_types")
    kwargs["rope_theta"] = float(rope.get("rope_theta", 10_000.0))
    kwargs["partial_rotary_factor"] = float(rope.get("partial_rotary_factor", 0.25))
    kwargs["mrope_section"] = tuple(rope.get("mrope_section", (11, 11, 10)))
    kwargs["mrope_interleaved"] = bool(rope.get("mrope_interleaved", True))
    for key in runtime:
      if key not in _RUNTIME_FIELDS:
        raise ValueError(f"{key!r} is not a runtime field; runtime fields are {_RUNTIME_FIELDS}")
    for key, value in _HF_DEFAULTS.items():
      kwargs.setdefault(key, value)
    if kwargs.get("layer_types") is None:
      kwargs["layer_types"] = _layer_pattern(kwargs["num_hidden_layers"], interval or 4)
    return cls(**kwargs, **runtime)

  def to_hf(self) -> dict[str, Any]:
    """The HF ``qwen3_5_text`` config dict (what ``Qwen3_5ForCausalLM`` reads from config.json)."""
    return {
        "architectures": ["Qwen3_5ForCausalLM"],
        "model_type": "qwen3_5_text",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_hidden_layers,
        "layer_types": list(self.layer_types),
        "num_attention_heads": self.num_attention_heads,
        "num_key_value_heads": self.num_key_value_heads,
        "head_dim": self.head_dim,
        "linear_num_key_heads": self.linear_num_key_heads,
        "linear_num_value_heads": self.linear_num_value_heads,
        "linear_key_head_dim": self.linear_key_head_dim,
        "linear_value_head_dim": self.linear_value_head_dim,
        "linear_conv_kernel_dim": self.linear_conv_kernel_dim,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": self.rope_theta,
            "partial_rotary_factor": self.partial_rotary_factor,
            "mrope_section": list(self.mrope_section),
            "mrope_interleaved": self.mrope_interleaved,
        },
        "rms_norm_eps": self.rms_norm_eps,
        "tie_word_embeddings": self.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "eos_token_id": (list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
                         else self.eos_token_id),
        "pad_token_id": self.pad_token_id,
        "bos_token_id": self.bos_token_id,
        "dtype": jnp.dtype(self.param_dtype).name,
    }


_RUNTIME_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat", "gdn_chunk_size")
# `Qwen3_5TextConfig` defaults, used for fields a HF dict leaves out.
_HF_DEFAULTS = dict(
    vocab_size=248_320, hidden_size=4096, intermediate_size=12_288, num_hidden_layers=32,
    num_attention_heads=16, num_key_value_heads=4, head_dim=256, linear_conv_kernel_dim=4,
    linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
    linear_num_value_heads=32, rms_norm_eps=1e-6, tie_word_embeddings=False)


def _layer_pattern(num_layers: int, interval: int = 4) -> tuple[LayerType, ...]:
  """`interval - 1` GDN layers then one full-attention layer, repeated."""
  return tuple("full_attention" if (i + 1) % interval == 0 else "linear_attention"
               for i in range(num_layers))


def _released(hidden, intermediate, layers, heads, kv_heads, gdn_v_heads, tied,
              **runtime) -> ModelConfig:
  return ModelConfig(
      vocab_size=248_320, hidden_size=hidden, intermediate_size=intermediate,
      num_hidden_layers=layers, layer_types=_layer_pattern(layers),
      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=256,
      linear_num_key_heads=16, linear_num_value_heads=gdn_v_heads, linear_key_head_dim=128,
      linear_value_head_dim=128, linear_conv_kernel_dim=4, rope_theta=10_000_000.0,
      partial_rotary_factor=0.25, mrope_section=(11, 11, 10), mrope_interleaved=True,
      rms_norm_eps=1e-6, tie_word_embeddings=tied, eos_token_id=248_044, **runtime)


def qwen3_5_0_8b(**runtime) -> ModelConfig:
  """Qwen3.5-0.8B language model (752,393,024 parameters)."""
  return _released(1024, 3584, 24, 8, 2, 16, tied=True, **runtime)


def qwen3_5_2b(**runtime) -> ModelConfig:
  """Qwen3.5-2B language model (1,881,825,088 parameters)."""
  return _released(2048, 6144, 24, 8, 2, 16, tied=True, **runtime)


def qwen3_5_4b(**runtime) -> ModelConfig:
  """Qwen3.5-4B language model (4,205,751,296 parameters)."""
  return _released(2560, 9216, 32, 16, 4, 32, tied=True, **runtime)


def qwen3_5_9b(**runtime) -> ModelConfig:
  """Qwen3.5-9B language model (8,953,803,264 parameters)."""
  return _released(4096, 12288, 32, 16, 4, 32, tied=False, **runtime)


def qwen3_5_27b(**runtime) -> ModelConfig:
  """Qwen3.5-27B language model (26,895,998,464 parameters)."""
  return _released(5120, 17408, 64, 24, 4, 48, tied=False, **runtime)


PRESETS = {
    "qwen3_5_0_8b": qwen3_5_0_8b, "qwen3_5_2b": qwen3_5_2b, "qwen3_5_4b": qwen3_5_4b,
    "qwen3_5_9b": qwen3_5_9b, "qwen3_5_27b": qwen3_5_27b,
}


def tiny(**overrides) -> ModelConfig:
  """A 2-cycle tiny model for tests (GQA 2:1, GDN 2 key / 4 value heads, 25% rotary)."""
  fields = dict(
      vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
      layer_types=_layer_pattern(4, 2), num_attention_heads=4, num_key_value_heads=2,
      head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
      linear_value_head_dim=8, linear_conv_kernel_dim=4, rope_theta=10_000.0,
      partial_rotary_factor=0.25, mrope_section=(1, 1, 0), mrope_interleaved=True,
      rms_norm_eps=1e-6, tie_word_embeddings=False, gdn_chunk_size=8)
  fields.update(overrides)
  return ModelConfig(**fields)


def bench_small(**runtime) -> ModelConfig:
  """The "bench-small" model of shared/BENCH.md (43.5 M parameters, tied embeddings)."""
  return ModelConfig(
      vocab_size=32_000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
      layer_types=_layer_pattern(8), num_attention_heads=8, num_key_value_heads=2, head_dim=64,
      linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=64,
      linear_value_head_dim=64, linear_conv_kernel_dim=4, rope_theta=10_000_000.0,
      partial_rotary_factor=0.25, mrope_section=(2, 3, 3), mrope_interleaved=True,
      rms_norm_eps=1e-6, tie_word_embeddings=True, **runtime)
