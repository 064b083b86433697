"""Checks a run's config before any work: flags, key names, value types and method names.

`parse_checked` wraps `config.parse_args`: every parse failure (an unknown flag or key, a value of
the wrong type, a missing config file) becomes one `ConfigError` line, and the parsed config is
compared with the declared schema (`config.base_config()`: no undeclared keys, each value of its
field's type) and with the registries of named choices (`config.METHODS`, `rl.advantages.NORMS`).
The comparison is generic, so it follows the schema as fields are added or renamed.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Mapping

from absl import flags as absl_flags
import ml_collections

from zppo_jax.errors import UserError
from zppo_jax.train import config as config_lib


class ConfigError(UserError):
  """A flag or config value that cannot start a run."""


def _methods() -> list[str]:
  return sorted(config_lib.METHODS)


def _adv_norms() -> list[str]:
  from zppo_jax.rl.advantages import NORMS  # Imports JAX: only when a config is checked.
  return list(NORMS)


# Dotted key -> its allowed values (read from the registry that defines them).
CHOICES: dict[str, Callable[[], list[str]]] = {"method": _methods, "rl.adv_norm": _adv_norms}


def parse_checked(argv: list[str], extra_flags: dict[str, str] | None = None):
  """`config.parse_args`, then `check_config`; every failure is a one-line `ConfigError`.

  Args:
    argv: command-line arguments without the program name.
    extra_flags: further string flags of the sub-command, name -> default.

  Returns:
    (config, flag values), as `config.parse_args`.
  """
  try:
    config, flags = config_lib.parse_args(argv, extra_flags)
    config.to_dict()  # The config file is loaded lazily: make its errors surface here.
  except absl_flags.Error as err:
    raise ConfigError(_first_line(err)) from None
  except (AttributeError, KeyError) as err:  # `--config.no.such.key=...`
    raise ConfigError(_unknown_key(argv, err)) from None
  except OSError as err:  # A config file that is missing or does not load.
    raise ConfigError(_config_file_error(argv, err)) from None
  check_config(config)
  return config, flags


def check_config(config: ml_collections.ConfigDict,
                 schema: ml_collections.ConfigDict | None = None) -> None:
  """Raises `ConfigError` for an undeclared key, a value of the wrong type, or an unknown choice.

  Args:
    config: the parsed run config.
    schema: the declared fields (default `config.base_config()`).
  """
  schema = _declared(config) if schema is None else schema
  problems = _against_schema(config.to_dict(), schema.to_dict(), "")
  flat = _flatten(config.to_dict())
  for key, options in CHOICES.items():
    if key in flat and flat[key] not in options():
      problems.append(f"{key}={flat[key]!r} is not one of {', '.join(options())}")
  if problems:
    raise ConfigError("; ".join(problems))


def _declared(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.base_config()`, plus the demo's own group when the run is the demo."""
  schema = config_lib.base_config()
  if "demo" in config:
    import runpy  # The demo's fields are declared beside its config (`configs/demo.py`).
    demo = runpy.run_path(str(config_lib.REPO_ROOT / "configs" / "demo.py"))
    schema.demo = demo["demo_fields"]()
  return schema


def _against_schema(values: Mapping[str, Any], schema: Mapping[str, Any], prefix: str
                    ) -> list[str]:
  problems = []
  for key, value in values.items():
    name = prefix + key
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema), n=1)
      problems.append(f"{name} is not a config key" + (f" (did you mean {prefix}{close[0]}?)"
                                                        if close else ""))
    elif isinstance(schema[key], Mapping):
      if isinstance(value, Mapping):
        problems += _against_schema(value, schema[key], name + ".")
      else:
        problems.append(f"{name} must be a group of keys, not {type(value).__name__}")
    elif not _same_type(value, schema[key]):
      problems.append(f"{name}={value!r} must be {type(schema[key]).__name__}")
  return problems


def _same_type(value: Any, declared: Any) -> bool:
  """Whether a value fits a declared default's type (ints are floats; None fits anything)."""
  if value is None or declared is None:
    return True
  if isinstance(declared, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(declared, bool)
  if isinstance(declared, float):
    return isinstance(value, (int, float))
  if isinstance(declared, (list, tuple)):
    return isinstance(value, (list, tuple))
  return isinstance(value, type(declared))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _first_line(err: BaseException) -> str:
  text = str(err).strip()
  return text.splitlines()[0] if text else type(err).__name__


def _unknown_key(argv: list[str], err: BaseException) -> str:
  missing = str(err).strip("'\"")
  for arg in argv:
    match = re.match(r"--config\.([\w.]+)", arg)
    if match and missing in match.group(1).split("."):
      return f"--config.{match.group(1)}: {missing!r} is not a config key"
  return f"unknown config key {missing!r}"


def _config_file_error(argv: list[str], err: BaseException) -> str:
  paths = [a.split("=", 1)[1] if "=" in a else "" for a in argv if a.startswith("--config=")]
  paths += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
  detail = [line.strip() for line in str(err).splitlines() if line.strip().startswith("[Errno")]
  where = paths[0] if paths else config_lib.DEFAULT_CONFIG
  return f"config file {where} cannot be loaded: {detail[0] if detail else _first_line(err)}"
