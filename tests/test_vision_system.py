"""Images through the whole system: prompts, the sampler, packed training rows, the learner.

One tiny random transformers `Qwen3_5ForConditionalGeneration` (module scope) is the reference
for greedy decoding from image prompts; the learner's log-probs over packed rows of image-prompt
rollouts must equal the sampler's (same features, same 3-axis positions).
"""
import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from PIL import Image

from zppo_jax.data import packing
from zppo_jax.data import prompts as prompts_lib
from zppo_jax.data import vision as vision_lib
from zppo_jax.models import qwen3_5
from zppo_jax.models.qwen3_5 import multimodal as mm
from zppo_jax.sampling import Sampler, SamplingParams, media
from zppo_jax.train.learner import Learner, LearnerConfig

from test_vision_multimodal import END, IMG, START, VISION, hf_config

@pytest.fixture(scope="module")
def models(tmp_path_factory):
  torch.manual_seed(0)
  hf = transformers.Qwen3_5ForConditionalGeneration(hf_config()).float().eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if "visual" in name:   # A random tower whose features are not ~0.
        p.add_(0.1 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("hf_vlm")
  hf.save_pretrained(path)
  return hf, qwen3_5.load_pretrained(path), path


def _image_prompt(rng, grids, before=3, after=4):
  grids = np.asarray(grids)
  ids = list(rng.integers(1, 100, size=before))
  for t, h, w in grids:
    ids += [START] + [IMG] * int(t * h * w // 4) + [END] + list(rng.integers(1, 100, size=2))
  ids += list(rng.integers(1, 100, size=after))
  pixels = rng.uniform(-1, 1, (int(grids.prod(1).sum()), VISION.patch_dim)).astype(np.float32)
  return prompts_lib.ImagePrompt(ids, pixels, grids)


def test_load_pretrained_returns_the_multimodal_model_unless_text_only(models, tmp_path):
  _, ours, path = models
  assert isinstance(ours, mm.Qwen3_5ForConditionalGeneration)
  text = qwen3_5.load_pretrained(path, text_only=True)
  assert isinstance(text, qwen3_5.Qwen3_5ForCausalLM)
  # `save_pretrained` writes a multimodal model whole (vision tower included).
  qwen3_5.save_pretrained(ours, tmp_path)
  again = qwen3_5.load_pretrained(tmp_path)
  assert isinstance(again, mm.Qwen3_5ForConditionalGeneration)
  for a, b in zip(jax.tree.leaves(nnx.state(ours)), jax.tree.leaves(nnx.state(again))):
    np.testing.assert_array_equal(a, b)


def test_sampler_greedy_from_image_prompts_equals_transformers_generate(models):
  hf, ours, _ = models
  rng = np.random.default_rng(0)
  image = _image_prompt(rng, [[1, 4, 4], [1, 2, 4]])
  text = list(rng.integers(1, 100, size=9))
  sampler = Sampler(ours, max_total_len=64)
  steps = 5
  out = sampler.generate([image, text], SamplingParams(temperature=0.0, max_new_tokens=steps,
                                                       num_samples=2), seed=0)
  ids = torch.tensor([list(image)])
  with torch.no_grad():
    ref = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                      pixel_values=torch.from_numpy(image.pixel_values),
                      image_grid_thw=torch.from_numpy(image.image_grid_thw),
                      mm_token_type_ids=(ids == IMG).long(), max_new_tokens=steps,
                      do_sample=False)[0, len(image):].tolist()
    text_ids = torch.tensor([text])
    ref_text = hf.generate(input_ids=text_ids, attention_mask=torch.ones_like(text_ids),
                           max_new_tokens=steps, do_sample=False)[0, len(text):].tolist()
  assert out.tokens[0] == [ref, ref]   # The G samples share the prompt's features.
  assert out.tokens[1] == [ref_text, ref_text]
  # The image changes the continuation (the features are really placed).
  blank = prompts_lib.ImagePrompt(image, np.zeros_like(image.pixel_values), image.image_grid_thw)
  other = sampler.generate([blank], SamplingParams(temperature=0.0, max_new_tokens=steps), 0)
  assert other.logprobs[0][0] != out.logprobs[0][0]


def test_learner_logprobs_of_image_rollouts_equal_the_samplers(models):
  _, ours, _ = models
  rng = np.random.default_rng(1)
  image_a = _image_prompt(rng, [[1, 4, 4]])
  image_b = _image_prompt(rng, [[1, 2, 4], [1, 2, 2]], before=1)
  text = list(rng.integers(1, 100, size=6))
  sampler = Sampler(ours, max_total_len=64)
  out = sampler.generate([image_a, text, image_b],
                         SamplingParams(temperature=1.0, max_new_tokens=6, num_samples=2), seed=3)
  prompts, responses, expected, inputs = [], [], [], []
  for prompt, tokens, logprobs in zip([image_a, text, image_b], out.tokens, out.logprobs):
    x = (media.prompt_inputs(prompt, sampler.vision)
         if isinstance(prompt, prompts_lib.ImagePrompt) else None)
    for t, lp in zip(tokens, logprobs):
      prompts.append(prompt)
      responses.append(t)
      expected.append(lp)
      inputs.append(x)
  batch = packing.pack(prompts, responses, row_len=64,
                       prompt_positions=[None if x is None else x[0] for x in inputs],
                       prompt_features=[None if x is None else x[1:] for x in inputs])
  assert batch.vision_embeds is not None and batch.vision_mask.sum() == 2 * (4 + 2 + 1)
  learner = Learner(ours.language_model, LearnerConfig())
  got = packing.unpack(np.asarray(learner.logprobs(batch.arrays())), batch.placements)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=0, atol=1e-4)


def test_packed_image_positions_continue_after_the_prompt():
  pos = np.array([[0, 1, 1, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
  batch = packing.pack([[5, IMG, IMG, 6]], [[7, 8]], row_len=8, prompt_positions=[pos],
                       prompt_features=[(np.array([0, 1, 1, 0], bool), np.ones((2, 3)))])
  np.testing.assert_array_equal(batch.positions[:, 0, :6], np.concatenate(
      [pos, [[4, 5]] * 3], axis=1))
  assert batch.vision_embeds.shape == (1, 8, 3) and batch.vision_embeds[0, 1:3].min() == 1
  with pytest.raises(ValueError, match=r"prompt_features\[0\]"):
    packing.pack([[5, IMG, IMG, 6]], [[7]], row_len=8,
                 prompt_features=[(np.array([0, 1, 1, 0], bool), np.ones((3, 3)))])
  text = packing.pack([[1, 2]], [[3]], row_len=4)
  assert "vision_embeds" not in text.arrays()


def test_image_prompt_errors_name_the_sample(models):
  _, ours, _ = models
  rng = np.random.default_rng(2)
  prompt = _image_prompt(rng, [[1, 4, 4]])
  short = prompts_lib.ImagePrompt([t for t in prompt if t != IMG] + [IMG] * 3,
                                  prompt.pixel_values, prompt.image_grid_thw)
  sampler = Sampler(ours, max_total_len=64)
  params = SamplingParams(max_new_tokens=2)
  with pytest.raises(ValueError,
                     match="prompt 1: 3 image placeholder tokens but its images give 4"):
    sampler.generate([prompt, short], params)
  text_model = Sampler(ours.language_model, max_total_len=64)
  with pytest.raises(ValueError, match="prompt 0 has images but the model has no vision tower"):
    text_model.generate([prompt], params)


class _Tokenizer:
  """Chat template and tokenizer stand-in: one id per character, the vision tokens as one id."""
  special = {vision_lib.VISION_START: START, vision_lib.VISION_END: END, vision_lib.IMAGE_PAD: IMG}

  def apply_chat_template(self, messages, tokenize, add_generation_prompt):
    return "<u>" + messages[0]["content"] + "</u><a>"

  def __call__(self, text, add_special_tokens):
    ids, i = [], 0
    while i < len(text):
      for token, tid in self.special.items():
        if text.startswith(token, i):
          ids.append(tid)
          i += len(token)
          break
      else:
        ids.append(ord(text[i]) % 100)
        i += 1
    return {"input_ids": ids}


def test_encode_prompt_expands_images_and_join_keeps_them(tmp_path):
  cfg = vision_lib.VisionProcessorConfig(min_pixels=64 * 64, max_pixels=64 * 64)
  path = tmp_path / "a.png"
  Image.new("RGB", (70, 50), (10, 200, 30)).save(path)
  ids = prompts_lib.encode_prompt(_Tokenizer(), "q?", [str(path)], cfg, sample="s1")
  assert isinstance(ids, prompts_lib.ImagePrompt)
  assert ids.count(IMG) == 4 and ids.image_grid_thw.tolist() == [[1, 4, 4]]
  expected = vision_lib.preprocess_images([str(path)], cfg)
  np.testing.assert_array_equal(ids.pixel_values, expected["pixel_values"])
  joined = prompts_lib.join_prompt(ids, [1, 2])
  assert isinstance(joined, prompts_lib.ImagePrompt) and joined[-2:] == [1, 2]
  assert joined.pixel_values is ids.pixel_values
  assert prompts_lib.join_prompt([3], [4]) == [3, 4]
  assert type(prompts_lib.encode_prompt(_Tokenizer(), "q?")) is list
  with pytest.raises(ValueError, match="sample s2: the question has images but the model"):
    prompts_lib.encode_prompt(_Tokenizer(), "q?", [str(path)], None, sample="s2")


def test_prompt_file_rejects_small_and_corrupt_images(tmp_path):
  import io
  import json
  from zppo_jax.data import train_data
  cfg = vision_lib.VisionProcessorConfig(min_pixels=64 * 64, max_pixels=64 * 64, min_side=32)
  good, small, corrupt = tmp_path / "g.png", tmp_path / "s.png", tmp_path / "c.png"
  Image.new("RGB", (64, 64)).save(good)
  Image.new("RGB", (64, 20)).save(small)
  corrupt.write_bytes(b"\x89PNG not really")
  rows = [{"id": i, "question": "q", "answer": "1", "images": [str(p)]}
          for i, p in enumerate([good, small, corrupt])]
  data = tmp_path / "d.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))

  def load(max_prompt_tokens):
    return train_data.load_records(data, tmp_path / "run", _Tokenizer(), lambda q: q, vision=cfg,
                                   max_prompt_tokens=max_prompt_tokens, min_image_side=32,
                                   stream=io.StringIO())

  out = load(100)
  assert [r["id"] for r in out.records] == ["0"]
  assert list(out.records[0]["prompt"]).count(IMG) == 4
  assert dict(out.rejects) == {"small_image": 1, "broken_image": 1}
  written = [json.loads(x) for x in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
  assert [(w["id"], w["reason"]) for w in written] == [(1, "small_image"), (2, "broken_image")]
  # The image tokens count against the prompt budget.
  assert load(12).rejects["too_long"] == 1


def test_student_packs_image_rollouts_with_either_models_features(models):
  """The distillation baselines pack the same rows twice: with the student's features and with
  the teacher's (its own vision tower); only the features differ."""
  from zppo_jax.train.config import load_config
  from zppo_jax.train.student import Student
  from zppo_jax.train.trainer import TrainSequence
  _, ours, _ = models
  config = load_config("configs/demo.py:visual", ["--config.rl.pack_row_len=64",
                                                  "--config.rl.min_rows_per_update=1"])
  student = Student(ours, config, stop_ids=(1,))
  rng = np.random.default_rng(4)
  prompt = _image_prompt(rng, [[1, 4, 4]])
  text = list(rng.integers(1, 100, size=5))
  seqs = [TrainSequence(prompt, [5, 6, 7], [0.0] * 3, 1.0), TrainSequence(prompt, [8], [0.0], -1.0),
          TrainSequence(text, [9, 9], [0.0] * 2, 0.5)]
  [mine] = student.pack([seqs], with_advantages=False)
  other = nnx.clone(ours)
  other.visual.merger.linear_fc2.kernel[...] = 2 * other.visual.merger.linear_fc2.kernel[...]
  [theirs] = student.pack([seqs], with_advantages=False,
                          encoder=media.VisionEncoder(other))
  for key in ("tokens", "positions", "segment_ids", "loss_mask", "vision_mask"):
    np.testing.assert_array_equal(mine[key], theirs[key])
  assert mine["vision_mask"].sum() == 8
  features = media.VisionEncoder(other).features(prompt)
  np.testing.assert_allclose(theirs["vision_embeds"][theirs["vision_mask"]],
                             np.concatenate([features, features]), rtol=0, atol=1e-6)
  assert not np.allclose(mine["vision_embeds"], theirs["vision_embeds"])


def test_reformulated_prompts_keep_their_questions_images(tmp_path):
  """BCQ and NCQ prompts of an image question are image prompts with the question's image."""
  import random
  from zppo_jax.train import augment
  from zppo_jax.train.config import load_config, method_flags
  from zppo_jax.train.groups import Completion, Group
  config = load_config("configs/demo.py:visual")   # rho_aug * |X_new| = 2 slots below
  cfg = vision_lib.VisionProcessorConfig(min_pixels=64 * 64, max_pixels=64 * 64)
  path = tmp_path / "q.png"
  Image.new("RGB", (64, 64), (0, 0, 0)).save(path)
  record = {"id": "q1", "question": "Sum of the digits?", "answer": "3", "images": [str(path)]}
  tok = _Tokenizer()
  plain = Group("q1", "plain", record, augment.record_prompt(tok, record, cfg),
                [Completion([1], [0.0])] * 2, texts=["\\boxed{4}", "\\boxed{5}"],
                rewards=[0.0, 0.0])
  teacher = Group("q1", "plain", record, plain.prompt_ids, [Completion([1], [0.0])] * 2,
                  texts=["\\boxed{3}", "\\boxed{7}"], rewards=[1.0, 0.0])
  specs, metrics, _ = augment.build_specs([plain], [teacher], 8, config, method_flags(config),
                                          random.Random(0), tok, None, vision=cfg)
  assert [s.kind for s in specs] == ["bcq", "ncq"] and metrics["reform/bcq"] == 1
  for ids in (s.prompt_ids for s in specs):
    assert isinstance(ids, prompts_lib.ImagePrompt) and ids.count(IMG) == 4
    np.testing.assert_array_equal(ids.pixel_values, plain.prompt_ids.pixel_values)
  with pytest.raises(ValueError, match="sample q1: the question has images but the model"):
    augment.record_prompt(tok, record, None)
