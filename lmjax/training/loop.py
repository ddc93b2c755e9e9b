"""`lmjax train` and `lmjax eval`: the loop around the compiled step.

Everything with side effects lives here (data, logging, checkpoints, signals); the
step itself (training/steps.py) is pure. A run is a workdir:

  WORKDIR/config.json       the experiment config (a rerun must agree with it)
  WORKDIR/tokenizer.model   trained on the first run, reused after
  WORKDIR/checkpoints/      orbax: params, optimizer state, step, rng, data iterator state
  WORKDIR/metrics.jsonl     one JSON object per line: step, split, metrics
  WORKDIR/tensorboard/      the same metrics as event files

Rerunning the same command resumes from the newest readable checkpoint and produces
the same losses and params, bit for bit, as a run that never stopped.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import signal
import sys
import time

import jax
import ml_collections
import numpy as np

from lmjax import models, objectives
from lmjax.data import pipeline, tokenizer as tokenizers
from lmjax.errors import UserError
from lmjax.training import checkpoint, distributed, optim, parallel, steps
from lmjax.training.flops import peak_flops, train_flops_per_token
from lmjax.training.metrics import MetricsWriter, Progress
from lmjax.training.state import TrainState

# Config keys a rerun in the same workdir must not change: they fix the shapes of the
# checkpoint or the meaning of its numbers. Everything else (steps, lr, logging) may change.
FIXED_KEYS = ("model.vocab_size", "model.hidden", "model.num_layers", "model.num_heads", "model.mlp_dim",
              "model.max_len", "model.type_vocab_size", "model.causal", "model.heads", "model.position",
              "model.activation", "model.norm", "model.tie_embeddings", "model.use_bias",
              "model.scan_layers", "objective.name", "tokenizer.vocab_size", "tokenizer.model_type")


@dataclasses.dataclass
class Run:
  """What `setup` builds from a config: plain objects the loop and eval share."""
  cfg: ml_collections.ConfigDict
  tokenizer: object
  model_cfg: models.TransformerConfig
  model: object
  objective: objectives.Objective
  settings: objectives.Settings
  mode: str
  mesh: object


def setup(cfg, workdir, mesh=None, train_tokenizer: bool = False) -> Run:
  """Reads the config once, at the edge: tokenizer, model, objective; `mesh` is the one the
  caller built for parallel.mode=mesh."""
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
  return Run(cfg, tok, model_cfg, models.build(model_cfg), objective, settings, cfg.parallel.mode, mesh)


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


class Preemption:
  """SIGTERM/SIGINT: finish the current step, save, exit. A second signal exits at once."""

  def __init__(self):
    self.signal = None
    self.previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      self.previous[sig] = signal.signal(sig, self.handle)

  def handle(self, signum, frame):
    if self.signal is not None:
      print(f"lmjax train: second {signal.Signals(signum).name}, exiting now without saving", file=sys.stderr)
      os._exit(128 + signum)
    self.signal = signal.Signals(signum).name
    print(f"lmjax train: {self.signal} received; finishing this step, then saving", file=sys.stderr)

  def restore(self):
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)


def train(cfg, workdir, *, init_params=None, coordinator=None, num_processes=None, process_id=None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final eval metrics.

  init_params: pretrained params (fine-tuning) that replace the fresh initialisation
  wherever the paths match; parts they lack (a new task head) stay freshly initialised.
  Ignored when the workdir already holds a checkpoint to resume.
  """
  distributed.initialize(coordinator, num_processes, process_id)
  workdir = pathlib.Path(workdir).resolve()
  check_workdir(workdir, cfg)
  mode = cfg.parallel.mode
  mesh = parallel.mesh_from_config(cfg.parallel)
  parallel.check_batch_size(cfg.data.batch_size, mode, mesh, cfg.optim.grad_accum)
  run = setup(cfg, workdir, mesh, train_tokenizer=True)
  t = cfg.train
  tx, schedule = optim.optimizer_from_config(cfg.optim, t.steps)
  if jax.process_index() == 0:
    # Written once the config has proved valid, so a failed start leaves nothing to disagree with.
    checkpoint.write_config(workdir, cfg.to_dict())
  rng = jax.random.key(cfg.seed)

  step_fn = functools.partial(steps.train_step, model=run.model, objective=run.objective,
                              settings=run.settings, tx=tx, grad_accum=cfg.optim.grad_accum)
  eval_fn = functools.partial(steps.eval_step, model=run.model, objective=run.objective, settings=run.settings)
  state = parallel.create_state(mode, run.model_cfg, tx, rng, mesh)
  train_iter = pipeline.iterator_from_config(cfg, run.tokenizer, "train", process_index=jax.process_index(),
                                             process_count=jax.process_count())

  mngr = checkpoint.open_manager(workdir, keep=t.keep, best_metric=t.best_metric)
  start = resume(mngr, state, train_iter, mode)
  if start is not None:
    state = start
  elif init_params is not None:
    state = start_from(state, init_params, mode, mesh, run.model_cfg, tx)
  step = int(parallel.host_state(state, mode).step)
  train_step = parallel.compile_train_step(step_fn, mode, state, mesh)
  eval_step = parallel.compile_eval_step(eval_fn, mode, mesh)

  writer = MetricsWriter(workdir, resume_step=step)
  tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
  flops_per_token = train_flops_per_token(run.model_cfg, cfg.data.seq_len,
                                          cfg.objective.max_predictions if not run.model_cfg.causal else 0)
  peak, peak_source = peak_flops()
  devices = jax.device_count()
  log_start(run, state, mode, mesh, flops_per_token, peak_source, step)

  preempt = Preemption()
  progress = Progress(step, t.steps, t.log_every)
  pending = None          # (step, metrics on device): read one step late so the device stays busy
  eval_metrics = {}
  clock = Clock(step, tokens_per_step, flops_per_token, peak * devices)
  try:
    while step < t.steps and preempt.signal is None:
      batch = parallel.put_batch(next(train_iter), mode, mesh)
      state, metrics = train_step(state, batch, rng)
      step += 1
      data_state = train_iter.get_state()
      if pending is not None:
        report(pending, t, writer, progress, schedule, clock)
      pending = (step, metrics)
      at_eval = step % t.eval_every == 0 or step == t.steps
      if at_eval or step % t.checkpoint_every == 0:
        report(pending, t, writer, progress, schedule, clock)
        pending = None
      if at_eval:
        eval_metrics = evaluate(run, cfg, state.params, eval_step, rng)
        writer.write(step, "eval", eval_metrics)
        progress.message(f"eval at step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in eval_metrics.items()))
        clock.pause()
      if at_eval or step % t.checkpoint_every == 0:
        save(mngr, state, mode, step, rng, data_state, cfg, eval_metrics if at_eval else None)
        clock.pause()
    if pending is not None:
      report(pending, t, writer, progress, schedule, clock)
    if preempt.signal is not None:
      if step not in mngr.all_steps():  # the signal may land just after a scheduled save of this very step
        save(mngr, state, mode, step, rng, train_iter.get_state(), cfg, None)
      mngr.wait_until_finished()
      progress.close()
      print(f"lmjax train: stopped by {preempt.signal} at step {step}; checkpoint saved in "
            f"{checkpoint.checkpoint_dir(workdir)}. Rerun the same command to resume.", file=sys.stderr)
      return eval_metrics
  except NonFinite as e:
    mngr.wait_until_finished()
    progress.close()
    raise UserError(str(e)) from None
  finally:
    preempt.restore()
    mngr.wait_until_finished()
    writer.close()
  progress.close()
  mngr.close()
  finish(run, cfg, workdir, parallel.host_state(state, mode).params, eval_metrics)
  return eval_metrics


class NonFinite(Exception):
  pass


class Clock:
  """Throughput over the steps since the last reading; eval and checkpoint time excluded."""

  def __init__(self, step, tokens_per_step, flops_per_token, peak_flops):
    self.tokens_per_step, self.flops_per_token, self.peak = tokens_per_step, flops_per_token, peak_flops
    self.step, self.time, self.rate = step, time.perf_counter(), 0.0

  def pause(self):
    """Skip the time since the last reading (evaluation, saving)."""
    self.time = time.perf_counter()

  def read(self, step) -> tuple[float, float]:
    """(tokens/s, model FLOPs utilisation) since the last reading."""
    now = time.perf_counter()
    if step > self.step:
      self.rate = self.tokens_per_step * (step - self.step) / max(now - self.time, 1e-9)
    self.step, self.time = step, now
    return self.rate, self.rate * self.flops_per_token / self.peak


def report(pending, t, writer, progress, schedule, clock):
  """Host side of one step: read its metrics, stop on a non-finite one, log."""
  step, metrics = pending
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if metrics.get("nonfinite"):
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if t.nonfinite == "halt":
      raise NonFinite(f"non-finite {', '.join(bad) or 'loss'} at step {step}; stopped without saving "
                      "(train.nonfinite=halt). Lower optim.lr or set train.nonfinite=skip")
    progress.message(f"step {step}: non-finite {', '.join(bad)}; update skipped ({int(metrics['skipped'])} so far)")
  metrics["lr"] = float(schedule(step - 1))
  if step % t.log_every == 0 or step == t.steps:
    metrics["tokens_per_s"], metrics["mfu"] = clock.read(step)
    writer.write(step, "train", metrics)
  progress.update(step, {"loss": metrics["loss"], "lr": metrics["lr"], "tok/s": round(clock.rate),
                         "mfu": f"{100 * clock.rate * clock.flops_per_token / clock.peak:.1f}%"})


def resume(mngr, state: TrainState, train_iter, mode: str):
  """The newest readable checkpoint, restored into `state`'s layout; None to start fresh."""
  global_state = parallel.host_state(state, mode)
  if mode == "pmap":
    # Restore onto one device, then replicate: pmap's stacked layout is not a global array.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), global_state)
  else:
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), global_state)
  found = checkpoint.restore_latest(mngr, target.params, target.opt_state)
  for unreadable in [s for s in mngr.all_steps() if found is None or s > found[0]]:
    # restore_latest skipped these; training writes each again exactly, and orbax will not save over one.
    print(f"lmjax train: removing unreadable checkpoint {unreadable}", file=sys.stderr)
    mngr.delete(unreadable)
  if found is None:
    return None
  step, params, opt_state, meta, data_state = found
  states = data_state["processes"]
  if len(states) == jax.process_count():
    train_iter.set_state(states[jax.process_index()])
  else:
    print(f"lmjax train: checkpoint {step} was written by {len(states)} processes, this run has "
          f"{jax.process_count()}; the data shards continue after the furthest document read",
          file=sys.stderr)
    train_iter.set_state(pipeline.reshard_state(states, jax.process_index(), jax.process_count()))
  restored = global_state.replace(step=np.int32(step), params=params, opt_state=opt_state,
                                  skipped=np.int32(meta.get("skipped", 0)))
  if mode == "pmap":
    restored = parallel.replicate(restored)
  elif mode == "jit":
    restored = jax.device_put(restored)
  else:
    restored = restored.replace(step=jax.device_put(restored.step, global_state.step.sharding),
                                skipped=jax.device_put(restored.skipped, global_state.skipped.sharding))
  print(f"lmjax train: resumed from checkpoint {step}", file=sys.stderr)
  return restored


def start_from(state: TrainState, init_params, mode, mesh, model_cfg, tx) -> TrainState:
  """`state` with its params replaced by `init_params` where paths match, optimizer state fresh."""
  fresh = parallel.host_state(state, mode)
  flat_init = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(init_params)}

  def pick(path, x):
    y = flat_init.get(jax.tree_util.keystr(path))
    if y is None:
      return np.asarray(x)
    if y.shape != x.shape:
      raise UserError(f"pretrained {jax.tree_util.keystr(path)} has shape {y.shape}, this model needs "
                      f"{x.shape}; the --init checkpoint's architecture does not fit this config")
    return np.asarray(y, x.dtype)

  params = jax.tree_util.tree_map_with_path(pick, fresh.params)
  host = jax.tree.map(np.asarray, fresh.replace(params=params, opt_state=tx.init(params)))
  return parallel.place_state(host, mode, mesh, model_cfg, tx)


def save(mngr, state, mode, step, rng, data_state, cfg, metrics):
  host = parallel.host_state(state, mode)
  meta = {"step": step, "skipped": int(host.skipped), "rng": checkpoint.rng_to_json(rng)}
  # Process 0 writes the JSON items, so it saves every host's position in its data shard.
  data_states = {"processes": distributed.allgather_json(data_state)}
  checkpoint.save(mngr, step, host.params, host.opt_state, meta, data_states, cfg.to_dict(), metrics)


def evaluate(run: Run, cfg, params, eval_step, rng, split: str = "eval", num_batches: int | None = None) -> dict:
  """Token-weighted means over `num_batches` batches of a split (default cfg.train.eval_batches;
  0 = one whole pass, single-process only: hosts' shards could end at different batches)."""
  it = pipeline.iterator_from_config(cfg, run.tokenizer, split, process_index=jax.process_index(),
                                     process_count=jax.process_count(),
                                     num_batches=cfg.train.eval_batches if num_batches is None else num_batches)
  eval_rng = jax.random.fold_in(rng, 2 ** 31 - 1)   # fixed masks: evaluations compare like with like
  return mean_metrics(eval_step(params, parallel.put_batch(b, run.mode, run.mesh), eval_rng) for b in it)


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


def log_start(run: Run, state, mode, mesh, flops_per_token, peak_source, step):
  if jax.process_index() != 0:
    return
  params = parallel.host_state(state, mode).params
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  layout = f"mesh {dict(mesh.shape)}" if mesh is not None else mode
  print(f"lmjax train: {n_params:,} params, {jax.device_count()} x {jax.devices()[0].device_kind} "
        f"({jax.process_count()} process{'es' if jax.process_count() > 1 else ''}), {layout}, "
        f"{flops_per_token / 1e6:.1f} MFLOP/token (train), peak from {peak_source}", flush=True)
  print(json.dumps(run.cfg.to_dict(), sort_keys=True), flush=True)
  if step:
    print(f"lmjax train: continuing from step {step}", flush=True)


def unigram_perplexity(run: Run, cfg, batches: int = 50) -> float:
  """Perplexity of a unigram model of the training tokens (add-one smoothed) on the eval
  split: the baseline a language model must beat by a wide margin."""
  counts = np.ones(run.tokenizer.vocab_size)
  train_it = pipeline.iterator_from_config(cfg, run.tokenizer, "train")
  for _ in range(batches):
    b = next(train_it)
    np.add.at(counts, b["input_ids"][real_tokens(b)], 1)
  log_p = np.log(counts / counts.sum())
  nll, n = 0.0, 0
  for b in pipeline.iterator_from_config(cfg, run.tokenizer, "eval", num_batches=cfg.train.eval_batches):
    ids = b["input_ids"][real_tokens(b)]
    nll -= log_p[ids].sum()
    n += ids.size
  return math.exp(nll / max(n, 1))


def real_tokens(batch) -> np.ndarray:
  mask = batch.get("segment_ids", batch.get("attention_mask"))
  return mask > 0


def finish(run: Run, cfg, workdir, params, eval_metrics):
  """End of training: held-out figures against the unigram baseline, and a few samples."""
  if jax.process_index() != 0:
    return
  lines = [f"lmjax train: done. validation {', '.join(f'{k}={v:.4g}' for k, v in eval_metrics.items())}"]
  if run.model_cfg.causal:
    lines.append(f"  perplexity {eval_metrics.get('perplexity', float('nan')):.2f} vs unigram baseline "
                 f"{unigram_perplexity(run, cfg):.2f} (same tokenizer, same split)")
  print("\n".join(lines), flush=True)
  if cfg.train.samples and run.model_cfg.causal:
    from lmjax.inference import generate
    prompts = ["The ", "A list is", "To open a file"][:cfg.train.samples]
    tok = run.tokenizer
    new_ids = generate.generate(run.model, params, [tok.encode(p) for p in prompts],
                                max_new_tokens=min(48, run.model_cfg.max_len // 2), temperature=0.8,
                                top_k=40, seed=0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    for prompt, ids in zip(prompts, new_ids):
      print(f"--- sample ---\n{prompt}{tok.decode(ids)}", flush=True)


def evaluate_cli(workdir, split: str = "validation", data: str | None = None) -> None:
  """`lmjax eval`: one JSON object of metrics on a split of the run's data, or on a local file."""
  workdir = pathlib.Path(workdir)
  cfg = ml_collections.ConfigDict(checkpoint.read_config(workdir))
  if "objective" not in cfg:
    raise UserError(f"{workdir} was not trained by lmjax train (no objective in its config.json)")
  cfg.parallel.mode = "jit"
  if data is not None and cfg.objective.name in ("classify", "span", "seq2seq"):
    from lmjax.training import finetune  # a task file: the task's own scores (accuracy and F1, EM, ROUGE)
    print(json.dumps({k: round(v, 6) for k, v in finetune.evaluate_task(cfg, workdir, data=data).items()}))
    return
  run = setup(cfg, workdir)
  params = checkpoint.restore_params(workdir)
  eval_fn = functools.partial(steps.eval_step, model=run.model, objective=run.objective, settings=run.settings)
  eval_step = jax.jit(eval_fn)
  rng = jax.random.key(cfg.seed)
  if data is None:
    metrics = evaluate(run, cfg, params, eval_step, rng, split=split, num_batches=0)
  else:
    metrics = evaluate_file(run, cfg, params, eval_step, rng, data)
  print(json.dumps({k: round(v, 6) for k, v in metrics.items()}))


def evaluate_file(run: Run, cfg, params, eval_step, rng, path: str) -> dict:
  """Loss, perplexity and bits per byte on one local text file (all of it, in order)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"--data {path}: no such file")
  text = path.read_bytes().decode("utf-8", errors="replace")
  if not text.strip():
    raise UserError(f"--data {path} is empty")
  kind = pipeline.KIND_BY_OBJECTIVE[cfg.objective.name]
  it = pipeline.make_iterator(kind, [text], run.tokenizer, seq_len=cfg.data.seq_len,
                              batch_size=cfg.data.batch_size, seed=cfg.seed, train=False)
  eval_rng = jax.random.fold_in(rng, 2 ** 31 - 1)
  metrics = mean_metrics(eval_step(params, jax.device_put(b), eval_rng) for b in it)
  weight = next(v for k, v in metrics.items() if k.endswith("_weight"))
  nll = math.log(metrics["perplexity"]) if "perplexity" in metrics else metrics["loss"]
  metrics["perplexity"] = math.exp(nll)
  # Bits per byte: total bits of the predicted tokens over the file's bytes, so models
  # with different tokenizers compare on the same text.
  metrics["bits_per_byte"] = nll * weight / math.log(2) / len(text.encode("utf-8"))
  return metrics
