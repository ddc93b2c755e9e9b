"""Held-out figures of a model: the objective's metrics on a split, loss and bits per byte on a
text file, and the unigram baseline a language model must beat.

    metrics = evaluate_workdir("runs/gpt_tiny")                      # `lmjax eval`
    metrics = evaluate_workdir("runs/gpt_tiny", data="book.txt")     # `lmjax eval --data`
"""
from __future__ import annotations

import functools
import math

import jax
import ml_collections
import numpy as np

from lmjax import checkpoint, paths
from lmjax.data import pipeline
from lmjax.errors import UserError
from lmjax.training import parallel, steps
from lmjax.training.run import Run, batches, setup


def eval_rng(rng):
  """The masks and dropout-free randomness of every evaluation: fixed, so evaluations compare like with like."""
  return jax.random.fold_in(rng, 2 ** 31 - 1)


def evaluate(run: Run, params, eval_step, rng, split: str = "eval", num_batches: int | None = None) -> dict:
  """Token-weighted means over `num_batches` batches of a split (default cfg.train.eval_batches;
  0 = one whole pass, single-process only: hosts' shards could end at different batches)."""
  it = batches(run, split, num_batches=run.cfg.train.eval_batches if num_batches is None else num_batches)
  return mean_metrics(eval_step(params, parallel.put_batch(b, run.mode, run.mesh), eval_rng(rng)) for b in it)


def mean_metrics(per_batch) -> dict:
  """Averages batch metrics weighted by the batch's target count (the first *_weight key).
  Perplexity is recomputed from the mean log-perplexity, not averaged."""
  sums, total = {}, 0.0
  for m in per_batch:
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    weight = next(v for k, v in m.items() if k.endswith("_weight"))
    total += weight
    for k, v in m.items():
      if k.endswith("_weight"):
        sums[k] = sums.get(k, 0.0) + v
      else:
        value = math.log(v) if k == "perplexity" else v
        sums[k] = sums.get(k, 0.0) + weight * value
  if total == 0:
    raise UserError("the eval split produced no targets; is it empty?")
  out = {k: (v if k.endswith("_weight") else v / total) for k, v in sums.items()}
  if "perplexity" in out:
    out["perplexity"] = math.exp(out["perplexity"])
  return out


def evaluate_workdir(workdir, split: str = "validation", data: str | None = None) -> dict:
  """`lmjax eval`: metrics of a pretraining run's newest checkpoint on a split of its data, or on a
  local text file (then with bits per byte)."""
  workdir = paths.path(workdir)
  cfg = ml_collections.ConfigDict(checkpoint.read_config(workdir))
  if "objective" not in cfg:
    raise UserError(f"{workdir} was not trained by lmjax train (no objective in its config.json)")
  cfg.parallel.mode = "jit"
  run = setup(cfg, workdir)
  params = checkpoint.restore_params(workdir)
  eval_step = jax.jit(functools.partial(steps.eval_step, model=run.model, objective=run.objective,
                                        settings=run.settings))
  rng = jax.random.key(cfg.seed)
  if data is None:
    return evaluate(run, params, eval_step, rng, split=split, num_batches=0)
  return evaluate_file(run, params, eval_step, rng, data)


def evaluate_file(run: Run, params, eval_step, rng, path: str) -> dict:
  """Loss, perplexity and bits per byte on one local text file (all of it, in order)."""
  path = paths.path(path)
  if not path.is_file():
    raise UserError(f"--data {path}: no such file")
  text = path.read_bytes().decode("utf-8", errors="replace")
  if not text.strip():
    raise UserError(f"--data {path} is empty")
  cfg = run.cfg
  it = pipeline.make_iterator(run.objective.batch, [text], run.tokenizer, seq_len=cfg.data.seq_len,
                              batch_size=cfg.data.batch_size, seed=cfg.seed, train=False)
  metrics = mean_metrics(eval_step(params, jax.device_put(b), eval_rng(rng)) for b in it)
  weight = next(v for k, v in metrics.items() if k.endswith("_weight"))
  nll = math.log(metrics["perplexity"]) if "perplexity" in metrics else metrics["loss"]
  metrics["perplexity"] = math.exp(nll)
  # Bits per byte: total bits of the predicted tokens over the file's bytes, so models
  # with different tokenizers compare on the same text.
  metrics["bits_per_byte"] = nll * weight / math.log(2) / len(text.encode("utf-8"))
  return metrics


def unigram_perplexity(run: Run, batches_read: int = 50) -> float:
  """Perplexity of a unigram model of the training tokens (add-one smoothed) on the eval
  split: the baseline a language model must beat by a wide margin."""
  counts = np.ones(run.tokenizer.vocab_size)
  train_it = batches(run, "train", sharded=False)
  for _ in range(batches_read):
    b = next(train_it)
    np.add.at(counts, b["input_ids"][real_tokens(b)], 1)
  log_p = np.log(counts / counts.sum())
  nll, n = 0.0, 0
  for b in batches(run, "eval", num_batches=run.cfg.train.eval_batches, sharded=False):
    ids = b["input_ids"][real_tokens(b)]
    nll -= log_p[ids].sum()
    n += ids.size
  return math.exp(nll / max(n, 1))


def unigram_baseline(cfg, workdir) -> float:
  """`unigram_perplexity` of the run in `workdir`, for the summary at the end of `lmjax train`."""
  return unigram_perplexity(setup(cfg, workdir))


def real_tokens(batch) -> np.ndarray:
  mask = batch.get("segment_ids", batch.get("attention_mask"))
  return mask > 0
