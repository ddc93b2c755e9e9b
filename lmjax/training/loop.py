"""`lmjax train`: the loop around the compiled step.

Everything with side effects of training lives here (logging, checkpoints, signals); the
step itself (steps.py) is pure, the run's setup is run.py, evaluation evaluate.py. A run
is a workdir:

  WORKDIR/config.json       the experiment config (a rerun must agree with it)
  WORKDIR/tokenizer.model   trained on the first run, reused after
  WORKDIR/checkpoints/      orbax: params, optimizer state, step, rng, data iterator state
  WORKDIR/metrics.jsonl     one JSON object per line: step, split, metrics
  WORKDIR/tensorboard/      the same metrics as event files

Rerunning the same command resumes from the newest readable checkpoint and produces
the same losses and params, bit for bit, as a run that never stopped.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import time

import jax
import numpy as np

from lmjax import checkpoint, paths
from lmjax.data import pipeline, sources
from lmjax.errors import Stopped, UserError
from lmjax.training import distributed, optim, parallel, steps
from lmjax.training.evaluate import evaluate
from lmjax.training.flops import peak_flops, train_flops_per_token
from lmjax.training.metrics import MetricsWriter, Progress
from lmjax.training.run import Run, batches, check_workdir, record_config, setup, workdir_lock
from lmjax.training.state import TrainState, graft

NONFINITE = ("skip", "halt")  # train.nonfinite: drop the step and go on, or stop without saving


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


def train(cfg, workdir, *, init_params=None, source=None, coordinator=None, num_processes=None,
          process_id=None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final eval metrics, or raises
  Stopped after saving when a signal asked it to stop.

  init_params: pretrained params (fine-tuning) that replace the fresh initialisation
  wherever the paths match; parts they lack (a new task head) stay freshly initialised.
  Ignored when the workdir already holds a checkpoint to resume.
  source: (split name, tokenizer) -> the examples or rows to read (a fine-tuning task); default cfg.data's corpus.
  """
  distributed.initialize(coordinator, num_processes, process_id)
  workdir = paths.path(workdir)
  check_workdir(workdir, cfg)   # judged before anything in the workdir is written
  with workdir_lock(workdir):
    return _train(cfg, workdir, init_params, source)


def _train(cfg, workdir, init_params, source) -> dict:
  mode = cfg.parallel.mode
  mesh = parallel.mesh_from_config(cfg.parallel)
  parallel.check_batch_size(cfg.data.batch_size, mode, mesh, cfg.optim.grad_accum)
  run = setup(cfg, workdir, mesh, train_tokenizer=True, source=source)
  t = cfg.train
  tx, schedule = optim.optimizer_from_config(cfg.optim, t.steps)
  rng = jax.random.key(cfg.seed)

  step_fn = functools.partial(steps.train_step, model=run.model, objective=run.objective,
                              settings=run.settings, tx=tx, grad_accum=cfg.optim.grad_accum)
  eval_fn = functools.partial(steps.eval_step, model=run.model, objective=run.objective, settings=run.settings)
  state = parallel.create_state(mode, run.model_cfg, tx, rng, mesh)
  train_iter = batches(run, "train")

  mngr = checkpoint.open_manager(workdir, keep=t.keep, best_metric=t.best_metric)
  preempt = progress = writer = None
  closed = False
  try:   # from here on, every way out closes the manager (finally, below)
    start = resume(mngr, workdir, state, train_iter, mode)
    if start is not None:
      state = start
    elif init_params is not None:  # fine-tuning: pretrained params where paths match, fresh optimizer state
      host = parallel.host_state(state, mode)
      params = graft(host.params, init_params)
      host = jax.tree.map(np.asarray, host.replace(params=params, opt_state=tx.init(params)))
      state = parallel.place_state(host, mode, mesh, run.model_cfg, tx)
    step = int(parallel.host_state(state, mode).step)
    if jax.process_index() == 0:
      # Written once the config has proved valid and the state to resume has been read.
      record_config(workdir, cfg, step)
    train_step = parallel.compile_train_step(step_fn, mode, state, mesh)
    eval_step = parallel.compile_eval_step(eval_fn, mode, mesh)

    writer = MetricsWriter(workdir, resume_step=step)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops_per_token = train_flops_per_token(run.model_cfg, cfg.data.seq_len, run.objective.heads,
                                            cfg.objective.max_predictions, run.objective.prefix)
    peak, peak_source = peak_flops()
    devices = jax.device_count()
    log_start(run, workdir, state, flops_per_token, step)

    preempt = Preemption()
    progress = Progress(step, t.steps, t.log_every)
    pending = None          # (step, metrics on device): read one step late so the device stays busy
    eval_metrics = {}
    clock = Clock(step, tokens_per_step, flops_per_token, peak * devices)
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
        with clock.excluded():
          eval_metrics = evaluate(run, state.params, eval_step, rng)
          writer.write(step, "eval", {**eval_metrics, **clock.compute(step)})
          progress.message(f"eval at step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in eval_metrics.items()))
      if at_eval or step % t.checkpoint_every == 0:
        with clock.excluded():
          save(mngr, workdir, state, mode, step, rng, data_state, cfg, eval_metrics if at_eval else None)
    if pending is not None:
      report(pending, t, writer, progress, schedule, clock)
    if preempt.signal is not None:
      if step not in mngr.all_steps():  # the signal may land just after a scheduled save of this very step
        save(mngr, workdir, state, mode, step, rng, train_iter.get_state(), cfg, None)
      wait_for_saves(mngr, workdir)
      raise Stopped(f"stopped by {preempt.signal} at step {step}; checkpoint saved in "
                    f"{checkpoint.checkpoint_dir(workdir)}. Rerun the same command to resume.")
    wait_for_saves(mngr, workdir)
    mngr.close()   # its errors, if any, are this run's: raised
    closed = True
  except NonFinite as e:
    raise UserError(str(e)) from None
  finally:
    if preempt is not None:
      preempt.restore()
    if progress is not None:
      progress.close()
    if writer is not None:
      writer.close()
    try:
      mngr.wait_until_finished()   # a save still running when something else failed; its error was said
    except Exception:  # noqa: BLE001
      pass
    # Closed on every way out: a manager left to the garbage collector (after a stop, a full disk)
    # shuts its writer threads down whenever it is collected, in some later run of the process.
    if not closed:
      try:
        mngr.close()
      except Exception:  # noqa: BLE001 -- the error on its way out is the one to say
        pass
  return eval_metrics


def wait_for_saves(mngr, workdir) -> None:
  """Blocks until the asynchronous saves are on disk; a failed one (a full or read-only disk) is
  a one-line error that says what is still there to resume from."""
  try:
    mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001 -- orbax and tensorstore raise several types for one I/O fault
    raise save_failed(mngr, workdir, e) from None


def save_failed(mngr, workdir, e: BaseException) -> UserError:
  done = checkpoint.steps(workdir)
  last = f"checkpoint {done[-1]} is intact" if done else "no earlier checkpoint exists"
  text = str(e)
  why = next((m for m in ("No space left on device", "Read-only file system", "Permission denied",
                          "No such file or directory") if m in text), checkpoint.first_line(e))
  return UserError(f"saving a checkpoint in {checkpoint.checkpoint_dir(workdir)} failed ({why}); {last}. "
                   "Free space (or fix the disk) and rerun the same command to resume")


class NonFinite(Exception):
  pass


class Clock:
  """Throughput over the steps since the last reading; eval and checkpoint time excluded."""

  def __init__(self, step, tokens_per_step, flops_per_token, peak_flops):
    self.tokens_per_step, self.flops_per_token, self.peak = tokens_per_step, flops_per_token, peak_flops
    self.step, self.time, self.rate, self.skipped = step, time.perf_counter(), 0.0, 0.0

  @contextlib.contextmanager
  def excluded(self):
    """Time spent inside (evaluation, saving) is not training time. The loop enters it right after
    reading a step's metrics, so no step is still running on the device then."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self.skipped += time.perf_counter() - start

  def compute(self, step) -> dict:
    """What the run has consumed by `step`: token positions (padding included, as the step
    computes on it) and training FLOPs (flops.py's count), so runs compare at equal compute."""
    tokens = step * self.tokens_per_step
    return {"tokens": float(tokens), "train_flops": float(tokens * self.flops_per_token)}

  def read(self, step) -> tuple[float, float]:
    """(tokens/s, model FLOPs utilisation) since the last reading."""
    now = time.perf_counter()
    if step > self.step:
      self.rate = self.tokens_per_step * (step - self.step) / max(now - self.time - self.skipped, 1e-9)
    self.step, self.time, self.skipped = step, now, 0.0
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
    writer.write(step, "train", {**metrics, **clock.compute(step)})
  progress.update(step, {"loss": metrics["loss"], "lr": metrics["lr"], "tok/s": round(clock.rate),
                         "mfu": f"{100 * clock.rate * clock.flops_per_token / clock.peak:.1f}%"})


def resume(mngr, workdir, state: TrainState, train_iter, mode: str):
  """The newest readable checkpoint, restored into `state`'s layout; None to start fresh (no
  checkpoint at all). Newer unreadable ones are moved aside, never deleted; when none of the
  checkpoints can be read, the run stops here with nothing changed."""
  target = parallel.restore_target(state, mode)
  found, unreadable = checkpoint.restore_latest(mngr, target.params, target.opt_state)
  if found is None and unreadable:
    step, why = unreadable[0]
    raise UserError(f"none of the {len(unreadable)} checkpoints in {checkpoint.checkpoint_dir(workdir)} can be "
                    f"read (newest, {step}: {why}); nothing was changed. If this config differs from the run's, "
                    f"rerun with {paths.path(workdir) / 'config.json'}; otherwise move the workdir aside and start anew")
  if unreadable and jax.process_index() == 0:
    for step, why in unreadable:   # orbax will not save over a step on disk; training writes these again
      aside = checkpoint.move_aside(workdir, step, why)
      print(f"lmjax train: moved unreadable checkpoint {step} to {aside}", file=sys.stderr)
  if unreadable:
    if jax.process_count() > 1:
      distributed.barrier("unreadable checkpoints moved aside")
    mngr.reload()
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
  restored = target.replace(step=np.int32(step), params=params, opt_state=opt_state,
                            skipped=np.int32(meta.get("skipped", 0)))
  print(f"lmjax train: resumed from checkpoint {step}", file=sys.stderr)
  return parallel.place_restored(restored, state, mode)


def save(mngr, workdir, state, mode, step, rng, data_state, cfg, metrics):
  # A removed workdir does not fail a save: orbax makes the directories again, and the metrics
  # file writes on into its unlinked inode. The config process 0 wrote at the start is the witness;
  # every process learns its verdict, so none is left waiting in a collective.
  vanished = jax.process_index() == 0 and not (paths.path(workdir) / "config.json").exists()
  if any(distributed.allgather_json(vanished)):
    raise UserError(f"workdir {workdir} vanished during the run (its config.json is gone); training stopped. "
                    "Restore the directory and rerun to resume, or start again with a new --workdir")
  host = parallel.host_state(state, mode)
  meta = {"step": step, "skipped": int(host.skipped), "rng": checkpoint.rng_to_json(rng)}
  # Process 0 writes the JSON items, so it saves every host's position in its data shard.
  data_states = {"processes": distributed.allgather_json(data_state)}
  try:   # an asynchronous save's error surfaces at the next save or wait
    checkpoint.save(mngr, step, host.params, host.opt_state, meta, data_states, cfg.to_dict(), metrics)
  except Exception as e:  # noqa: BLE001 -- orbax and tensorstore raise several types for one I/O fault
    raise save_failed(mngr, workdir, e) from None


def log_start(run: Run, workdir, state, flops_per_token, step):
  """A short header: what trains, on what, and where its files go (the whole config is in config.json)."""
  if jax.process_index() != 0:
    return
  cfg, m = run.cfg, run.model_cfg
  params = parallel.host_state(state, run.mode).params
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  layout = f"mesh {dict(run.mesh.shape)}" if run.mesh is not None else run.mode
  processes = f"{jax.process_count()} process{'es' if jax.process_count() > 1 else ''}"
  o, t = cfg.optim, cfg.train
  print(f"lmjax train: {workdir}\n"
        f"  model      {'decoder' if m.causal else 'encoder'}, {m.num_layers} layers x {m.hidden} wide, "
        f"{n_params:,} params, {m.dtype}; objective {cfg.objective.name}\n"
        f"  data       {cfg.data.source} {cfg.data.path}".rstrip() + f", seq {cfg.data.seq_len} x batch "
        f"{cfg.data.batch_size}; tokenizer {run.tokenizer.vocab_size:,} pieces\n" +
        (f"  held out   {sources.describe_held_out(cfg.data)}\n" if sources.describe_held_out(cfg.data) else "") +
        f"  devices    {jax.device_count()} x {jax.devices()[0].device_kind} ({processes}), {layout}; "
        f"{flops_per_token / 1e6:.1f} MFLOP/token\n"
        f"  schedule   {t.steps} steps, {o.name} lr {o.lr:g} {o.schedule} (warmup {o.warmup_steps}); "
        f"eval every {t.eval_every}, checkpoint every {t.checkpoint_every}" +
        (f"\n  resumed    at step {step}" if step else ""), flush=True)
