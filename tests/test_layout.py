"""The layout's promises: imports run one way with no circles, the model file holds the model,
every package ships, and an installed (not editable) lmjax runs its default job from anywhere."""
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
IMPORT_GRAPH = REPO.parent / "shared" / "tools" / "import_graph.py"
# Lowest first; the README's tour states the same layering.
LAYERS = ("lmjax.errors, lmjax.paths, lmjax.host_malloc < lmjax.models < lmjax.objectives, lmjax.data < lmjax.checkpoint < lmjax.training"
          " < lmjax.inference, lmjax.convert < lmjax.tasks, lmjax.bench < lmjax.config < lmjax.compare < lmjax.__main__")


def test_imports_run_one_way_without_circles():
  if not IMPORT_GRAPH.is_file():
    pytest.fail(f"{IMPORT_GRAPH} not found (the repo's ../shared/tools); CI always has it")
  out = subprocess.run([sys.executable, str(IMPORT_GRAPH), "lmjax", "--layers", LAYERS], cwd=REPO,
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "no circles, no upward imports" in out.stdout


def test_the_model_file_holds_the_model():
  # XLA:CPU's tricks are called by name from models/xla_cpu.py; the blocks themselves hold none.
  text = (REPO / "lmjax" / "models" / "layers.py").read_text()
  assert "from lmjax.models import xla_cpu" in text
  for machinery in ("custom_vjp", "lax.cond", "platform_dependent", '"cpu"', "_in_memory"):
    assert machinery not in text, machinery


def test_every_package_is_listed_for_the_wheel():
  listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
  found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "lmjax").rglob("__init__.py")}
  assert found | {"lmjax.experiments"} == listed


@pytest.mark.slow
def test_installed_wheel_trains_from_outside_the_checkout(tmp_path):
  # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds.
  src = tmp_path / "src"
  for name in ("lmjax", "experiments"):
    shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md", "requirements.txt"):
    shutil.copy2(REPO / name, src / name)
  wheels = tmp_path / "wheels"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                  str(wheels), str(src)], check=True, capture_output=True)
  site = tmp_path / "site"
  with zipfile.ZipFile(next(wheels.glob("lmjax-*.whl"))) as whl:
    names = whl.namelist()
    whl.extractall(site)
  assert "lmjax/experiments/gpt_tiny.py" in names and "lmjax/models/xla_cpu.py" in names
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(site), PYTHONUNBUFFERED="1")
  where = subprocess.run([sys.executable, "-c", "import lmjax; print(lmjax.__file__)"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, check=True)
  assert where.stdout.startswith(str(site))   # the installed copy, not the checkout
  tiny = ["--config.model.hidden=32", "--config.model.num_heads=2", "--config.model.mlp_dim=64",
          "--config.model.num_layers=1", "--config.model.vocab_size=384", "--config.model.max_len=32",
          "--config.tokenizer.vocab_size=384", "--config.tokenizer.sample_chars=100000",
          "--config.data.seq_len=32", "--config.data.batch_size=4", "--config.data.max_chars=100000",
          f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.train.steps=2", "--config.train.eval_every=2",
          "--config.train.eval_batches=1", "--config.train.checkpoint_every=2", "--config.train.samples=1",
          "--config.optim.warmup_steps=1"]
  run = subprocess.run([sys.executable, "-m", "lmjax", "train", "--workdir", "runs/x", *tiny], cwd=elsewhere,
                       env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr
  assert "lmjax train: done." in run.stdout and "--- sample ---" in run.stdout
  assert (elsewhere / "runs" / "x" / "checkpoints" / "2").is_dir()
