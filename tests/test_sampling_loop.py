"""The rollout loop and the host Sampler on tiny random models: greedy tokens equal transformers'
`generate`, cache equivalence, log-probs against a teacher-forced forward, prefix sharing, stops,
no recompiles.

The model is a random transformers `Qwen3_5ForCausalLM` saved with `save_pretrained` and loaded
with our loader. Most generate calls use 4 rows and prompts of at most 16 tokens (one prompt
bucket, one capacity bucket), so the module compiles few programs.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from zppo_jax.models import qwen3_5
from zppo_jax.models.qwen3_5.cache import init_cache
from zppo_jax.sampling import Sampler, SamplingParams
from zppo_jax.sampling import loop as rollout

PROMPTS = [[3, 17, 29], [5, 6, 7, 8, 9, 10, 11], [100], [42, 1, 99, 12, 64]]
NEW = 12
CONFIGS = {
    "untied": qwen3_5.tiny(),
    "tied": qwen3_5.tiny(tie_word_embeddings=True, num_hidden_layers=6, hidden_size=48,
                         layer_types=("linear_attention", "linear_attention",
                                      "full_attention") * 2),
}


def _hf_pair(name, directory):
  """A random transformers model (norm weights perturbed too) and ours loaded from its save."""
  hf = CONFIGS[name].to_hf()
  for key in ("architectures", "model_type", "dtype"):
    hf.pop(key)
  torch.manual_seed(len(name))
  reference = transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig(**hf)).eval()
  with torch.no_grad():
    for param_name, p in reference.named_parameters():
      if param_name.endswith("norm.weight"):
        p.add_(0.1 * torch.randn_like(p))
  reference.save_pretrained(directory)
  return reference, qwen3_5.load_pretrained(directory, gdn_chunk_size=4)


@pytest.fixture(scope="module")
def hf_and_model(tmp_path_factory):
  return _hf_pair("untied", tmp_path_factory.mktemp("untied"))


@pytest.fixture(scope="module")
def model(hf_and_model):
  return hf_and_model[1]


@pytest.fixture(scope="module")
def sampler(model):
  return Sampler(model, max_total_len=64)


@pytest.fixture(scope="module")
def forward(model):
  """Jitted full forward (no cache) of a left-padded batch -> log-softmax float32[B, T, V]."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, ids, mask):
    logits = nnx.merge(graphdef, state)(ids, attention_mask=mask)
    return jax.nn.log_softmax(logits, axis=-1)

  return lambda ids, mask: np.asarray(run(state, ids, mask))


def _left_pad(rows, width):
  ids = np.zeros((len(rows), width), np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    ids[i, width - len(r):] = r
    mask[i, width - len(r):] = 1
  return ids, mask


def _teacher_forced(forward, prompts, completions, temperature=1.0):
  """Per completion, log-probs of its tokens from one uncached forward over prompt + completion."""
  rows = [p + c for p, c in zip(prompts, completions)]
  width = 32
  ids, mask = _left_pad(rows, width)
  logp = forward(ids, mask)
  out = []
  for i, (p, c) in enumerate(zip(prompts, completions)):
    start = width - len(c) - 1  # position predicting the first completion token
    out.append(np.array([logp[i, start + j, t] for j, t in enumerate(c)]))
  return out


def _hf_greedy(reference, prompts, new):
  """transformers' greedy `generate`, one unpadded prompt at a time."""
  out = []
  with torch.no_grad():
    for p in prompts:
      ids = reference.generate(torch.tensor([p]), do_sample=False, max_new_tokens=new,
                               min_new_tokens=new, pad_token_id=0)
      out.append(ids[0, len(p):].tolist())
  return out


def test_greedy_equals_transformers_generate(hf_and_model, sampler):
  reference, _ = hf_and_model
  out = sampler.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=NEW))
  assert [t[0] for t in out.tokens] == _hf_greedy(reference, PROMPTS, NEW)


def test_greedy_equals_transformers_generate_tied_model(tmp_path):
  """Another config (tied head, 3-layer cycle, other widths), 3 prompts x 2 samples."""
  reference, ours = _hf_pair("tied", tmp_path)
  prompts = [[9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12, 13], [50, 60], [1, 2, 3, 4]]
  out = Sampler(ours, max_total_len=64).generate(
      prompts, SamplingParams(temperature=0.0, max_new_tokens=NEW, num_samples=2))
  expected = _hf_greedy(reference, prompts, NEW)
  assert out.tokens == [[e, e] for e in expected]


def test_greedy_equals_step_by_step_argmax_of_the_full_forward(sampler, forward):
  out = sampler.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=NEW))
  rows = [list(p) for p in PROMPTS]
  for _ in range(NEW):
    ids, mask = _left_pad(rows, 32)
    nxt = forward(ids, mask)[:, -1].argmax(-1)
    rows = [r + [int(t)] for r, t in zip(rows, nxt)]
  expected = [r[len(p):] for r, p in zip(rows, PROMPTS)]
  assert [t[0] for t in out.tokens] == expected
  assert out.finish_reasons == [["length"]] * 4 and out.lengths == [[NEW]] * 4
  np.testing.assert_array_equal(np.concatenate(out.sampling_logprobs[0]), 0.0)


def test_cache_equivalence_prefill_then_decode_equals_full_forward(model):
  """Left-padded prefill + N one-token steps give the full forward's logits (1e-4)."""
  cfg = model.cfg
  full = [[4, 8, 15, 16, 23, 42, 7, 9], [1, 2, 3, 4, 5, 6, 7, 8]]
  prompt_lens = [3, 6]  # then 5 and 2 tokens decoded one by one (both rows fed 5 steps)
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state):
    m = nnx.merge(graphdef, state)
    width = max(prompt_lens)
    ids, mask = _left_pad([r[:n] for r, n in zip(full, prompt_lens)], width)
    cache = init_cache(cfg, 2, 16)
    hidden, cache = m.forward(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                              cache=cache)
    logits = [m.logits(hidden[:, -1:])]
    for step in range(2):
      nxt = jnp.asarray([full[i][prompt_lens[i] + step] for i in range(2)], jnp.int32)
      hidden, cache = m.forward(input_ids=nxt[:, None], cache=cache)
      logits.append(m.logits(hidden))
    ref_ids = np.asarray(full, np.int32)[:, :8]
    return jnp.concatenate(logits, axis=1), m(jnp.asarray(ref_ids))

  cached, reference = map(np.asarray, run(state))
  for i, n in enumerate(prompt_lens):
    np.testing.assert_allclose(cached[i], reference[i, n - 1:n + 2], rtol=0, atol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_a_teacher_forced_forward(sampler, forward, temperature):
  out = sampler.generate(PROMPTS, SamplingParams(temperature=temperature, max_new_tokens=NEW),
                         seed=3)
  completions = [t[0] for t in out.tokens]
  policy = _teacher_forced(forward, PROMPTS, completions)
  for got, want in zip(out.logprobs, policy):
    np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-4)
  # Under the sampling distribution at temperature t: log_softmax(logits / t).
  rows = [p + c for p, c in zip(PROMPTS, completions)]
  ids, mask = _left_pad(rows, 32)
  logp = forward(ids, mask)
  for i, c in enumerate(completions):
    z = logp[i, 32 - len(c) - 1:31] / temperature
    want = (z - jax.scipy.special.logsumexp(z, axis=-1, keepdims=True))[np.arange(len(c)), c]
    np.testing.assert_allclose(out.sampling_logprobs[i][0], want, rtol=0, atol=1e-4)


def test_prefix_sharing_equals_separate_prefills(sampler):
  params = SamplingParams(temperature=1.0, max_new_tokens=NEW, num_samples=4)
  shared = sampler.generate([PROMPTS[1]], params, seed=7)
  separate = sampler.generate([PROMPTS[1]] * 4, SamplingParams(temperature=1.0,
                                                               max_new_tokens=NEW), seed=7)
  assert shared.tokens[0] == [t[0] for t in separate.tokens]
  assert len({tuple(t) for t in shared.tokens[0]}) > 1  # the samples differ from each other
  for got, want in zip(shared.logprobs[0], [lp[0] for lp in separate.logprobs]):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_forced_prefix_is_shared_and_not_returned(sampler):
  prefix = [77, 78]
  params = SamplingParams(temperature=0.0, max_new_tokens=NEW, num_samples=4)
  forced = sampler.generate([PROMPTS[0]], params, forced_prefixes=[prefix])
  plain = sampler.generate([PROMPTS[0] + prefix] * 4, SamplingParams(temperature=0.0,
                                                                     max_new_tokens=NEW))
  assert forced.tokens[0] == [t[0] for t in plain.tokens]


def test_stop_ids_end_each_row_separately(sampler):
  greedy = sampler.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=NEW))
  stop = greedy.tokens[1][0][3]  # the 4th token of row 1; other rows may or may not contain it
  out = sampler.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=NEW,
                                                 stop_token_ids=(stop, 127)))
  for row, full in zip(out.tokens, greedy.tokens):
    full = full[0]
    cut = full.index(stop) + 1 if stop in full else len(full)
    assert row[0] == full[:cut]
  assert out.tokens[1][0][-1] == stop and out.finish_reasons[1] == ["stop"]
  assert out.lengths[1] == [len(out.tokens[1][0])] and out.lengths[1][0] <= 4
  short = sampler.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=5))
  assert short.lengths == [[5]] * 4 and short.tokens[0][0] == greedy.tokens[0][0][:5]


def test_seed_reproducibility_and_no_recompilation(sampler):
  params = SamplingParams(temperature=1.0, max_new_tokens=NEW)
  a = sampler.generate(PROMPTS, params, seed=11)
  compiled = rollout.decode._cache_size(), rollout.prefill._cache_size()
  assert sampler.generate(PROMPTS, params, seed=11).tokens == a.tokens
  assert sampler.generate(PROMPTS, params, seed=12).tokens != a.tokens
  for knobs in (dict(temperature=0.6, top_p=0.95, top_k=20, presence_penalty=1.5),
                dict(temperature=0.0, min_p=0.1, max_new_tokens=9, stop_token_ids=(3, 4))):
    sampler.generate(PROMPTS, SamplingParams(**{"max_new_tokens": NEW, **knobs}), seed=1)
  assert (rollout.decode._cache_size(), rollout.prefill._cache_size()) == compiled


def test_embedding_prompts_match_token_prompts(sampler, model):
  params = SamplingParams(temperature=1.0, max_new_tokens=NEW)
  by_ids = sampler.generate(PROMPTS, params, seed=5)
  embeds = [np.asarray(model.embed(jnp.asarray([p]))[0]) for p in PROMPTS]
  positions = [np.broadcast_to(np.arange(len(p)), (3, len(p))) for p in PROMPTS]
  by_embeds = sampler.generate_from_embeddings(embeds, positions, params, seed=5)
  assert by_embeds.tokens == by_ids.tokens
  # Positions matter: shifting them changes the continuation's rotary phases.
  shifted = sampler.generate_from_embeddings(embeds, [p + 5 for p in positions],
                                             SamplingParams(temperature=0.0, max_new_tokens=NEW))
  greedy = sampler.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=NEW))
  assert shifted.logprobs != greedy.logprobs


def test_bad_input_is_named(sampler):
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    sampler.generate([[1], []], SamplingParams())
  with pytest.raises(ValueError, match="prompt 0 has token ids"):
    sampler.generate([[1, 999]], SamplingParams())
  with pytest.raises(ValueError, match="exceeds max_total_len"):
    sampler.generate([[1] * 10], SamplingParams(max_new_tokens=60))
  with pytest.raises(ValueError, match="top_p"):
    SamplingParams(top_p=0.0)
