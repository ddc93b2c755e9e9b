"""The training loop's promises: exact resume, resharding, preemption, kill -9,
non-finite handling, clear errors -- on a tiny GPT over a slice of the default corpus."""
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lmjax.config import load_config
from lmjax.errors import UserError
from lmjax import checkpoint
from lmjax.training import loop

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = ["--config.model.hidden=32", "--config.model.num_heads=2", "--config.model.mlp_dim=64",
        "--config.model.num_layers=2", "--config.model.vocab_size=384", "--config.model.max_len=32",
        "--config.tokenizer.vocab_size=384", "--config.tokenizer.sample_chars=200000",
        "--config.data.seq_len=32", "--config.data.batch_size=8", "--config.data.max_chars=300000",
        "--config.train.steps=12", "--config.train.log_every=1", "--config.train.eval_every=6",
        "--config.train.eval_batches=2", "--config.train.checkpoint_every=4", "--config.train.keep=10",
        "--config.train.samples=0", "--config.optim.warmup_steps=2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def tiny(data_dir, *extra):
  return load_config(None, TINY + [f"--config.data.data_dir={data_dir}", *extra])


def losses(workdir):
  rows = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]


def params_of(workdir):
  return jax.tree.map(np.asarray, checkpoint.restore_params(workdir))


def drop_checkpoints_after(workdir, step):
  """What a crash right after checkpoint `step` leaves behind."""
  for step_dir in (pathlib.Path(workdir) / "checkpoints").iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) > step:
      shutil.rmtree(step_dir)


def assert_trees_equal(a, b, atol=0.0):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    if atol == 0.0:
      np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    else:
      np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, data_dir):
  """12 steps without a stop: the reference every resumed run must equal."""
  workdir = tmp_path_factory.mktemp("straight")
  metrics = loop.train(tiny(data_dir), workdir)
  return workdir, metrics


def test_loss_falls_and_outputs_exist(straight_run):
  workdir, metrics = straight_run
  trajectory = [l for _, l in losses(workdir)]
  assert len(trajectory) == 12 and np.mean(trajectory[-3:]) < np.mean(trajectory[:3])
  assert (workdir / "tokenizer.model").is_file() and (workdir / "config.json").is_file()
  # TensorFlow's own reader parses the event file: every train line's scalars, at its step.
  import tensorflow as tf
  [events] = (workdir / "tensorboard").iterdir()
  logged = {(e.step, v.tag): v.simple_value for e in tf.compat.v1.train.summary_iterator(str(events))
            for v in e.summary.value}
  for row in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()):
    for k, v in row.items():
      if k not in ("step", "split"):
        assert logged[(row["step"], f"{row['split']}/{k}")] == pytest.approx(v, rel=1e-6), (row["step"], k)
  assert metrics["perplexity"] > 1 and np.isfinite(metrics["loss"])
  # Compute accounting on every line: token positions and training FLOPs consumed so far.
  from lmjax import models
  from lmjax.training import flops
  cfg = load_config(None, TINY)
  per_token = flops.train_flops_per_token(models.model_config(cfg.model), 32)
  for row in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()):
    assert row["tokens"] == row["step"] * 8 * 32 and row["train_flops"] == row["tokens"] * per_token


def test_resume_after_crash_is_bit_exact(straight_run, tmp_path, data_dir):
  """A crash right after checkpoint 4: rerunning the same command gives the same losses and params."""
  reference, _ = straight_run
  workdir = tmp_path / "crashed"
  loop.train(tiny(data_dir), workdir)
  drop_checkpoints_after(workdir, 4)
  loop.train(tiny(data_dir), workdir)
  assert losses(workdir) == losses(reference)
  assert_trees_equal(params_of(workdir), params_of(reference))


def test_checkpoint_reshards_across_parallelism(straight_run, tmp_path, data_dir):
  """pmap on 8 devices to step 4, then a 2x2x2 mesh to step 8, then one device to 12."""
  reference, _ = straight_run
  workdir = tmp_path / "reshard"
  loop.train(tiny(data_dir, "--config.parallel.mode=pmap"), workdir)
  drop_checkpoints_after(workdir, 4)
  mesh = ["--config.parallel.mode=mesh", "--config.parallel.data=2", "--config.parallel.fsdp=2",
          "--config.parallel.tensor=2"]
  # Stop the mesh run at 8 by removing later checkpoints again, then finish on one device.
  loop.train(tiny(data_dir, *mesh), workdir)
  drop_checkpoints_after(workdir, 8)
  loop.train(tiny(data_dir), workdir)
  assert_trees_equal(params_of(workdir), params_of(reference), atol=2e-5)
  np.testing.assert_allclose([l for _, l in losses(workdir)], [l for _, l in losses(reference)], atol=2e-5)


def test_corrupt_latest_checkpoint_is_skipped(straight_run, tmp_path, data_dir, capfd):
  workdir = tmp_path / "corrupt"
  loop.train(tiny(data_dir, "--config.train.steps=8"), workdir)
  latest = workdir / "checkpoints" / "8"
  for f in (latest / "params").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "ocdbt" not in f.name and f.suffix != ".json":
      f.write_bytes(b"garbage")
  # A half-written save, as a kill -9 mid-save leaves it: orbax's temporary directory.
  (workdir / "checkpoints" / "12.orbax-checkpoint-tmp-1").mkdir()
  capfd.readouterr()
  found, unreadable = checkpoint.restore_latest(checkpoint.open_manager(workdir, keep=10),
                                               *restore_targets(workdir, 4))
  assert found is not None and found[0] == 6  # the eval checkpoint before 8
  assert [step for step, _ in unreadable] == [8]
  assert "checkpoint 8" in capfd.readouterr().err


def test_training_on_past_an_unreadable_checkpoint_rewrites_it(tmp_path, data_dir):
  workdir = tmp_path / "rewrite"
  loop.train(tiny(data_dir, "--config.train.steps=8"), workdir)
  written = params_of(workdir)
  for f in (workdir / "checkpoints" / "8" / "params").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "ocdbt" not in f.name and f.suffix != ".json":
      f.write_bytes(b"garbage")
  # Resumes from 6 and reaches 8 again: the step on disk must not block the new save.
  loop.train(tiny(data_dir, "--config.train.steps=8"), workdir)
  assert checkpoint.restore_latest(checkpoint.open_manager(workdir, keep=10), *restore_targets(workdir, 0))[0][0] == 8
  assert_trees_equal(params_of(workdir), written)


def restore_targets(workdir, step):
  from lmjax.training import optim, state as state_lib
  from lmjax import models
  cfg = load_config(None, TINY)
  tx, _ = optim.optimizer_from_config(cfg.optim, cfg.train.steps)
  abstract = jax.eval_shape(lambda: state_lib.init_state(models.model_config(cfg.model), tx, jax.random.key(0)))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
  return target.params, target.opt_state


def test_nonfinite_halt_and_skip(tmp_path, data_dir):
  cfg = tiny(data_dir, "--config.train.steps=6")
  cfg.optim.lr = float("inf")
  with pytest.raises(UserError, match=r"non-finite .* at step \d"):
    loop.train(cfg, tmp_path / "halt")
  assert not any(p.name.isdigit() for p in (tmp_path / "halt" / "checkpoints").iterdir())
  cfg.train.nonfinite = "skip"
  loop.train(cfg, tmp_path / "skip")
  rows = [json.loads(l) for l in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
  assert max(r.get("skipped", 0) for r in rows) >= 1


def test_bad_inputs_fail_before_compiling(straight_run, tmp_path, data_dir):
  workdir, _ = straight_run
  before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  with pytest.raises(UserError, match="model.hidden=32, this config says 64"):
    loop.train(tiny(data_dir, "--config.model.hidden=64"), workdir)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
  a_file = tmp_path / "file"
  a_file.write_text("")
  with pytest.raises(UserError, match="not writable"):
    loop.train(tiny(data_dir), a_file / "run")
  with pytest.raises(UserError, match="smaller than optim.warmup_steps"):
    loop.train(tiny(data_dir, "--config.optim.warmup_steps=100"), tmp_path / "warm")
  # A run saved before model.norm_bias existed had LayerNorm biases: dropping them is refused too.
  saved = json.loads((workdir / "config.json").read_text())
  del saved["model"]["norm_bias"]
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
  with pytest.raises(UserError, match="model.norm_bias=True, this config says False"):
    loop.train(tiny(data_dir, "--config.model.norm_bias=False"), tmp_path / "old")
  with pytest.raises(UserError, match="no config file") as listing:
    load_config("experiments/nope.py")
  assert "'shakespeare_char'" in str(listing.value) and "torch" not in str(listing.value)   # configs, not scripts


def run_cli(*args, **kwargs):
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  return subprocess.Popen([sys.executable, "-m", "lmjax", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_sigterm_saves_and_resume_equals_straight_run(straight_run, tmp_path, data_dir):
  reference, _ = straight_run
  workdir = tmp_path / "signal"
  args = ["train", "--workdir", str(workdir), *TINY, f"--config.data.data_dir={data_dir}",
          "--config.train.checkpoint_every=100"]
  proc = run_cli(*args)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"train"') >= 2):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, err
  assert "stopped by SIGTERM" in err, err
  stopped, _ = checkpoint.restore_latest(checkpoint.open_manager(workdir, keep=10), *restore_targets(workdir, 0))
  assert stopped is not None and stopped[0] < 12
  proc = run_cli(*args)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert losses(workdir) == losses(reference)
  assert_trees_equal(params_of(workdir), params_of(reference))


@pytest.mark.slow
def test_sigterm_right_after_a_scheduled_save_exits_cleanly(tmp_path, data_dir):
  # With a checkpoint every step the signal always lands on a step that is already saved.
  workdir = tmp_path / "signal_saved"
  proc = run_cli("train", "--workdir", str(workdir), *TINY, f"--config.data.data_dir={data_dir}",
                 "--config.train.checkpoint_every=1", "--config.train.steps=200")
  ckpts = workdir / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and not (ckpts.exists() and len([p for p in ckpts.iterdir() if p.name.isdigit()]) >= 2):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, err
  assert "stopped by SIGTERM" in err, err
  stop_step = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
  stopped, _ = checkpoint.restore_latest(checkpoint.open_manager(workdir, keep=10), *restore_targets(workdir, 0))
  assert stopped[0] == stop_step


@pytest.mark.slow
def test_kill_9_leaves_a_restorable_checkpoint(straight_run, tmp_path, data_dir):
  reference, _ = straight_run
  workdir = tmp_path / "kill9"
  args = ["train", "--workdir", str(workdir), *TINY, f"--config.data.data_dir={data_dir}",
          "--config.train.checkpoint_every=1", "--config.train.keep=2"]
  proc = run_cli(*args)
  ckpts = workdir / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and not (ckpts.exists() and sum(p.name.isdigit() for p in ckpts.iterdir()) >= 2):
    time.sleep(0.01)
  proc.kill()
  proc.communicate()
  proc = run_cli(*args)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert "resumed from checkpoint" in err
  assert_trees_equal(params_of(workdir), params_of(reference))


def test_eval_cli_prints_json(straight_run, tmp_path, capsys, shared_data):
  from lmjax.__main__ import main
  workdir, _ = straight_run
  main(["eval", "--workdir", str(workdir)])
  metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert metrics["perplexity"] > 1
  book = tmp_path / "book.txt"
  book.write_text((shared_data / "gutenberg" / "pg11.txt").read_text(encoding="utf-8-sig")[:20000])
  main(["eval", "--workdir", str(workdir), "--data", str(book)])
  metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert 0 < metrics["bits_per_byte"] < 8 and metrics["perplexity"] > 1


@pytest.mark.slow
@pytest.mark.parametrize("config", ["gpt_tiny", "bert_tiny"])
def test_bfloat16_compute_trains_like_float32(config, tmp_path, data_dir):
  # model.dtype=bfloat16 computes in bf16 with float32 params (and float32 norms, softmax and
  # loss); after 300 steps its held-out loss is within 2% of float32's.
  loss = {}
  for dtype in ("float32", "bfloat16"):
    cfg = load_config(REPO / "experiments" / f"{config}.py",
                      TINY + [f"--config.data.data_dir={data_dir}", f"--config.model.dtype={dtype}",
                              "--config.train.steps=300", "--config.train.eval_every=300",
                              "--config.train.checkpoint_every=300", "--config.train.log_every=100",
                              "--config.train.eval_batches=8", "--config.optim.warmup_steps=20"])
    loss[dtype] = loop.train(cfg, tmp_path / dtype)["loss"]
  assert loss["float32"] < 0.8 * math.log(384)    # it trained: well below a uniform guess
  assert abs(loss["bfloat16"] - loss["float32"]) <= 0.02 * loss["float32"], loss


def test_throughput_excludes_evaluation_and_saving(monkeypatch):
  # 10 steps in 10 s, then a 30 s evaluation, then 10 steps in 10 s: both readings say 1 step/s,
  # though the evaluation came between two readings.
  now = [0.0]
  monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
  clock = loop.Clock(0, tokens_per_step=100, flops_per_token=2.0, peak_flops=1000.0)
  now[0] = 10.0
  assert clock.read(10) == (100.0, 0.2)
  now[0] = 15.0                       # 5 more steps, not yet read
  with clock.excluded():
    now[0] = 45.0
  now[0] = 50.0                       # 5 more
  assert clock.read(20) == (100.0, 0.2)
