"""The run directory as one path type, `etils.epath.Path`: a local folder or a `gs://` (any
fsspec / epath) location alike.

Every file a run writes (checkpoints, `metrics.jsonl`, TensorBoard events, `rejects.jsonl`,
plots, `summary.json`, `config.json`, the built prompt shards) is named from the workdir with `/`
and written through the path's own methods. Nothing turns a workdir into a `pathlib.Path` or calls
`.resolve()` on it: that would make `gs://bucket/run` a local folder named `gs:`.
"""
from __future__ import annotations

import os

from etils import epath


def as_path(path: epath.PathLike) -> epath.Path:
  """`path` as an `epath.Path` (a local path stays local, a `gs://` URI stays remote)."""
  return epath.Path(path)


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` is on this machine's file system (not a `scheme://` location)."""
  return "://" not in os.fspath(path)
