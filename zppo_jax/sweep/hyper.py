"""A config's `get_hyper(h)` as a list of named variants.

Config files describe their sweep big_vision style, with the helpers of this module passed as `h`:

  def get_hyper(h):
    return h.chainit([
        h.product([h.sweep("config.method", ["grpo", "zppo"]), h.sweep("config.seed", [0, 1])]),
        h.product([h.sweep("config.rl.inner_updates", [1, 4, 8, 16])]),
    ])

A sweep is a list of points, each a dict `{"config.a.b": value}`. A variant is one point with a
readable name built from its swept keys (`method=zppo,I=4`); short aliases stand for the long keys
the paper sweeps. Variants whose resolved configs are identical (the baseline repeated in each
ablation of a `chainit`) share one workdir, so it is trained once.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import json
import pathlib
import re
from typing import Any, Iterable, Sequence

Point = dict[str, Any]

# Long swept keys -> the short names used in variant names and report columns.
ALIASES: dict[str, str] = {
    "config.method": "method",
    "config.rl.inner_updates": "I",
    "config.rl.adv_norm": "norm",
    "config.teacher.checkpoint": "teacher",
    "config.student.checkpoint": "student",
    "config.rl.tau": "tau",
    "config.rl.group_size": "G",
    "config.rl.teacher_group_size": "GT",
    "config.rl.replay_ratio": "replay",
    "config.rl.aug_ratio": "aug",
    "config.optim.lr": "lr",
    "config.seed": "seed",
}


# --- the helpers passed to `get_hyper(h)` ---

def sweep(key: str, values: Iterable[Any]) -> list[Point]:
  """One key over several values: `[{key: v} for v in values]`."""
  values = list(values)
  if not key.startswith("config."):
    raise ValueError(f"sweep key {key!r} must start with 'config.'")
  if not values:
    raise ValueError(f"sweep over {key!r} has no values")
  return [{key: v} for v in values]


def fixed(key: str, value: Any) -> list[Point]:
  """One key at one value, to combine with `product` (not part of the variant names)."""
  return [{key: value}]


def product(sweeps: Sequence[list[Point]]) -> list[Point]:
  """The Cartesian product of several sweeps; the last one varies fastest."""
  out: list[Point] = [{}]
  for part in sweeps:
    out = [_merge(a, b) for a in out for b in part]
  return out


def zipit(sweeps: Sequence[list[Point]]) -> list[Point]:
  """Sweeps of equal length taken side by side: point i merges the i-th point of each."""
  lengths = {len(s) for s in sweeps}
  if len(lengths) > 1:
    raise ValueError(f"zipit needs sweeps of equal length, got lengths {sorted(lengths)}")
  return [_merge_all(points) for points in zip(*sweeps)]


def chainit(sweeps: Sequence[list[Point]]) -> list[Point]:
  """Several sweeps one after another (the paper's separate ablations)."""
  return [dict(p) for part in sweeps for p in part]


def _merge(a: Point, b: Point) -> Point:
  clash = sorted(set(a) & set(b))
  if clash:
    raise ValueError(f"sweep key {clash[0]!r} is set twice in one point")
  return {**a, **b}


def _merge_all(points: Iterable[Point]) -> Point:
  out: Point = {}
  for p in points:
    out = _merge(out, p)
  return out


class Hyper:
  """The namespace handed to `get_hyper(h)`."""
  sweep = staticmethod(sweep)
  fixed = staticmethod(fixed)
  product = staticmethod(product)
  zipit = staticmethod(zipit)
  chainit = staticmethod(chainit)


# --- variants ---

@dataclasses.dataclass
class Variant:
  """One point of a sweep.

  Attributes:
    name: readable name from the swept keys, e.g. `method=zppo,I=4`; also its directory name.
    point: the overrides, `{"config.a.b": value}`.
    index: position in the full sweep (stable when `--only` selects a subset).
    swept: the keys that vary across the sweep and so appear in the name.
    same_as: the name of an earlier variant with an identical resolved config, whose workdir
      this one shares, or None.
  """
  name: str
  point: Point
  index: int
  swept: tuple[str, ...]
  same_as: str | None = None

  def overrides(self) -> list[str]:
    """The point as `zppo train` flags: `--config.a.b=value`."""
    return [f"--{key}={format_value(value)}" for key, value in self.point.items()]

  def label(self, key: str) -> str | None:
    """This variant's value of a swept key as text, or None when it does not set the key."""
    return format_value(self.point[key]) if key in self.point else None

  @property
  def run_name(self) -> str:
    """The directory the variant trains in (that of `same_as` when there is one)."""
    return self.same_as or self.name


def format_value(value: Any) -> str:
  """A sweep value as a flag value (`--config.x=<this>`)."""
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def short_key(key: str, keys: Sequence[str]) -> str:
  """The alias of a swept key, or its shortest dotted suffix that no other key shares."""
  if key in ALIASES and list(ALIASES.values()).count(ALIASES[key]) == 1:
    return ALIASES[key]
  parts = key.split(".")
  others = [k.split(".") for k in keys if k != key]
  for n in range(1, len(parts)):
    if all(o[-n:] != parts[-n:] for o in others):
      return ".".join(parts[-n:])
  return ".".join(parts[1:])


def _name_value(value: Any) -> str:
  text = format_value(value)
  if "/" in text:  # A checkpoint path or hub id: its last part names it.
    text = text.rstrip("/").rsplit("/", 1)[-1]
  return re.sub(r"[^A-Za-z0-9._+\-]", "_", text) or "_"


def variant_name(point: Point, keys: Sequence[str], among: Sequence[str] | None = None) -> str:
  """`alias=value,...` over `keys` that `point` sets, in order (`base` when there are none).

  Args:
    among: all swept keys, which the short names must tell apart (default `keys`).
  """
  among = keys if among is None else among
  parts = [f"{short_key(k, among)}={_name_value(point[k])}" for k in keys if k in point]
  return ",".join(parts) or "base"


def make_variants(points: Sequence[Point]) -> list[Variant]:
  """Names the points of a sweep; raises when two different points would share a name.

  A key that takes more than one value across the sweep is part of the names. A key with one
  value that only some points set (a one-point ablation in a `chainit`, or a `fixed` key of one
  part) joins the name of a point only when that point would otherwise have no name or share it.
  """
  keys: list[str] = []
  for p in points:
    keys.extend(k for k in p if k not in keys)
  values = {k: {format_value(p[k]) for p in points if k in p} for k in keys}
  multi = [k for k in keys if len(values[k]) > 1]
  partial = [k for k in keys if len(values[k]) == 1 and any(k not in p for p in points)]
  base = [variant_name(p, multi) for p in points]
  counts = {n: sum(b == n for b in base) for n in base}
  named = list(multi)
  keys_of = []
  for p, b in zip(points, base):
    extra = [k for k in partial if k in p] if b == "base" or counts[b] > 1 else []
    named.extend(k for k in extra if k not in named)
    keys_of.append(multi + extra)
  swept = tuple(k for k in keys if k in named)
  variants, seen = [], {}
  for point, own in zip(points, keys_of):
    name = variant_name(point, [k for k in swept if k in own], swept)
    if name in seen:
      if seen[name] == point:
        continue  # The very same point listed twice: one variant.
      raise ValueError(f"sweep points {seen[name]} and {point} both get the name {name!r}")
    seen[name] = point
    variants.append(Variant(name, dict(point), len(variants), swept))
  return variants


def load_hyper(config_path: str) -> list[Point]:
  """Calls `get_hyper(Hyper)` of a config file, or `get_hyper(Hyper, arg)` for `path:arg` (the
  same argument `get_config` gets: `configs/demo.py:compare` names the demo's comparison)."""
  spec, _, arg = config_path.partition(":")
  path = pathlib.Path(spec)
  if not path.exists():
    raise FileNotFoundError(f"config file {spec} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"_zppo_sweep_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_hyper"):
    raise ValueError(f"{spec} has no get_hyper(h): it defines no sweep")
  points = module.get_hyper(Hyper, arg) if arg else module.get_hyper(Hyper)
  if not points or not all(isinstance(p, dict) for p in points):
    raise ValueError(f"get_hyper of {spec} must return a non-empty list of dicts, got {points!r}")
  for p in points:
    bad = [k for k in p if not k.startswith("config.")]
    if bad:
      raise ValueError(f"get_hyper of {spec}: key {bad[0]!r} does not start with 'config.'")
  return points


def mark_duplicates(variants: Sequence[Variant], resolved: Sequence[dict]) -> None:
  """Sets `same_as` on variants whose resolved config equals an earlier variant's."""
  first: dict[str, str] = {}
  for variant, config in zip(variants, resolved):
    key = json.dumps(config, sort_keys=True, default=str)
    if key in first:
      variant.same_as = first[key]
    else:
      first[key] = variant.name


def select(variants: Sequence[Variant], pattern: str | None) -> list[Variant]:
  """The variants `--only=PATTERN` picks.

  PATTERN is one or more alternatives separated by `|`. An alternative with a glob character
  (`*?[`) matches whole names (`method=grpo*`); otherwise it is a list of `key=value` items that
  must all be in the name (`method=zppo` picks `method=zppo,I=4` and `method=zppo,I=8`).
  """
  if not pattern:
    return list(variants)
  chosen = []
  for v in variants:
    items = set(v.name.split(","))
    for alt in pattern.split("|"):
      if any(c in alt for c in "*?[") and fnmatch.fnmatchcase(v.name, alt):
        chosen.append(v)
        break
      if not any(c in alt for c in "*?[") and set(alt.split(",")) <= items:
        chosen.append(v)
        break
  return chosen
