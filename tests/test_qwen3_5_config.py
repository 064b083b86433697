"""ModelConfig: HF round trips, strict field checking, validation and the presets."""
import json

import jax.numpy as jnp
import pytest
import transformers

from zppo_jax.models.qwen3_5 import config as config_lib
from zppo_jax.models.qwen3_5.config import ModelConfig

ALL_PRESETS = [config_lib.tiny, config_lib.bench_small, *config_lib.PRESETS.values()]


@pytest.mark.parametrize("preset", ALL_PRESETS, ids=lambda f: f.__name__)
def test_to_hf_from_hf_round_trip_through_transformers(preset):
  cfg = preset()
  hf_config = transformers.Qwen3_5TextConfig(**cfg.to_hf())
  again = ModelConfig.from_hf(hf_config.to_dict(), gdn_chunk_size=cfg.gdn_chunk_size)
  assert again == cfg


def test_transformers_defaults_are_read():
  cfg = ModelConfig.from_hf(transformers.Qwen3_5TextConfig().to_dict())
  assert cfg.hidden_size == 4096 and cfg.rope_theta == 10_000.0
  assert cfg.layer_types[:4] == ("linear_attention",) * 3 + ("full_attention",)
  # Every key of the multimodal config's full dict is handled or explicitly ignored too.
  assert ModelConfig.from_hf(transformers.Qwen3_5Config().to_dict()) == cfg


def test_nested_multimodal_config_and_top_level_tie(tmp_path):
  text = config_lib.tiny().to_hf()
  for tie in (True, False):
    hf = transformers.Qwen3_5Config(text_config={**text, "tie_word_embeddings": not tie},
                                    vision_config={"depth": 1}, tie_word_embeddings=tie)
    (tmp_path / "config.json").write_text(hf.to_json_string())
    cfg = ModelConfig.from_hf(tmp_path)   # a directory
    assert cfg.tie_word_embeddings == tie
    assert cfg.replace(tie_word_embeddings=False) == config_lib.tiny(gdn_chunk_size=64)


def test_published_style_text_config_is_accepted():
  # Fields the released config.json carries besides transformers' own.
  hf = config_lib.qwen3_5_9b().to_hf()
  hf.update(attn_output_gate=True, full_attention_interval=4, mtp_num_hidden_layers=1,
            mtp_use_dedicated_embeddings=False, mamba_ssm_dtype="float32",
            max_position_embeddings=262144, initializer_range=0.02, use_cache=True)
  assert ModelConfig.from_hf(hf) == config_lib.qwen3_5_9b()


def test_layer_types_from_full_attention_interval():
  hf = config_lib.tiny().to_hf()
  del hf["layer_types"]
  hf["full_attention_interval"] = 2
  assert ModelConfig.from_hf(hf).layer_types == config_lib.tiny().layer_types
  hf["full_attention_interval"] = 3
  hf["layer_types"] = list(config_lib.tiny().layer_types)
  with pytest.raises(ValueError, match="full_attention_interval"):
    ModelConfig.from_hf(hf)


@pytest.mark.parametrize("field,value,message", [
    ("some_new_field", 1, "some_new_field"),
    ("hidden_act", "gelu", "hidden_act"),
    ("attn_output_gate", False, "attn_output_gate"),
    ("attention_bias", True, "attention_bias"),
    ("rope_scaling", {"type": "yarn"}, "rope_scaling"),
])
def test_unknown_or_unsupported_fields_are_named(field, value, message):
  hf = config_lib.tiny().to_hf()
  hf[field] = value
  with pytest.raises(ValueError, match=message):
    ModelConfig.from_hf(hf)


def test_unsupported_rope_parameters_are_named():
  hf = config_lib.tiny().to_hf()
  hf["rope_parameters"] = {**hf["rope_parameters"], "rope_type": "yarn", "factor": 4.0}
  with pytest.raises(ValueError, match="factor") as err:
    ModelConfig.from_hf(hf)
  assert "yarn" in str(err.value)


def test_unknown_top_level_multimodal_field_is_named():
  hf = json.loads(transformers.Qwen3_5Config(text_config=config_lib.tiny().to_hf(),
                                             vision_config={"depth": 1}).to_json_string())
  hf["audio_config"] = {}
  with pytest.raises(ValueError, match="audio_config"):
    ModelConfig.from_hf(hf)


def test_wrong_model_type_is_rejected():
  with pytest.raises(ValueError, match="qwen3_next"):
    ModelConfig.from_hf({**config_lib.tiny().to_hf(), "model_type": "qwen3_next"})


@pytest.mark.parametrize("changes,message", [
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"linear_num_value_heads": 3}, "linear_num_value_heads"),
    ({"layer_types": ("linear_attention",) * 3}, "num_hidden_layers"),
    ({"layer_types": ("linear_attention", "sliding") * 2}, "sliding"),
    ({"mrope_section": (1, 1, 1)}, "mrope_section"),
    ({"mrope_interleaved": False}, "mrope_interleaved"),
    ({"remat": "everything"}, "remat"),
    ({"hidden_size": 0}, "hidden_size"),
])
def test_validation(changes, message):
  with pytest.raises(ValueError, match=message):
    config_lib.tiny(**changes)


def test_derived_sizes():
  cfg = config_lib.qwen3_5_27b()
  assert cfg.rotary_dim == 64
  assert cfg.gdn_key_dim == 16 * 128 and cfg.gdn_value_dim == 48 * 128
  assert cfg.gdn_conv_dim == 2 * 16 * 128 + 48 * 128
  assert cfg.cycle == ("linear_attention",) * 3 + ("full_attention",)
  assert cfg.num_cycles == 16
  assert cfg.q_per_kv == 6 and cfg.gdn_v_per_k == 3
  odd = config_lib.tiny(layer_types=("linear_attention", "full_attention", "full_attention",
                                     "linear_attention"))
  assert odd.cycle == odd.layer_types and odd.num_cycles == 1


def test_presets_match_published_table():
  rows = {  # hidden, intermediate, layers, heads, kv heads, gdn value heads, tied
      "qwen3_5_0_8b": (1024, 3584, 24, 8, 2, 16, True),
      "qwen3_5_2b": (2048, 6144, 24, 8, 2, 16, True),
      "qwen3_5_4b": (2560, 9216, 32, 16, 4, 32, True),
      "qwen3_5_9b": (4096, 12288, 32, 16, 4, 32, False),
      "qwen3_5_27b": (5120, 17408, 64, 24, 4, 48, False),
  }
  for name, row in rows.items():
    c = config_lib.PRESETS[name]()
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.linear_num_value_heads, c.tie_word_embeddings) == row
    assert (c.vocab_size, c.head_dim, c.linear_num_key_heads, c.rope_theta, c.eos_token_id) == (
        248320, 256, 16, 1e7, 248044)


def test_dtypes_are_normalised():
  assert config_lib.tiny(dtype="bfloat16") == config_lib.tiny(dtype=jnp.bfloat16)
  assert hash(config_lib.tiny(param_dtype="float32")) == hash(config_lib.tiny())
  assert config_lib.tiny(dtype=jnp.bfloat16).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="not a dtype"):
    config_lib.tiny(dtype="float-ish")
