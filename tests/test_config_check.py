"""Start-up checks of `zppo`: one-line errors before any work, and `--help` for every command."""
import pathlib

import ml_collections
import pytest

from zppo_jax import cli
from zppo_jax.train.config_check import ConfigError, check_config, parse_checked

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flag, expected", [
    ("--no_such_flag=1", "no_such_flag"),
    ("--config.no_such_key=1", "no_such_key"),
    ("--config.rl.no_such_key=1", "rl.no_such_key"),
    ("--config.seed=abc", "--config.seed=abc"),
    ("--config.data.shuffle=maybe", "shuffle"),
    ("--config=configs/no_such_config.py", "no_such_config.py"),
    ("--config.method=nonsense", "'nonsense' is not one of"),
    ("--config.rl.adv_norm=sometimes", "without_zero"),
])
def test_bad_flags_are_one_line_errors_before_any_work(flag, expected, tmp_path, capsys):
  # The demo config's warm start takes minutes: these must stop before it (and before JAX work).
  code = cli.main(["train", flag, f"--workdir={tmp_path / 'run'}"])
  err = capsys.readouterr().err
  assert code == 2
  assert err.startswith("zppo train: error: ") and expected in err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert not (tmp_path / "run").exists()


def test_every_config_file_passes_and_undeclared_keys_fail(tmp_path):
  for path in sorted((REPO / "configs").glob("*.py")):
    parse_checked([f"--config={path}"])
  (tmp_path / "extra.py").write_text(
      "from zppo_jax.train.config import base_config\n"
      "def get_config():\n  c = base_config()\n  c.rl.not_declared = 3\n  return c\n")
  with pytest.raises(ConfigError, match=r"rl.not_declared is not a config key"):
    parse_checked([f"--config={tmp_path / 'extra.py'}"])
  values = parse_checked([f"--config={REPO / 'configs' / 'demo.py'}:tiny"])[0].to_dict()
  values["seed"], values["rl"]["group_sizes"] = "zero", 3
  with pytest.raises(ConfigError, match=r"rl.group_sizes is not a config key \(did you mean "
                     r"rl.group_size\?\).*seed='zero' must be int"):
    check_config(ml_collections.ConfigDict(values))


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_help_for_every_command(name, capsys):
  with pytest.raises(SystemExit) if name not in cli.DOC_HELP and name != "data" else _no_raise():
    assert cli.main([name, "--help"]) == 0
  out = capsys.readouterr().out
  assert f"zppo {name}" in out


class _no_raise:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False
