"""HF checkpoint I/O: load/save parity with transformers, errors, full-size shapes, sharded loads."""
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from zppo_jax.models import qwen3_5
from zppo_jax.models.qwen3_5 import checkpoint
from zppo_jax.models.qwen3_5 import config as config_lib

UNTIED = config_lib.tiny()
TIED = config_lib.tiny(tie_word_embeddings=True, num_hidden_layers=6,
                       layer_types=("linear_attention", "linear_attention", "full_attention") * 2)
PUBLISHED_TOTALS = {
    "qwen3_5_0_8b": 752_393_024, "qwen3_5_2b": 1_881_825_088, "qwen3_5_4b": 4_205_751_296,
    "qwen3_5_9b": 8_953_803_264, "qwen3_5_27b": 26_895_998_464,
}
IDS = np.random.RandomState(0).randint(0, 128, (2, 12)).astype(np.int32)


def _hf_config(cfg):
  hf = cfg.to_hf()
  for key in ("architectures", "model_type", "dtype"):
    hf.pop(key)
  return transformers.Qwen3_5TextConfig(**hf)


def _randomise_norms(model, seed):
  """Non-trivial norm weights, so that a missed `1 +` or a swapped norm shows in the logits."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.add_(0.1 * torch.randn_like(p))
  return model


def _torch_logits(model, ids=IDS):
  with torch.no_grad():
    return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


@nnx.jit
def _logits(model, ids):
  return model(ids)


@pytest.fixture(scope="module", params=["untied", "tied"])
def hf_model(request, tmp_path_factory):
  """(config, transformers model, its single-file checkpoint dir, its reference logits)."""
  cfg = UNTIED if request.param == "untied" else TIED
  torch.manual_seed(1)
  model = _randomise_norms(transformers.Qwen3_5ForCausalLM(_hf_config(cfg)).eval(), 2)
  path = tmp_path_factory.mktemp(f"hf_{request.param}")
  model.save_pretrained(path)
  return cfg, model, path, _torch_logits(model)


def test_load_single_file_matches_transformers(hf_model):
  cfg, _, path, ref = hf_model
  model = qwen3_5.load_pretrained(path)
  assert model.cfg == cfg.replace(gdn_chunk_size=64)
  np.testing.assert_allclose(np.asarray(_logits(model, IDS)), ref, atol=1e-4, rtol=0)


def test_load_sharded_matches_transformers(hf_model, tmp_path):
  _, torch_model, _, ref = hf_model
  torch_model.save_pretrained(tmp_path, max_shard_size="20KB")
  assert os.path.exists(tmp_path / checkpoint.INDEX_FILE)
  model = qwen3_5.load_pretrained(tmp_path)
  np.testing.assert_allclose(np.asarray(_logits(model, IDS)), ref, atol=1e-4, rtol=0)


def test_save_loads_in_transformers(hf_model, tmp_path):
  cfg, _, _, _ = hf_model
  model = qwen3_5.Qwen3_5ForCausalLM(cfg, rngs=nnx.Rngs(3))
  # Move the norms away from their initial values, as in a trained model.
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if path[-2].endswith("norm"):
      var.set_value(var.get_value() + 0.1 * jax.random.normal(jax.random.key(len(path)),
                                                             var.get_value().shape))
  ours = np.asarray(_logits(model, IDS))
  for sub, shard_bytes in (("single", 2**30), ("sharded", 8000)):
    out = tmp_path / sub
    written = qwen3_5.save_pretrained(model, out, max_shard_bytes=shard_bytes)
    assert (checkpoint.INDEX_FILE in written) == (sub == "sharded")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded).__name__ == "Qwen3_5ForCausalLM"
    np.testing.assert_allclose(_torch_logits(loaded), ours, atol=1e-4, rtol=0)
  # Round trip through our own loader is exact.
  again = qwen3_5.load_pretrained(tmp_path / "sharded")
  for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                            nnx.to_flat_state(nnx.state(again, nnx.Param))):
    np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(p))


def test_save_bf16(tmp_path):
  model = qwen3_5.Qwen3_5ForCausalLM(UNTIED, rngs=nnx.Rngs(0))
  qwen3_5.save_pretrained(model, tmp_path, dtype=jnp.bfloat16)
  assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
  with safe_open(tmp_path / checkpoint.SINGLE_FILE, "np") as f:
    assert f.get_tensor("model.norm.weight").dtype == jnp.bfloat16
  loaded = qwen3_5.load_pretrained(tmp_path, dtype=jnp.bfloat16)
  assert loaded.embed_tokens.embedding[...].dtype == jnp.bfloat16


def test_multimodal_checkpoint_skips_vision_and_mtp(tmp_path):
  torch.manual_seed(4)
  config = transformers.Qwen3_5Config(
      text_config=_hf_config(UNTIED).to_dict(), tie_word_embeddings=False,
      vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
                     "out_hidden_size": UNTIED.hidden_size})
  full = _randomise_norms(transformers.Qwen3_5ForConditionalGeneration(config).eval(), 5)
  full.save_pretrained(tmp_path, max_shard_size="50KB")
  index_path = tmp_path / checkpoint.INDEX_FILE
  index = json.loads(index_path.read_text())
  assert any(k.startswith("model.visual.") for k in index["weight_map"])
  # Released checkpoints also carry a multi-token-prediction head.
  save_file({"mtp.fc.weight": np.ones((4, 4), np.float32)}, tmp_path / "mtp.safetensors",
            metadata={"format": "pt"})
  index["weight_map"]["mtp.fc.weight"] = "mtp.safetensors"
  index_path.write_text(json.dumps(index))
  model = qwen3_5.load_pretrained(tmp_path, text_only=True)
  assert isinstance(model, qwen3_5.Qwen3_5ForCausalLM)
  with torch.no_grad():
    ref = full(input_ids=torch.tensor(IDS, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(np.asarray(_logits(model, IDS)), ref, atol=1e-4, rtol=0)
  # Without `text_only`, vision weights give the vision-language model.
  multimodal = qwen3_5.load_pretrained(tmp_path)
  assert isinstance(multimodal, qwen3_5.Qwen3_5ForConditionalGeneration)
  np.testing.assert_allclose(np.asarray(multimodal(np.asarray(IDS))), ref, atol=1e-4, rtol=0)


def _rewrite(src, dst, edit):
  """Copies a single-file checkpoint, applying `edit(dict of tensors)`."""
  os.makedirs(dst, exist_ok=True)
  with safe_open(src / checkpoint.SINGLE_FILE, "np") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  edit(tensors)
  save_file(tensors, dst / checkpoint.SINGLE_FILE, metadata={"format": "pt"})
  (dst / "config.json").write_text((src / "config.json").read_text())
  return dst


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory):
  torch.manual_seed(0)
  path = tmp_path_factory.mktemp("untied_plain")
  transformers.Qwen3_5ForCausalLM(_hf_config(UNTIED)).save_pretrained(path)
  return path


def test_missing_tensor_is_named(untied_dir, tmp_path):
  key = "model.layers.1.self_attn.k_proj.weight"
  path = _rewrite(untied_dir, tmp_path, lambda t: t.pop(key))
  with pytest.raises(ValueError, match=rf"missing tensors {key} \(expected shape \(32, 32\)\)"):
    qwen3_5.load_pretrained(path)


def test_wrong_shape_is_named(untied_dir, tmp_path):
  key = "model.layers.2.linear_attn.conv1d.weight"
  path = _rewrite(untied_dir, tmp_path, lambda t: t.update({key: np.zeros((64, 1, 3), "f4")}))
  with pytest.raises(ValueError, match=rf"{key} has shape \(64, 1, 3\) .* implies \(64, 1, 4\)"):
    qwen3_5.load_pretrained(path)


def test_unexpected_tensor_is_named(untied_dir, tmp_path):
  key = "model.layers.0.self_attn.q_proj.bias"
  path = _rewrite(untied_dir, tmp_path, lambda t: t.update({key: np.zeros((4,), "f4")}))
  with pytest.raises(ValueError, match=rf"unexpected tensors \['{key}'\]"):
    qwen3_5.load_pretrained(path)


def test_tied_checkpoint_with_different_lm_head_is_refused(untied_dir, tmp_path):
  path = _rewrite(untied_dir, tmp_path, lambda t: None)
  (path / "config.json").write_text(json.dumps(
      {**json.loads((untied_dir / "config.json").read_text()), "tie_word_embeddings": True}))
  with pytest.raises(ValueError, match="lm_head.weight differs"):
    qwen3_5.load_pretrained(path)


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTALS))
def test_full_size_shapes_and_parameter_counts(name):
  cfg = config_lib.PRESETS[name]()
  abstract = jax.eval_shape(lambda: nnx.state(qwen3_5.abstract_model(cfg), nnx.Param))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract)) == PUBLISHED_TOTALS[name]
  assert qwen3_5.parameter_count(qwen3_5.abstract_model(cfg)) == PUBLISHED_TOTALS[name]


@pytest.mark.parametrize("name", ["qwen3_5_0_8b", "qwen3_5_27b"])
def test_key_table_matches_transformers_at_full_size(name):
  cfg = config_lib.PRESETS[name]()
  with torch.device("meta"):
    hf = transformers.Qwen3_5ForCausalLM(_hf_config(cfg))
  hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
  if cfg.tie_word_embeddings:
    hf_shapes.pop("lm_head.weight")
  flat = dict(nnx.to_flat_state(nnx.state(qwen3_5.abstract_model(cfg), nnx.Param)))
  entries = checkpoint.key_entries(cfg, flat, checkpoint.TEXT_PREFIX)
  assert {e.hf_key: e.hf_shape for e in entries} == hf_shapes


def _eight_device_check(path):
  """Loads `path` on one device and under a (2, 2, 2) mesh; compares logits and layouts."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from zppo_jax import parallel  # pylint: disable=import-outside-toplevel
  assert jax.device_count() == 8
  jax.config.update("jax_default_matmul_precision", "highest")
  ids = np.concatenate([IDS, IDS[:, ::-1]])   # batch 4: split over data x fsdp
  single = np.asarray(_logits(qwen3_5.load_pretrained(path), ids))
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  model = qwen3_5.load_pretrained(path, mesh=mesh, rules=parallel.TRAIN_RULES)
  expected = {
      "embed_tokens.embedding": P("tensor", "fsdp"),
      "layers.0.mlp.gate_proj.kernel": P(None, "fsdp", "tensor"),
      "layers.0.mlp.down_proj.kernel": P(None, "tensor", "fsdp"),
      "layers.0.linear_attn.in_proj_qkv.kernel": P(None, "fsdp", "tensor"),
      "layers.0.linear_attn.A_log": P(None, "tensor"),
      "layers.0.input_layernorm.weight": P(None, None),
      "layers.1.self_attn.q_proj.kernel": P(None, "fsdp", "tensor"),
      "layers.1.self_attn.o_proj.kernel": P(None, "tensor", "fsdp"),
      "lm_head.kernel": P("fsdp", "tensor"),
  }
  flat = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  for name, spec in expected.items():
    array = flat[name].get_value()
    assert array.sharding.spec == spec and array.sharding.mesh == mesh, (name, array.sharding)
  with jax.set_mesh(mesh):
    ids = jax.device_put(ids, jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), None)))
    sharded = np.asarray(_logits(model, ids))
  np.testing.assert_allclose(sharded, single, atol=1e-5, rtol=0)
  # Saving gathers the sharded parameters back to exactly the loaded values.
  with tempfile.TemporaryDirectory() as out:
    qwen3_5.save_pretrained(model, out, max_shard_bytes=30_000)
    with safe_open(os.path.join(path, checkpoint.SINGLE_FILE), "np") as f:
      original = {k: f.get_tensor(k) for k in f.keys()}
    again = checkpoint.Reader(out)
    assert sorted(again.keys()) == sorted(original)
    for key, value in original.items():
      np.testing.assert_array_equal(again.get(key), value, err_msg=key)
  sample = qwen3_5.load_pretrained(path, mesh=mesh, rules=parallel.SAMPLE_RULES)
  assert sample.layers[0].mlp.gate_proj.kernel[...].sharding.spec == P(None, None, "tensor")
  print("EIGHT DEVICE CHECKS OK")


def test_sharded_load_on_eight_simulated_devices(untied_dir):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": os.path.join(root, ".jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
         "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
  run = subprocess.run([sys.executable, __file__, str(untied_dir)], env=env, capture_output=True,
                       text=True, timeout=600)
  assert "EIGHT DEVICE CHECKS OK" in run.stdout, run.stdout + run.stderr[-5000:]


if __name__ == "__main__":
  import pathlib  # pylint: disable=import-outside-toplevel
  _eight_device_check(pathlib.Path(sys.argv[1]))
