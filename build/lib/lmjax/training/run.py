"""A run's setup, read from the config once, at the edge: workdir checks, tokenizer, model,
objective and the batches of each split. The loop, evaluation and fine-tuning share it.

    run = setup(cfg, workdir)
    it = batches(run, "eval", num_batches=20)
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable

import jax
import ml_collections

from lmjax import models, objectives
from lmjax.data import pipeline, tokenizer as tokenizers
from lmjax.errors import UserError
from lmjax.training import distributed

# Config keys a rerun in the same workdir must not change: they fix the shapes of the
# checkpoint or the meaning of its numbers. Everything else (steps, lr, logging) may change.
FIXED_KEYS = ("model.vocab_size", "model.hidden", "model.num_layers", "model.num_heads", "model.mlp_dim",
              "model.max_len", "model.type_vocab_size", "model.causal", "model.heads", "model.position",
              "model.activation", "model.norm", "model.tie_embeddings", "model.use_bias",
              "model.scan_layers", "objective.name", "tokenizer.vocab_size", "tokenizer.model_type")


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


def check_workdir(workdir: pathlib.Path, cfg) -> None:
  """Before anything compiles or is written: writable, and agreeing with a previous run."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write-test-{jax.process_index()}"   # one per process: no race on unlink
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable ({e.strerror}); choose another --workdir") from None
  saved_path = workdir / "config.json"
  if saved_path.exists():
    saved = ml_collections.ConfigDict(json.loads(saved_path.read_text()))
    for key in FIXED_KEYS:
      section, leaf = key.split(".")
      old, new = saved.get(section, {}).get(leaf), cfg[section][leaf]
      if isinstance(old, list):
        old = tuple(old)
      if old != (tuple(new) if isinstance(new, (list, tuple)) else new):
        raise UserError(f"{workdir} holds a run with {key}={old!r}, this config says {new!r}; "
                        f"use a new --workdir, or the run's own config ({saved_path})")
  t = cfg.train
  if t.steps < cfg.optim.warmup_steps:
    raise UserError(f"train.steps={t.steps} is smaller than optim.warmup_steps={cfg.optim.warmup_steps}; "
                    "the learning rate would never finish warming up")
