"""Data pipeline: time to first batch and records/s per host, at the paper's corpus scale.

A synthetic ZPPO-77K-like dataset is written once per size into `--cache` (default
`/tmp/zppo_bench_corpus/<n>`, reused by later runs): `n` records, each one JPEG of
`--width` x `--height` (the typical chart/diagram size) and a question of ~60 words. The JPEGs are
`--distinct` different images cycled over the records (encoding 77K JPEGs would cost minutes and
the decode cost per record is the same). Figures, for each corpus size in `--sizes`:

1. start-up: `Pipeline(...)` + `iterator()` + the first batch (what a run waits for before its
   first step); it must not grow with the corpus (no whole-corpus pass per host);
2. raw: random access + `records.deserialize`, one thread, shuffled order (I/O + parsing);
3. full: + image decode, resize to the paper's pixel budget ([256, 1280] x 32 x 32), patchify,
   chat template, placeholder expansion and tokenisation (the demo tokenizer with the Qwen vision
   tokens), with `--workers` Grain worker processes (0: in process).

Run: python bench/data_pipeline.py [--sizes 7700,77000] [--workers 2] [--batches 8]
The last lines are the headline, one per size:
`data_pipeline[N]: first batch after X s, Y records/s per host with W workers`.
"""
from __future__ import annotations

import argparse
import io
import os
import pathlib
import time

import grain
import numpy as np
import PIL.Image

from zppo_jax.data import demo_tokenizer, records, tfds_source
from zppo_jax.data.pipeline import Pipeline, PipelineConfig

WORDS = "the area of triangle ABC is what value given chart bar shows percent".split()


def make_dataset(root: pathlib.Path, n: int, width: int, height: int, distinct: int) -> None:
  """Writes `n` records to `root/bench/1.0.0` unless a complete copy is there already."""
  directory = tfds_source.dataset_dir(root, "bench")
  if (directory / "dataset_info.json").exists():
    return
  rng = np.random.default_rng(0)
  jpegs = []
  for _ in range(min(distinct, n)):
    pixels = rng.integers(0, 255, (height // 8, width // 8, 3), np.uint8)
    image = PIL.Image.fromarray(pixels).resize((width, height), PIL.Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85)
    jpegs.append(buf.getvalue())

  def recs():
    for i in range(n):
      question = " ".join(rng.choice(WORDS, 60)) + "?"
      yield records.make_record(id=f"r{i}", source="bench", subset="s", question=question,
                                answer=str(i), images=[jpegs[i % len(jpegs)]], tier=1)

  lengths = records.write_shards(recs(), directory, "bench", num_shards=64)
  tfds_source.write_metadata(directory, "bench", {"train": lengths}, "bench")


def raw_rate(root: pathlib.Path, n: int = 2000) -> float:
  source = tfds_source.grain_source(root)
  order = np.random.default_rng(0).permutation(len(source))[:n]
  start = time.perf_counter()
  for i in order:
    records.deserialize(source[int(i)])
  return len(order) / (time.perf_counter() - start)


def measure(root: pathlib.Path, tok, workers: int, batch: int, batches: int
            ) -> tuple[float, float, float]:
  """(seconds to open the pipeline, seconds to the first batch from nothing, records/s over the
  next `batches` batches)."""
  cfg = PipelineConfig(seed=0, batch_size=batch, num_workers=workers, num_threads=2)
  start = time.perf_counter()
  pipe = Pipeline(root, tok, cfg, shard=grain.sharding.ShardOptions(0, 1))
  opened = time.perf_counter() - start
  it = pipe.iterator()
  next(it)
  first = time.perf_counter() - start
  start, count = time.perf_counter(), 0
  for _ in range(batches):
    count += len(next(it))
  return opened, first, count / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", default="7700,77000")
  parser.add_argument("--cache", default="/tmp/zppo_bench_corpus")
  parser.add_argument("--distinct", type=int, default=512)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--width", type=int, default=800)
  parser.add_argument("--height", type=int, default=600)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--batches", type=int, default=8)
  parser.add_argument("--prepare-only", action="store_true", help="only write the corpora")
  args = parser.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  cache = pathlib.Path(args.cache)
  for n in sizes:
    t = time.perf_counter()
    make_dataset(cache / str(n), n, args.width, args.height, args.distinct)
    print(f"corpus {n}: ready in {time.perf_counter() - t:.1f} s "
          f"({sum(p.stat().st_size for p in (cache / str(n)).rglob('*')) / 2**30:.2f} GiB)")
  if args.prepare_only:
    return
  tok = demo_tokenizer.build_tokenizer([" ".join(WORDS)], cache / "tok", vocab_size=300)
  tok.add_tokens(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"], special_tokens=True)
  lines = []
  for n in sizes:
    root = cache / str(n)
    raw = raw_rate(root)
    opened, first, rate = measure(root, tok, args.workers, args.batch, args.batches)
    print(f"corpus {n}: raw read + deserialize {raw:.0f} records/s")
    lines.append(f"data_pipeline[{n}]: pipeline opened in {opened:.3f} s, first batch after "
                 f"{first:.2f} s, {rate:.1f} records/s per "
                 f"host with {args.workers} workers (batch {args.batch}, {args.width}x"
                 f"{args.height} JPEG, paper pixel budget); load average "
                 f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
