"""Configs: every experiment loads and builds; overrides are typed and checked before anything compiles."""
import pathlib

import pytest

from lmjax.__main__ import main
from lmjax.config import ConfigError, load_config
from lmjax.models import model_config, param_count

FILES = sorted(p for p in (pathlib.Path(__file__).resolve().parent.parent / "experiments").glob("*.py")
               if p.name != "__init__.py")
# A config defines get_config(); the rest are scripts run with python (the PyTorch reference runs).
EXPERIMENTS = [p for p in FILES if "\ndef get_config(" in p.read_text()]
SCRIPTS = [p for p in FILES if p not in EXPERIMENTS]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_loads_and_documents_its_command(path):
  cfg = load_config(str(path))
  assert param_count(model_config(cfg.model)) > 0
  doc = path.read_text().split('"""')[1]
  assert "lmjax " in doc.splitlines()[0], f"{path.name}: the docstring must start with the command that runs it"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_every_script_documents_its_command(path):
  doc = path.read_text().split('"""')[1]
  assert doc.startswith(f"python experiments/{path.name}"), f"{path.name}: the docstring must start with its command"


def test_overrides_keep_types():
  cfg = load_config(None, ["--config.model.num_layers=2", "--config.optim.lr=1", "--config.model.heads=('mlm',)",
                           "--config.model.scan_layers=true", "--config.data.source=local"])
  assert cfg.model.num_layers == 2 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
  assert tuple(cfg.model.heads) == ("mlm",) and cfg.model.scan_layers is True and cfg.data.source == "local"


@pytest.mark.parametrize("flag, message", [
    ("--config.model.nope=1", "unknown config key 'model.nope'; valid keys here are"),
    ("--config.modle.hidden=1", "no section 'modle'; sections are"),
    ("--config.model.num_layers=two", "expected a int"),
    ("--config.model.num_layers=1.5", "expected a int, got a float"),
    ("--config.model.scan_layers=maybe", "expected true or false"),
    ("--config.model.position=alibi", "model.position='alibi' is not one of ['learned', 'sinusoidal', 'rotary']"),
    ("--config.parallel.mode=dp", "parallel.mode='dp' is not one of ['jit', 'pmap', 'mesh']"),
])
def test_bad_overrides_name_the_key_and_choices(flag, message):
  with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
    load_config(None, [flag])


def test_cli_prints_one_line_and_exits_2(capsys, tmp_path):
  with pytest.raises(SystemExit) as e:
    main(["train", "--workdir", str(tmp_path), "--config.model.nope=1"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("lmjax train: error: unknown config key") and len(err.splitlines()) == 1
  assert not (tmp_path / "config.json").exists()
