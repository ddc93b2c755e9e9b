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
from lmjax.errors import UserError
from lmjax.objectives import cross_entropy_sums
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
  if data is not None:
    return evaluate_file(run, params, data)
  return evaluate(run, params, eval_step, rng, split=split, num_batches=0)


def evaluate_file(run: Run, params, path) -> dict:
  """`lmjax eval --data FILE`: bits per byte of a local text file, every token scored (decoders)."""
  path = paths.path(path)
  if not path.is_file():
    raise UserError(f"--data {path}: no such file")
  text = path.read_bytes().decode("utf-8", errors="replace")
  if not text.strip():
    raise UserError(f"--data {path} is empty")
  window = min(run.cfg.data.seq_len, run.model_cfg.max_len)
  return bits_per_byte(run.model, params, run.tokenizer, text, window=window, stride=max(1, window // 2),
                       batch_size=run.cfg.data.batch_size)


def bits_per_byte(model, params, tokenizer, text: str, *, window: int, stride: int, batch_size: int = 8) -> dict:
  """-log2 p(text) / bytes(text) under a decoder, every token of the text scored with context.

  The text is one token stream, preceded by the tokenizer's EOS (or BOS), the document boundary
  the model was trained with, so that its first token is predicted too. Windows of `window`
  tokens start every `stride` tokens (the sliding-window perplexity of GPT-2 and Hugging Face's
  docs); each window scores only the targets that no earlier window scored, so every token is
  scored exactly once and, past the first window, with at least window - stride tokens of context.
  An encoder (MLM) does not give the probability of a text: it is refused, not approximated.
  """
  if not model.cfg.causal:
    raise UserError("bits per byte needs a decoder (it is -log2 p(text) per byte); an MLM encoder does not give "
                    "p(text): evaluate a GPT workdir, or use lmjax eval without --data for the masked-token loss")
  start = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id
  if start is None:
    raise UserError("bits per byte needs an EOS or BOS token to predict the first token from; this tokenizer has neither")
  if not 0 < stride <= window:
    raise UserError(f"stride {stride} must be in 1..window ({window})")
  seq = np.asarray([start] + list(tokenizer.encode(text)), np.int32)   # targets are seq[1:]
  n = len(seq) - 1
  inputs, targets, weights = [], [], []
  scored = 0
  for begin in range(0, max(n, 1), stride):
    end = min(begin + window, n)          # this window's targets are seq[begin + 1 : end + 1]
    pad = window - (end - begin)
    inputs.append(np.pad(seq[begin:end], (0, pad)))
    targets.append(np.pad(seq[begin + 1:end + 1], (0, pad)))
    weights.append(np.pad((np.arange(begin, end) >= scored).astype(np.float32), (0, pad)))
    scored = end
    if end == n:
      break

  @jax.jit
  def nll_sum(params, ids_BxW, targets_BxW, weights_BxW):
    # Causal: the padding after a short last window is never seen by the tokens before it.
    logits_BxWxV = model.apply({"params": params}, ids_BxW).logits
    return cross_entropy_sums(logits_BxWxV, targets_BxW, weights_BxW)["nll"]

  total = 0.0
  for i in range(0, len(inputs), batch_size):
    chunk = slice(i, i + batch_size)
    rows = len(inputs[chunk])
    fill = lambda a: np.stack(a + [np.zeros_like(a[0])] * (batch_size - rows))   # one compiled shape
    total += float(nll_sum(params, fill(inputs[chunk]), fill(targets[chunk]), fill(weights[chunk])))
  n_bytes = len(text.encode("utf-8"))
  return {"tokens": n, "bytes": n_bytes, "loss": total / n, "perplexity": math.exp(total / n),
          "bits_per_byte": total / math.log(2) / n_bytes, "window": window, "stride": stride}


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
