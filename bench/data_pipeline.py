"""Data pipeline throughput: records/s per host, from ArrayRecord shards to model-ready examples.

A synthetic ZPPO-77K-like dataset is written to a temp dir: `--records` records, each one JPEG of
`--width` x `--height` (the typical chart/diagram size) and a question of ~60 words. Three figures:

1. raw: random access + `records.deserialize`, one thread, shuffled order (I/O + parsing);
2. full, in process: + image decode, resize to the paper's pixel budget ([256, 1280] x 32 x 32),
   patchify, chat template, placeholder expansion and tokenisation (the demo tokenizer with the
   Qwen vision tokens; a real Qwen3.5 tokenizer is similar per token);
3. full with `--workers` Grain worker processes (what a TPU host runs).

Warm-up first (the first batch, which also starts the workers), then records/s over the rest.
Run: python bench/data_pipeline.py [--records 384] [--workers 2]
The last line is the headline: `data_pipeline: X records/s per host with W workers (...)`.
"""
from __future__ import annotations

import argparse
import io
import pathlib
import tempfile
import time

import grain
import numpy as np
import PIL.Image

from zppo_jax.data import demo_tokenizer, records, tfds_source
from zppo_jax.data.pipeline import Pipeline, PipelineConfig


def make_dataset(root: pathlib.Path, n: int, width: int, height: int) -> None:
  rng = np.random.default_rng(0)
  words = "the area of triangle ABC is what value given chart bar shows percent".split()

  def recs():
    for i in range(n):
      pixels = rng.integers(0, 255, (height // 8, width // 8, 3), np.uint8)
      image = PIL.Image.fromarray(pixels).resize((width, height), PIL.Image.Resampling.BILINEAR)
      buf = io.BytesIO()
      image.save(buf, "JPEG", quality=85)
      question = " ".join(rng.choice(words, 60)) + "?"
      yield records.make_record(id=f"r{i}", source="bench", subset="s", question=question,
                                answer=str(i), images=[buf.getvalue()], tier=1)

  directory = tfds_source.dataset_dir(root, "bench")
  lengths = records.write_shards(recs(), directory, "bench", num_shards=4)
  tfds_source.write_metadata(directory, "bench", {"train": lengths}, "bench")


def rate(batches) -> float:
  next(batches)                                   # warm-up (worker start, caches)
  start, n = time.perf_counter(), 0
  for batch in batches:
    n += len(batch)
  return n / (time.perf_counter() - start)


def stage_ms(source, tok, n: int) -> dict:
  """Median milliseconds per record of each preprocessing stage (where the time goes)."""
  from zppo_jax.data import vision
  from zppo_jax.data.pipeline import Preprocessor
  pre, times = Preprocessor(tok), {"decode": [], "resize+patchify": [], "tokenise": []}
  for i in range(n):
    record = records.deserialize(source[i])
    t0 = time.perf_counter()
    image = vision.load_image(record["images"][0])
    t1 = time.perf_counter()
    pixels = vision.preprocess_images([image])
    t2 = time.perf_counter()
    pre.encode(record["question"], pixels["image_grid_thw"], 1, record["id"])
    t3 = time.perf_counter()
    for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
      times[k].append(1e3 * dt)
  return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--records", type=int, default=384)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--width", type=int, default=800)
  parser.add_argument("--height", type=int, default=600)
  parser.add_argument("--batch", type=int, default=16)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    make_dataset(root, args.records, args.width, args.height)
    tok = demo_tokenizer.build_tokenizer(["the area of triangle ABC is what value"], root / "tok",
                                         vocab_size=300)
    tok.add_tokens(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"], special_tokens=True)

    source = tfds_source.grain_source(root)
    order = np.random.default_rng(0).permutation(len(source))
    start = time.perf_counter()
    for _ in range(3):
      for i in order:
        records.deserialize(source[int(i)])
    raw = 3 * len(order) / (time.perf_counter() - start)
    print(f"raw read + deserialize: {raw:.0f} records/s")

    stages = stage_ms(source, tok, 16)
    print("per record, in process: " + ", ".join(f"{k} {v:.1f} ms" for k, v in stages.items()))

    one = grain.sharding.ShardOptions(0, 1)
    results = {}
    for workers in (0, args.workers):
      cfg = PipelineConfig(seed=0, num_epochs=1, batch_size=args.batch, num_workers=workers,
                           num_threads=2)
      results[workers] = rate(Pipeline(root, tok, cfg, shard=one).iterator())
      print(f"full preprocessing, {workers} worker processes: {results[workers]:.1f} records/s")
  print(f"data_pipeline: {results[args.workers]:.1f} records/s per host with {args.workers} "
        f"workers ({results[0]:.1f} in process, raw read {raw:.0f}); "
        f"{args.width}x{args.height} JPEG, paper pixel budget")


if __name__ == "__main__":
  main()
