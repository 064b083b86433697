"""The run directory as one path type, `etils.epath.Path`: a local folder or a `gs://` (any
fsspec / epath) location alike.

Every file a run writes (checkpoints, `metrics.jsonl`, TensorBoard events, `rejects.jsonl`,
plots, `summary.json`, `config.json`, the built prompt shards) is named from the workdir with `/`
and written through the path's own methods. Nothing turns a workdir into a `pathlib.Path` or calls
`.resolve()` on it: that would make `gs://bucket/run` a local folder named `gs:`.
"""
from __future__ import annotations

import os
import shutil

from etils import epath


def as_path(path: epath.PathLike) -> epath.Path:
  """`path` as an `epath.Path`: a local path made absolute (Orbax refuses relative checkpoint
  paths), a `gs://` URI kept as it is."""
  return epath.Path(os.path.abspath(path)) if is_local(path) else epath.Path(path)


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` is on this machine's file system (not a `scheme://` location)."""
  return "://" not in os.fspath(path)


def files_under(directory: epath.Path) -> list[epath.Path]:
  """Every file below `directory`, as paths on the same backend (`gs://...` for a bucket).

  `epath.Path.walk` on an fsspec backend (gcsfs) yields its directories without the `gs://`
  prefix, i.e. as local relative paths; they are re-rooted on `directory` here.
  """
  files, top = [], None
  for root, _, names in directory.walk():
    top = os.fspath(root) if top is None else top    # The first directory walked is `directory`.
    below = os.fspath(root)[len(top):].lstrip("/")
    files += [directory / below / name for name in names]
  return files


def copy_tree(src: epath.Path, dst: epath.Path, last: str = "") -> None:
  """Copies every file under `src` to `dst` (either may be remote, on different backends).

  Args:
    src, dst: directories.
    last: a file name copied after all others (a stamp, so that a copy cut short is never taken
      for a complete one).
  """
  files = files_under(src)
  for file in sorted(files, key=lambda p: p.name == last):
    target = dst / file.relative_to(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    with file.open("rb") as f_in, target.open("wb") as f_out:
      shutil.copyfileobj(f_in, f_out)


def move_tree(src: epath.Path, dst: epath.Path) -> None:
  """Moves a directory: a rename on a local disk, a copy then delete on an object store (which
  has no directories to rename)."""
  if is_local(src):
    src.rename(dst)
  else:
    copy_tree(src, dst)
    src.rmtree()
