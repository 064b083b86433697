"""Names for the images stored inside the shards, so a record can point at them by a string.

A training record in the replay buffer is checkpointed as JSON, and its images go with every prompt
made from it (plain, BCQ, NCQ, replayed). Embedding the encoded bytes would put megabytes per
question into each checkpoint; a path needs a file. Instead a record read from the shards names
its images by location:

    shard-image:<dataset directory>?split=train&index=<global record index>&image=<k>

and `vision.load_image` (hence `prompts.encode_prompt`) reads the bytes back from the shards. The
string is stable across restarts on the same file system, so a resumed run's buffer works.
"""
from __future__ import annotations

import functools
import pathlib
import urllib.parse

SCHEME = "shard-image:"


def uri(dataset_dir: str | pathlib.Path, index: int, image: int, split: str = "train") -> str:
  """The name of image `image` of record `index` of a split."""
  query = urllib.parse.urlencode({"split": split, "index": int(index), "image": int(image)})
  return f"{SCHEME}{pathlib.Path(dataset_dir).resolve()}?{query}"


def is_uri(value) -> bool:
  return isinstance(value, str) and value.startswith(SCHEME)


def read(name: str) -> bytes:
  """The encoded bytes of a named image.

  Raises:
    FileNotFoundError: naming the image, when its dataset or record is not there.
  """
  from zppo_jax.data import records   # TFDS features: only needed when a name is read.
  directory, _, query = name[len(SCHEME):].partition("?")
  q = dict(urllib.parse.parse_qsl(query))
  try:
    source = _source(directory, q["split"])
    record = records.deserialize(source[int(q["index"])])
    return record["images"][int(q["image"])]
  except (KeyError, IndexError, ValueError, OSError, records.RecordError) as e:
    raise FileNotFoundError(f"image {name}: cannot be read from the shards ({e})") from e


@functools.lru_cache(maxsize=8)
def _source(directory: str, split: str):
  from zppo_jax.data import tfds_source
  return tfds_source.grain_source(directory, split)
