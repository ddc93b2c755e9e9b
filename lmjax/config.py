"""Experiment configs: Python files with `get_config() -> ml_collections.ConfigDict`.

    cfg = load_config("experiments/gpt_tiny.py", ["--config.optim.lr=3e-4"])

Overrides use the convention of Flax's examples and big_vision (`--config.section.key=value`).
Every key must already exist in the file's config and keep its type, so a typo or a
wrong type fails here, before anything compiles.
"""
from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import pathlib
from typing import Any, Sequence

import ml_collections

from lmjax import models, objectives, tasks
from lmjax.data import pipeline, tokenizer
from lmjax.objectives import mlm
from lmjax.errors import UserError
from lmjax.models import config as model_choices
from lmjax.training import loop, optim, parallel

# The experiment configs ship inside the package as `lmjax.experiments` (pyproject.toml maps the
# repo's experiments/ there), so an installed lmjax runs its default job from any directory.
EXPERIMENTS = importlib.resources.files("lmjax.experiments")
DEFAULT_CONFIG = "gpt_tiny"

# Fields whose values come from a fixed set, each taken from the module that defines the set;
# checked with the overrides, before anything compiles.
CHOICES = {
    "objective.name": tuple(objectives.OBJECTIVES),
    "task.name": tuple(tasks.TASKS),
    "objective.masking": mlm.MASKINGS,
    "optim.name": optim.OPTIMIZERS,
    "optim.schedule": optim.SCHEDULES,
    "parallel.mode": parallel.MODES,
    "train.nonfinite": loop.NONFINITE,
    "model.preset": ("",) + tuple(models.PRESETS),
    "tokenizer.model_type": tokenizer.MODEL_TYPES,
    "data.layout": ("",) + tuple(pipeline.LAYOUTS),
    "model.norm": model_choices.NORMS,
    "model.position": model_choices.POSITIONS,
    "model.activation": model_choices.ACTIVATIONS,
    "model.attention": model_choices.ATTENTION,
    "model.remat": model_choices.REMAT,
    "model.dtype": model_choices.DTYPES,
    "model.param_dtype": model_choices.PARAM_DTYPES,
}


class ConfigError(UserError):
  pass


def model_section(preset: str = "", **overrides) -> ml_collections.ConfigDict:
  """Every TransformerConfig field, from a preset, so each one can be overridden by flag."""
  return ml_collections.ConfigDict(models.model_fields(preset, **overrides))


def base_config() -> ml_collections.ConfigDict:
  """Every section and key an experiment may set, with its default. Experiment files
  start from this and change what they study, so each key is documented once, here."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model_section("gpt-tiny")
  c.tokenizer = ml_collections.ConfigDict(dict(
      vocab_size=8192,            # must equal model.vocab_size
      model_type="unigram",       # or "bpe", or "char": the training text's characters (nanoGPT's shakespeare_char)
      byte_fallback=True,
      character_coverage=0.9995,
      sample_chars=20_000_000,    # characters of the corpus to train on
  ))
  c.data = ml_collections.ConfigDict(dict(
      source="default",           # "default" (offline corpus), "local" (data.path), "file" (one text file), or a TFDS name
      path="",                    # local corpus: a directory or glob of .txt / .jsonl / .zip of .txt (several: comma-separated); "file": one file
      train_fraction=0.9,         # source "file": its first 90% of characters train, the rest validation (nanoGPT)
      layout="",                  # rows: "" = the objective's; "stream" = random windows of one token stream (clm)
      txt_docs="file",            # .txt documents: one per "file", or per blank-line "paragraph"
      max_chars=0,                # cap on the corpus size in characters; 0 = all of it
      text_field="text",          # TFDS/JSONL field holding the text; nested TFDS fields as a path, "a/b"
      data_dir="",                # TFDS data_dir (path or gs:// URL); "" = ~/.cache/lmjax/tfds for default/local, TFDS's default otherwise
      train_split="train",        # a split or a TFDS split expression ("train[:99%]")
      eval_split="validation",
      held_out_per_mille=-1,      # eval split carved from train_split by document hash, N per 1000 documents;
                                  # -1: 50 if the dataset has no eval_split, else 0 (the run records which)
      workers=0,                  # grain worker processes that tokenize the train stream; 0 = in this process
      seq_len=128,
      batch_size=16,              # global batch, all devices and hosts together
      short_seq_prob=0.1,         # BERT pairs: share of shorter pairs (as in BERT)
  ))
  c.objective = ml_collections.ConfigDict(dict(
      name="clm",                 # a name in objectives/__init__.py: "clm", "mlm", "mlm_nsp", ...
      mask_rate=0.15,
      masking="token",            # MLM: "token" (BERT), "whole_word", or "span" (SpanBERT)
      max_predictions=20,         # MLM predictions per row; 0 = score all L positions
      z_loss=0.0,
      label_smoothing=0.0,
      electra_weight=50.0,        # electra: lambda, the discriminator loss's weight (Clark et al. 2020)
  ))
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw",               # optim.OPTIMIZERS: "adamw", "adafactor", "lion"
      lr=1e-3,
      schedule="cosine",          # after linear warmup: "linear", "cosine", "inverse_sqrt", "constant"
      warmup_steps=100,
      end_lr_ratio=0.1,
      weight_decay=0.01,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      clip_norm=1.0,
      grad_accum=1,               # micro-batches per update
  ))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000,
      log_every=50,
      eval_every=500,
      eval_batches=20,
      checkpoint_every=500,
      keep=2,                     # last K checkpoints, plus the best by best_metric
      best_metric="loss",         # an eval metric, lower is better; "" keeps only the last K
      nonfinite="halt",           # "skip" drops the step; "halt" stops with the offending metric
      samples=3,                  # generated (decoders) at the end
  ))
  c.parallel = ml_collections.ConfigDict(dict(
      mode="jit",                 # "jit" (one device), "pmap", or "mesh"
      data=-1, fsdp=1, tensor=1,  # mesh shape; data=-1 takes every device left over
  ))
  return c


def config_path(name: str | None):
  """A config file's path: a file as given, or the name of a shipped experiment (`bert_tiny`,
  `experiments/bert_tiny.py` from any directory); None is the default job."""
  path = pathlib.Path(name or DEFAULT_CONFIG)
  if path.is_file():
    return path
  shipped = EXPERIMENTS / (path.stem + ".py")
  if path.parent.name in ("", "experiments") and shipped.is_file():
    return shipped
  # experiments/ also holds the PyTorch reference scripts, which are not configs.
  known = sorted(p.stem for p in EXPERIMENTS.glob("[!_]*.py") if "def get_config(" in p.read_text())
  raise ConfigError(f"no config file {str(name)!r}; lmjax ships {known}")


def load_config(path: str | None, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  with importlib.resources.as_file(config_path(None if path is None else str(path))) as path:
    spec = importlib.util.spec_from_file_location(f"lmjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} defines no get_config(); a config file returns an ml_collections.ConfigDict")
  cfg = module.get_config()
  apply_overrides(cfg, overrides)
  return cfg


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  for flag in overrides:
    if not flag.startswith("--config.") or "=" not in flag:
      raise ConfigError(f"bad override {flag!r}; write --config.section.key=value")
    key, raw = flag[len("--config."):].split("=", 1)
    set_value(cfg, key, raw)
  check_choices(cfg)


def set_value(cfg: ml_collections.ConfigDict, key: str, raw: str) -> None:
  node, leaf = leaf_of(cfg, key)
  node[leaf] = parse_value(key, raw, node[leaf])


def apply_settings(cfg: ml_collections.ConfigDict, settings, where: str) -> None:
  """Nested {section: {key: value}} (a study arm's changes) onto cfg, with the checks a
  --config flag gets: the key must exist and the value keep its type. `where` names the
  settings in errors."""
  def leaves(node, prefix=""):
    for k, v in node.items():
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        yield from leaves(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}", v
  for key, value in leaves(settings):
    try:
      node, leaf = leaf_of(cfg, key)
      node[leaf] = checked_value(key, value, node[leaf])
    except ConfigError as e:
      raise ConfigError(f"{where}: {e}") from None
  try:
    check_choices(cfg)
  except ConfigError as e:
    raise ConfigError(f"{where}: {e}") from None


def checked_value(key: str, value: Any, old: Any) -> Any:
  """`value` for a key that holds `old`: the same type (an int where a float is, a list where a tuple is)."""
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
    return type(old)(value)
  if old is not None and type(value) is not type(old):
    raise ConfigError(f"{key}={value!r}: expected a {type(old).__name__}, got a {type(value).__name__}")
  return value


def leaf_of(cfg: ml_collections.ConfigDict, key: str):
  """(the section holding `key`, its leaf name), or a ConfigError naming what exists."""
  *parents, leaf = key.split(".")
  node = cfg
  for i, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(f"unknown config key {key!r}: no section {'.'.join(parents[:i + 1])!r}; "
                        f"sections are {sorted(k for k in node if isinstance(node[k], ml_collections.ConfigDict))}")
    node = node[part]
  if leaf not in node:
    raise ConfigError(f"unknown config key {key!r}; valid keys here are {sorted(node.keys())}")
  return node, leaf


def parse_value(key: str, raw: str, old: Any) -> Any:
  if isinstance(old, bool):
    if raw.lower() in ("true", "1", "yes"):
      return True
    if raw.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"--config.{key}={raw!r}: expected true or false")
  if isinstance(old, str):
    return raw
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    raise ConfigError(f"--config.{key}={raw!r}: expected a {type(old).__name__}") from None
  return checked_value(f"--config.{key}", value, old)


def check_choices(cfg: ml_collections.ConfigDict) -> None:
  for key, choices in CHOICES.items():
    section, leaf = key.split(".")
    if section in cfg and leaf in cfg[section] and cfg[section][leaf] not in choices:
      raise ConfigError(f"{key}={cfg[section][leaf]!r} is not one of {list(choices)}")

