"""The shard record: one question with its images, as stored in the ArrayRecord shards.

Both builders (`zppo77k`, `generic_builder`) write these records and the training pipeline reads
them. A record is a serialised `tf.train.Example` laid out by a TFDS `FeaturesDict` (`FEATURES`),
so the same bytes are readable three ways without TensorFlow: `deserialize` here (Grain),
`tfds.data_source` on the output directory (see `tfds_source`), and any `tf.train.Example` parser.

Fields (all required):
  id        str    unique within a dataset (`<source>/<id in the source>` for ZPPO-77K)
  source    str    where the row came from ("vero", "mmfinereason", or a user's name)
  subset    str    canonical sub-dataset name (caps and Vero priority act on it)
  tier      int    1 or 2 for ZPPO-77K caps; 0 when not tiered
  question  str    the question text, image placeholders removed (images go before the text)
  answer    str    the gold answer
  images    list[bytes]   encoded images (PNG, JPEG, ...), in order
  meta      str    JSON object with anything else worth keeping (pass_rate, original names)
"""
from __future__ import annotations

import json
import pathlib
from typing import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

TEXT_FIELDS = ("id", "source", "subset", "question", "answer")

FEATURES = tfds.features.FeaturesDict({
    "id": tfds.features.Text(),
    "source": tfds.features.Text(),
    "subset": tfds.features.Text(),
    "tier": np.int64,
    "question": tfds.features.Text(),
    "answer": tfds.features.Text(),
    "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
    "meta": tfds.features.Text(),
})
_SERIALIZER = example_serializer.ExampleSerializer(FEATURES.get_serialized_info())

# TFDS file naming, so a shard directory is also a TFDS dataset directory.
SHARD_TEMPLATE = "{name}-{split}.array_record-{index:05d}-of-{count:05d}"
IDS_FILE = "ids-{split}.txt"


class RecordError(ValueError):
  """A record that cannot be serialised or deserialised; the message names it."""


def make_record(*, id: str, source: str, subset: str, question: str, answer: str,  # noqa: A002
                images: Iterable[bytes] = (), tier: int = 0, meta: dict | None = None) -> dict:
  """A record dict with every field checked (strings are str, images are bytes)."""
  record = {"id": id, "source": source, "subset": subset, "question": question,
            "answer": answer, "tier": int(tier), "images": [bytes(b) for b in images],
            "meta": meta or {}}
  for name in TEXT_FIELDS:
    if not isinstance(record[name], str):
      raise RecordError(f"record {id!r}: field {name!r} must be str, got "
                        f"{type(record[name]).__name__}")
  return record


def serialize(record: dict) -> bytes:
  """Record dict -> bytes (a `tf.train.Example`)."""
  try:
    example = dict(record, meta=json.dumps(record.get("meta") or {}, sort_keys=True))
    return _SERIALIZER.serialize_example(FEATURES.encode_example(example))
  except Exception as e:  # TFDS raises assorted types for a bad field.
    raise RecordError(f"record {record.get('id')!r}: cannot serialise: {e}") from e


def deserialize(data: bytes) -> dict:
  """Bytes -> record dict (str fields decoded, images as a list of bytes).

  Raises:
    RecordError: if the bytes are not a record of this format.
  """
  try:
    raw = FEATURES.deserialize_example_np(data)
    record = {name: raw[name].decode("utf-8") for name in TEXT_FIELDS}
    record["tier"] = int(raw["tier"])
    record["images"] = [bytes(b) for b in raw["images"]]
    record["meta"] = json.loads(raw["meta"].decode("utf-8") or "{}")
    return record
  except Exception as e:  # Protobuf, key and Unicode errors all mean "not a record".
    raise RecordError(f"cannot deserialise a record ({len(data)} bytes): {e}") from e


def shard_paths(directory: str | pathlib.Path, name: str, split: str = "train") -> list[pathlib.Path]:
  """The shards of one split in a directory, in order."""
  directory = pathlib.Path(directory)
  return sorted(directory.glob(f"{name}-{split}.array_record-*-of-*"))


def write_shards(records: Iterable[dict], directory: str | pathlib.Path, name: str, *,
                 num_shards: int, split: str = "train") -> list[int]:
  """Writes records round-robin over `num_shards` ArrayRecord files, and the ids in order.

  Round-robin keeps shards within one record of each other in length, which is what TFDS
  `shard_lengths` and Grain's global index expect; the global order is shard by shard.

  Args:
    records: record dicts (`make_record`).
    directory: output directory (created).
    name: dataset name used in the file names.
    num_shards: number of shard files.
    split: split name.

  Returns:
    The number of records in each shard.
  """
  from array_record.python.array_record_module import ArrayRecordWriter  # heavy import
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  paths = [directory / SHARD_TEMPLATE.format(name=name, split=split, index=i, count=num_shards)
           for i in range(num_shards)]
  writers = [ArrayRecordWriter(str(p), "group_size:1") for p in paths]
  ids: list[list[str]] = [[] for _ in paths]
  try:
    for n, record in enumerate(records):
      writers[n % num_shards].write(serialize(record))
      ids[n % num_shards].append(record["id"])
  finally:
    for w in writers:
      w.close()
  # Ids in global (shard-major) order, one per line, so readers can find duplicates cheaply.
  (directory / IDS_FILE.format(split=split)).write_text(
      "".join(i + "\n" for shard in ids for i in shard))
  return [len(s) for s in ids]


def read_ids(directory: str | pathlib.Path, split: str = "train") -> list[str] | None:
  """The ids sidecar of a split in global order, or None if it was not written."""
  path = pathlib.Path(directory) / IDS_FILE.format(split=split)
  if not path.exists():
    return None
  return path.read_text().splitlines()


def iter_records(paths: Iterable[str | pathlib.Path]) -> Iterator[dict]:
  """Every record of some shards, in order (for inspection and tests)."""
  from array_record.python.array_record_module import ArrayRecordReader
  for path in paths:
    reader = ArrayRecordReader(str(path))
    try:
      for data in reader.read_all():
        yield deserialize(data)
    finally:
      reader.close()
