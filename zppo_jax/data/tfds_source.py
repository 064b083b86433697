"""Makes a shard directory a TFDS dataset, and opens one for Grain or for TFDS users.

The builders write `<out>/<name>/<version>/` in TFDS's own layout: ArrayRecord shards named
`<name>-<split>.array_record-XXXXX-of-YYYYY`, plus `dataset_info.json` and `features.json` written
here from `records.FEATURES`. No TensorFlow is needed at any point: TFDS serialises and parses
`tf.train.Example` protos in NumPy, so a user can write

    tfds.data_source("zppo77k", data_dir=out, split="train", download=False)[i]
    tfds.builder_from_directory(f"{out}/zppo77k/1.0.0").as_data_source("train")

and get the raw feature dict (bytes for text), while the training pipeline opens the same files
with Grain's `ArrayRecordDataSource` and decodes with `records.deserialize`.
"""
from __future__ import annotations

import pathlib

import grain
import tensorflow_datasets as tfds

from zppo_jax.data import records

VERSION = "1.0.0"
_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def dataset_dir(out: str | pathlib.Path, name: str, version: str = VERSION) -> pathlib.Path:
  """`<out>/<name>/<version>`: where a builder writes the shards of dataset `name`."""
  return pathlib.Path(out) / name / version


def write_metadata(directory: str | pathlib.Path, name: str, shard_lengths: dict[str, list[int]],
                   description: str, version: str = VERSION) -> None:
  """Writes `dataset_info.json` and `features.json` next to the shards.

  Args:
    directory: the dataset version directory holding the shards.
    name: the dataset name (as in the shard file names).
    shard_lengths: split -> records per shard, as `records.write_shards` returned.
    description: free text shown by TFDS.
    version: the dataset version (the directory's name).
  """
  directory = pathlib.Path(directory)
  identity = tfds.core.DatasetIdentity(name=name, version=version, data_dir=str(directory),
                                       module_name=__name__)
  info = tfds.core.DatasetInfo(builder=identity, features=records.FEATURES,
                               description=description)
  info.set_file_format("array_record")
  splits = []
  for split, lengths in shard_lengths.items():
    num_bytes = sum(p.stat().st_size for p in records.shard_paths(directory, name, split))
    template = tfds.core.ShardedFileTemplate(
        data_dir=directory, template=_TEMPLATE, dataset_name=name, split=split,
        filetype_suffix="array_record")
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=list(lengths),
                                      num_bytes=num_bytes, filename_template=template))
  info.set_splits(tfds.core.SplitDict(splits))
  info.write_to_directory(directory)


def find_dataset_dir(path: str | pathlib.Path) -> pathlib.Path:
  """The directory holding `dataset_info.json`: `path` itself or the one dataset below it.

  Raises:
    FileNotFoundError: if there is none, or ValueError if there are several.
  """
  path = pathlib.Path(path)
  if (path / "dataset_info.json").exists():
    return path
  found = sorted(p.parent for p in path.glob("*/*/dataset_info.json"))
  if not found:
    raise FileNotFoundError(f"no dataset (dataset_info.json) in {path} or <name>/<version>/ below")
  if len(found) > 1:
    raise ValueError(f"several datasets under {path}: {[str(f) for f in found]}; pass one")
  return found[0]


def tfds_data_source(path: str | pathlib.Path, split: str = "train"):
  """The TFDS random-access source of a built dataset (items are raw feature dicts)."""
  return tfds.builder_from_directory(str(find_dataset_dir(path))).as_data_source(split=split)


def grain_source(path: str | pathlib.Path, split: str = "train") -> grain.sources.ArrayRecordDataSource:
  """Grain's random-access source over the shards of a split (items are serialised records)."""
  directory = find_dataset_dir(path)
  name = directory.parent.name
  paths = records.shard_paths(directory, name, split)
  if not paths:
    raise FileNotFoundError(f"no {split} shards named {name}-{split}.array_record-* in {directory}")
  return grain.sources.ArrayRecordDataSource([str(p) for p in paths])
