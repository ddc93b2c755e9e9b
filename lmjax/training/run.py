"""A run's setup, read from the config once, at the edge: workdir checks, tokenizer, model,
objective and the batches of each split. The loop, evaluation and fine-tuning share it.

    run = setup(cfg, workdir)
    it = batches(run, "eval", num_batches=20)
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import socket
import time
from typing import Callable

import jax
import ml_collections

from lmjax import checkpoint, models, objectives, paths
from lmjax.data import pipeline, sources, tokenizer as tokenizers
from lmjax.errors import UserError
from lmjax.training import distributed

# What a rerun in the same workdir must not change: the structure of the saved state (shapes,
# dtypes, the optimizer state's tree) or of the data stream it resumes. Judged against config.json
# before anything is written. Everything else (steps, lr, logging, eval cadence) may change.
FIXED_KEYS = ("seed", "model.vocab_size", "model.hidden", "model.num_layers", "model.num_heads", "model.mlp_dim",
              "model.max_len", "model.type_vocab_size", "model.causal", "model.heads", "model.num_labels",
              "model.position", "model.activation", "model.norm", "model.tie_embeddings", "model.use_bias",
              "model.norm_bias", "model.param_dtype", "model.scan_layers", "objective.name", "tokenizer.vocab_size",
              "tokenizer.model_type", "optim.name", "optim.freeze_encoder", "data.source", "data.path",
              "data.seq_len", "data.batch_size", "task.name")
# Keys whose value may change but not cross a line that changes the optimizer state's tree.
FIXED_SIDES = {"optim.clip_norm": ("gradient clipping on/off", lambda v: v > 0),
               "optim.layer_decay": ("layer decay on/off", lambda v: v != 1.0),
               # Here, not in FIXED_KEYS: configs saved before the field existed lack it and still resume.
               "model.generator_fraction": ("ELECTRA's generator width", lambda v: v)}
# A config.json written before a model field existed stands for the field's default: a new field's
# default keeps the behaviour from before it (model.norm_bias: True, the LayerNorms had biases).
ABSENT_MEANS = {f"model.{k}": list(v) if isinstance(v, tuple) else v for k, v in models.model_fields().items()}


def config_value(config: dict, key: str):
  """config[section][leaf] as JSON would hold it (tuples as lists), or None where it is absent."""
  node = config
  for part in key.split("."):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return list(node) if isinstance(node, tuple) else node


def config_changes(old: dict, new: dict) -> dict:
  """{key: [old, new]} for every leaf that differs, for config.json's history."""
  def leaves(d, prefix=""):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from leaves(v, f"{prefix}{k}.")
      elif k != "history":
        yield f"{prefix}{k}", list(v) if isinstance(v, tuple) else v
  a, b = dict(leaves(old)), dict(leaves(new))
  return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


@dataclasses.dataclass
class Run:
  """What `setup` builds from a config: plain objects the loop and evaluation share."""
  cfg: ml_collections.ConfigDict
  tokenizer: object
  model_cfg: models.TransformerConfig
  model: object
  objective: objectives.Objective
  settings: objectives.Settings
  mode: str
  mesh: object
  source: Callable | None = None   # (split name, tokenizer) -> what batches read; None: cfg.data's corpus


def setup(cfg, workdir, mesh=None, train_tokenizer: bool = False, source=None) -> Run:
  """Tokenizer, model and objective of `cfg`; `mesh` is the one the caller built for
  parallel.mode=mesh; `source` ((split name, tokenizer) -> examples or rows) replaces the corpus (a task)."""
  if source is None:   # fixed once, before the tokenizer reads the train split; config.json records it
    sources.resolve_held_out(cfg.data)
  if train_tokenizer and jax.process_index() == 0 and not tokenizers.has_tokenizer(str(workdir)):
    tokenizers.train_from_config(cfg, str(workdir))
  if train_tokenizer and jax.process_count() > 1:
    distributed.barrier("tokenizer")
  tok = tokenizers.load_tokenizer(str(workdir))
  model_cfg = models.model_config(cfg.model)
  tokenizers.check_vocab(model_cfg.vocab_size, tok)
  objective = objectives.get(cfg.objective.name, model_cfg)
  specials = tuple(i for i in tok.special_ids if i is not None)
  settings = objectives.Settings(**cfg.objective, mask_id=tok.mask_id if tok.mask_id is not None else -1,
                                 special_ids=specials, vocab_size=tok.vocab_size)
  return Run(cfg, tok, model_cfg, models.build(model_cfg), objective, settings, cfg.parallel.mode, mesh, source)


def batches(run: Run, split: str, *, num_batches: int = 0, sharded: bool = True) -> pipeline.BatchIterator:
  """Batches of `split` ("train", "eval" or a split's name) in the objective's row layout;
  `sharded`: this process's share of each global batch (else all of it, as one process)."""
  source = None if run.source is None else (lambda name: run.source(name, run.tokenizer))
  return pipeline.iterator_from_config(
      run.cfg, run.tokenizer, split, kind=run.objective.batch, source=source, num_batches=num_batches,
      process_index=jax.process_index() if sharded else 0, process_count=jax.process_count() if sharded else 1)


def check_workdir(workdir, cfg) -> None:
  """Before anything compiles or is written: a writable directory, and a config that can resume
  the state saved there (FIXED_KEYS, FIXED_SIDES)."""
  workdir = paths.path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write-test-{jax.process_index()}"   # one per process: no race on unlink
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable ({e.strerror or e}); choose another --workdir") from None
  if (workdir / "config.json").exists():
    saved, new = checkpoint.read_config(workdir), cfg.to_dict()
    for key in FIXED_KEYS:
      old, now = config_value(saved, key), config_value(new, key)
      old = ABSENT_MEANS.get(key) if old is None else old
      if old != now:
        raise UserError(f"{workdir} holds a run with {key}={old!r}, this config says {now!r}; nothing was "
                        f"changed. Rerun with the run's own config ({workdir / 'config.json'}) or a new --workdir")
    for key, (what, side) in FIXED_SIDES.items():
      old, now = config_value(saved, key), config_value(new, key)
      if old is not None and now is not None and side(old) != side(now):
        raise UserError(f"{workdir} holds a run with {key}={old!r}, this config says {now!r} ({what} changes "
                        "the optimizer state); nothing was changed. Keep the run's setting or use a new --workdir")
  t = cfg.train
  if t.steps < cfg.optim.warmup_steps:
    raise UserError(f"train.steps={t.steps} is smaller than optim.warmup_steps={cfg.optim.warmup_steps}; "
                    "the learning rate would never finish warming up")


def record_config(workdir, cfg, step: int) -> None:
  """config.json = this config, plus the history of the configs the run was resumed with: each
  resume that changed a key adds {"step", "time", "changed": {key: [old, new]}}."""
  workdir = paths.path(workdir)
  new = cfg.to_dict()
  history = []
  if (workdir / "config.json").exists():
    saved = checkpoint.read_config(workdir)
    history = saved.pop("history", [])
    changed = config_changes(saved, new)
    if changed:
      history.append({"step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": changed})
  checkpoint.write_config(workdir, {**new, **({"history": history} if history else {})})


@contextlib.contextmanager
def workdir_lock(workdir):
  """One `lmjax train` per workdir: an exclusive lock on WORKDIR/.lock, held by process 0 while
  it trains. The kernel releases it when the process dies, so a killed run leaves nothing stuck.
  A URL workdir (gs://) has no file locks: there the rule is the user's to keep."""
  workdir = paths.path(workdir)
  if jax.process_index() != 0 or paths.is_url(workdir):
    yield
    return
  path = workdir / ".lock"
  f = open(path, "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise UserError(f"{workdir} is being trained by {holder}; wait for it to finish (or stop it) "
                    "before rerunning, or use another --workdir") from None
  f.seek(0)
  f.truncate()
  f.write(f"lmjax train pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
  f.flush()
  try:
    yield
  finally:
    f.close()   # closing releases the lock; the file stays, empty of meaning until the next lock
