"""Nothing lost: each fault a run meets for real (an unreadable checkpoint, a changed config, a second
trainer, a full or read-only disk, a vanished workdir, a bad file, kill -9 at random moments) ends in
a one-line error or an exact resume, and nothing written before it is lost."""
import errno
import hashlib
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from lmjax import checkpoint, paths
from lmjax.__main__ import main
from lmjax.errors import UserError
from lmjax.tasks import sentiment, squad
from lmjax.training import loop, metrics as metrics_lib
from test_train import TINY, assert_trees_equal, losses, params_of, run_cli, tiny


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
  """A finished 12-step run (checkpoints 4, 6, 8, 12), copied by each test that breaks it."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  loop.train(tiny(data_dir), workdir)
  return workdir


def copy_of(workdir, tmp_path):
  shutil.copytree(workdir, tmp_path / "run")
  return tmp_path / "run"


def snapshot(workdir) -> dict:
  """Every file under the workdir (but the lock) and a hash of its bytes."""
  return {str(p.relative_to(workdir)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(workdir).rglob("*")) if p.is_file() and p.name != ".lock"}


def corrupt(step_dir) -> None:
  for f in (pathlib.Path(step_dir) / "params").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "ocdbt" not in f.name and f.suffix != ".json":
      f.write_bytes(b"garbage")


def one_line(e) -> str:
  assert "\n" not in str(e.value), str(e.value)
  return str(e.value)


# ---- 1. never delete what could not be read ----------------------------------------------------

def test_unreadable_checkpoint_is_moved_aside_and_training_writes_it_again(finished, tmp_path, data_dir, capfd):
  workdir = copy_of(finished, tmp_path)
  written = params_of(workdir)
  corrupt(workdir / "checkpoints" / "12")
  capfd.readouterr()
  loop.train(tiny(data_dir), workdir)
  aside = workdir / "checkpoints" / "unreadable" / "12"
  assert (aside / "params").is_dir() and "moved aside" in (aside / "REASON.txt").read_text()
  assert f"moved unreadable checkpoint 12 to {aside}" in capfd.readouterr().err
  assert checkpoint.steps(workdir) == [4, 6, 8, 12]   # 12 written again, from 8, bit for bit
  assert_trees_equal(params_of(workdir), written)


def test_no_readable_checkpoint_stops_and_changes_nothing(finished, tmp_path, data_dir):
  workdir = copy_of(finished, tmp_path)
  for step in checkpoint.steps(workdir):
    corrupt(workdir / "checkpoints" / str(step))
  before = snapshot(workdir)
  with pytest.raises(UserError, match=r"none of the 4 checkpoints .* can be read \(newest, 12: ") as e:
    loop.train(tiny(data_dir), workdir)
  assert "nothing was changed" in one_line(e)
  assert snapshot(workdir) == before


# ---- 2. config changes are judged before anything is written -------------------------------------

@pytest.mark.parametrize("flag, message", [
    ("--config.optim.clip_norm=0.0", "optim.clip_norm=1.0, this config says 0.0 (gradient clipping on/off"),
    ("--config.optim.name=lion", "optim.name='adamw', this config says 'lion'"),
    ("--config.model.scan_layers=true", "model.scan_layers=False, this config says True"),
    ("--config.objective.name=mlm", "objective.name='clm', this config says 'mlm'"),
    ("--config.data.seq_len=16", "data.seq_len=32, this config says 16"),
])
def test_a_structure_change_fails_before_anything_is_written(finished, tmp_path, data_dir, flag, message):
  workdir = copy_of(finished, tmp_path)
  before = snapshot(workdir)
  with pytest.raises(UserError) as e:
    loop.train(tiny(data_dir, "--config.train.steps=14", flag), workdir)
  assert message in one_line(e) and "nothing was changed" in str(e.value)
  assert snapshot(workdir) == before


def test_allowed_changes_resume_and_are_kept_in_the_config_history(finished, tmp_path, data_dir):
  workdir = copy_of(finished, tmp_path)
  loop.train(tiny(data_dir, "--config.train.steps=14", "--config.optim.lr=5e-4", "--config.train.log_every=2"),
             workdir)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["train"]["steps"] == 14 and saved["optim"]["lr"] == 5e-4
  assert saved["history"] == [{"step": 12, "time": saved["history"][0]["time"],
                               "changed": {"optim.lr": [0.002, 0.0005], "train.log_every": [1, 2],
                                           "train.steps": [12, 14]}}]
  assert [s for s, _ in losses(workdir)][-2:] == [12, 14]


# ---- 3. one run per workdir ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_trainer_on_the_same_workdir_exits_at_once(tmp_path, data_dir):
  workdir = tmp_path / "busy"
  args = ["train", "--workdir", str(workdir), *TINY, f"--config.data.data_dir={data_dir}"]
  first = run_cli(*args, "--config.train.steps=100000", "--config.train.checkpoint_every=100000",
                  "--config.train.eval_every=100000")
  try:
    deadline = time.time() + 240
    while time.time() < deadline and not ((workdir / "metrics.jsonl").exists()
                                          and (workdir / "metrics.jsonl").read_text().count("\n") >= 2):
      time.sleep(0.05)
    before = (workdir / "config.json").read_text()
    second = run_cli(*args)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    assert err.strip().splitlines()[-1].startswith(f"lmjax train: error: {workdir} is being trained by lmjax train "
                                                   f"pid {first.pid}")
    assert (workdir / "config.json").read_text() == before
  finally:
    first.kill()   # kill -9: the kernel drops its lock with the process
    first.communicate()
  third = run_cli(*args, "--config.train.steps=2", "--config.train.eval_every=2")
  out, err = third.communicate(timeout=300)
  assert third.returncode == 0, err


# ---- 4. full disk, read-only disk, vanished workdir ------------------------------------------------

def small_filesystem(path: pathlib.Path, megabytes: int) -> bool:
  """A tmpfs of that size at `path` (root only); False where it cannot be made."""
  path.mkdir(parents=True, exist_ok=True)
  made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                        capture_output=True)
  return made.returncode == 0


def fill(path: pathlib.Path, leave_bytes: int) -> pathlib.Path:
  free = shutil.disk_usage(path).free
  filler = path / "filler"
  with open(filler, "wb") as f:
    f.truncate(0)
    f.write(b"\0" * max(free - leave_bytes, 0))
  return filler


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")   # tensorstore, after the failed save
def test_full_disk_ends_with_one_line_and_resumes_once_space_is_freed(tmp_path, data_dir):
  reference = tmp_path / "reference"
  loop.train(tiny(data_dir, "--config.train.steps=4"), reference)
  loop.train(tiny(data_dir), reference)
  disk = tmp_path / "disk"
  if small_filesystem(disk, 16):
    try:
      workdir = disk / "run"
      loop.train(tiny(data_dir, "--config.train.steps=4"), workdir)
      filler = fill(disk, 60_000)   # room for the metrics lines, not for a checkpoint
      with pytest.raises(UserError) as e:
        loop.train(tiny(data_dir), workdir)
      # Whichever write meets the full disk first (a checkpoint, metrics.jsonl, TensorBoard) says so.
      assert "(No space left on device)" in one_line(e) and "rerun the same command" in str(e.value)
      assert checkpoint.steps(workdir) == [4]
      filler.unlink()
      loop.train(tiny(data_dir), workdir)
      assert_trees_equal(params_of(workdir), params_of(reference))
      assert losses(workdir) == losses(reference)
    finally:
      subprocess.run(["umount", str(disk)], check=False)
  else:   # not root: the same fault, injected at the write
    workdir = tmp_path / "run"
    loop.train(tiny(data_dir, "--config.train.steps=4"), workdir)
    real_save = checkpoint.save

    def full(*args, **kwargs):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    checkpoint.save = full
    try:
      with pytest.raises(UserError) as e:
        loop.train(tiny(data_dir), workdir)
    finally:
      checkpoint.save = real_save
    assert "(No space left on device); checkpoint 4 is intact" in one_line(e)
    loop.train(tiny(data_dir), workdir)
    assert_trees_equal(params_of(workdir), params_of(reference))


@pytest.mark.slow
def test_read_only_disk_is_one_line(finished, tmp_path, data_dir):
  disk = tmp_path / "disk"
  if not small_filesystem(disk, 16):
    pytest.skip("mounting a read-only filesystem needs root; CI runs as root")
  try:
    shutil.copytree(finished, disk / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    with pytest.raises(UserError, match="is not writable \\(Read-only file system\\)") as e:
      loop.train(tiny(data_dir, "--config.train.steps=14"), disk / "run")
    one_line(e)
    main(["eval", "--workdir", str(disk / "run")])   # reading still works
  finally:
    subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_a_workdir_that_vanishes_mid_run_is_one_line(tmp_path, data_dir):
  workdir = tmp_path / "vanishing"
  proc = run_cli("train", "--workdir", str(workdir), *TINY, f"--config.data.data_dir={data_dir}",
                 "--config.train.steps=100000", "--config.train.checkpoint_every=1", "--config.train.keep=2")
  deadline = time.time() + 240
  while time.time() < deadline and len(checkpoint.steps(workdir)) < 2:
    time.sleep(0.05)
  shutil.rmtree(workdir, ignore_errors=True)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 2, err
  assert "Traceback" not in err, err
  assert err.strip().splitlines()[-1].startswith("lmjax train: error: ")


# ---- 5. every reader skips what the trainer skips ---------------------------------------------------

def test_readers_use_the_newest_readable_checkpoint_and_say_which(finished, tmp_path, capfd):
  workdir = copy_of(finished, tmp_path)
  corrupt(workdir / "checkpoints" / "12")
  at_8 = tmp_path / "at8"
  shutil.copytree(workdir, at_8)
  shutil.rmtree(at_8 / "checkpoints" / "12")
  want = params_of(at_8)
  capfd.readouterr()
  assert_trees_equal(params_of(workdir), want)
  assert "using checkpoint 8" in capfd.readouterr().err
  main(["eval", "--workdir", str(workdir)])
  main(["generate", "--workdir", str(workdir), "--prompt", "The", "--max-new-tokens", "4"])
  main(["convert", "--to-hf", "--workdir", str(workdir), "--out", str(tmp_path / "hf")])
  out, err = capfd.readouterr()
  assert err.count("using checkpoint 8") == 3, err
  assert json.loads(out.splitlines()[0])["perplexity"] > 1 and (tmp_path / "hf" / "model.safetensors").is_file()


# ---- 6. URLs stay URLs ---------------------------------------------------------------------------

def test_a_bucket_workdir_is_not_turned_into_a_local_path(tmp_path, monkeypatch):
  assert str(paths.path("gs://bucket/run")) == "gs://bucket/run"
  assert str(checkpoint.checkpoint_dir("gs://bucket/run")) == "gs://bucket/run/checkpoints"
  monkeypatch.chdir(tmp_path)
  assert str(paths.path("runs/x")) == str(tmp_path / "runs" / "x")
  # orbax receives the URL itself: its manager is opened on exactly that path.
  seen = {}
  monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", lambda directory, **kw: seen.setdefault("d", directory))
  checkpoint.open_manager("gs://bucket/run", keep=1)
  assert str(seen["d"]) == "gs://bucket/run/checkpoints"


def test_a_bucket_workdir_reaches_every_file_as_a_url(tmp_path, data_dir, monkeypatch):
  # A local directory stands in for the bucket: epath's own test double sends each gs:// call
  # there, and records that it was a gs:// call (a mangled path would be local, and not seen).
  from etils.epath import gpath, testing as epath_testing
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)   # else epath bypasses its test double
  from lmjax.data import tokenizer as tokenizers
  from lmjax.training import run as run_lib
  gcs, urls = tmp_path / "gcs", set()

  def local(p):
    p = os.fspath(p)
    if p.startswith("gs://"):
      urls.add(p)
      return str(gcs) + "/" + p[len("gs://"):]
    return p

  def redirect(original, path, *args, **kwargs):
    return original(local(path), *[local(a) if isinstance(a, (str, os.PathLike)) else a for a in args], **kwargs)
  names = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rename",
           "replace", "rmtree", "stat", "walk")
  cfg = tiny(data_dir)
  docs = ["The cat sat on the mat. " * 40, "A list is a sequence of items. " * 40] * 20
  with epath_testing.mock_epath(**{n: redirect for n in names}):
    run_lib.check_workdir("gs://bucket/run", cfg)
    tokenizers.train(docs, "gs://bucket/run/tokenizer.model", vocab_size=286, sample_chars=100_000)
    tok = tokenizers.load_tokenizer("gs://bucket/run")
    run_lib.record_config("gs://bucket/run", cfg, 0)
    writer = metrics_lib.MetricsWriter("gs://bucket/run", resume_step=0)
    writer.write(1, "train", {"loss": 2.0})
    writer.write(2, "train", {"loss": 1.5})
    writer.close()
    with run_lib.workdir_lock("gs://bucket/run"):   # no file locks on a bucket: nothing to take
      pass
  assert tok.decode(tok.encode("The cat sat.")) == "The cat sat."
  assert {"gs://bucket/run/tokenizer.model", "gs://bucket/run/config.json", "gs://bucket/run/metrics.jsonl",
          "gs://bucket/run/tensorboard"} <= urls
  run = gcs / "bucket" / "run"
  assert json.loads((run / "config.json").read_text())["model"]["hidden"] == 32
  [events] = (run / "tensorboard").iterdir()   # written whole at each line: both steps are in it
  assert events.read_bytes().count(b"train/loss") == 2
  assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
  assert (run / "tokenizer.model").is_file() and not (run / ".lock").exists()


# ---- 7. bad files are one line -------------------------------------------------------------------

def squad_file(tmp_path, answer) -> pathlib.Path:
  path = tmp_path / "squad.json"
  path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "Paris is in France.", "qas": [
      {"id": "q1", "question": "Where is Paris?", "answers": [answer]}]}]}]}))
  return path


@pytest.mark.parametrize("answer, message", [
    ({"answer_start": 12}, "has an answer without a text string"),
    ({"text": "France"}, "has an answer without a text string and an integer answer_start"),
    ({"text": "France", "answer_start": 3}, "answer_start 3 does not point at its answer 'France'"),
])
def test_bad_squad_answers(tmp_path, answer, message):
  with pytest.raises(UserError, match=message) as e:
    squad.read_squad(squad_file(tmp_path, answer))
  one_line(e)
  assert squad.read_squad(squad_file(tmp_path, {"text": "France", "answer_start": 12}))[0]["answer_start"] == 12


def test_a_metrics_line_cut_by_a_kill_is_dropped_on_resume(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "split": "train", "loss": 2.0}\n{"step": 2, "split": "train", "loss": 1.5}\n'
                  '{"step": 3, "split": "tr')
  writer = metrics_lib.MetricsWriter(tmp_path, resume_step=2)
  writer.write(3, "train", {"loss": 1.25})
  writer.close()
  assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2, 3]


def test_an_invalid_config_json_is_one_line(finished, tmp_path, data_dir, capsys):
  workdir = copy_of(finished, tmp_path)
  (workdir / "config.json").write_text('{"model": {"hidden": 32,')   # what a full disk can leave
  with pytest.raises(UserError, match="config.json is not valid JSON") as e:
    loop.train(tiny(data_dir), workdir)
  one_line(e)
  with pytest.raises(SystemExit) as e:
    main(["eval", "--workdir", str(workdir)])
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1 and "config.json is not valid JSON" in err[0]


def test_an_hf_config_missing_a_required_key_is_one_line(tmp_path):
  import transformers
  from lmjax.convert import hf
  model = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=32))
  model.save_pretrained(tmp_path / "hf")
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  del config["num_hidden_layers"]
  (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
  with pytest.raises(UserError, match="has no 'num_hidden_layers', which a bert config needs") as e:
    hf.import_hf(tmp_path / "hf", tmp_path / "work")
  one_line(e)
  assert not (tmp_path / "work").exists()


def test_a_label_outside_num_labels_is_one_line(tmp_path):
  (tmp_path / "t.tsv").write_text("sentence\tlabel\ngood\t1\nodd\t3\n")
  with pytest.raises(UserError, match=r"row 3: label '3' is not a class in 0..1 \(task.num_labels=2\)") as e:
    sentiment.read_sentiment(tmp_path / "t.tsv", num_labels=2)
  one_line(e)


# ---- 8. randomness that does not depend on the layout ---------------------------------------------

def bert_tiny(data_dir, *extra):
  """bert_tiny as shipped (dropout 0.1 on the residuals and attention), shrunk to seconds."""
  from lmjax.config import load_config
  return load_config("experiments/bert_tiny.py", TINY + [f"--config.data.data_dir={data_dir}",
                                                         "--config.model.num_heads=2", *extra])


@pytest.mark.slow
def test_dropout_on_resume_and_parallel_layouts_are_bit_exact(tmp_path, data_dir):
  straight = tmp_path / "straight"
  loop.train(bert_tiny(data_dir), straight)
  cfg = bert_tiny(data_dir)
  assert cfg.model.dropout_rate == 0.1 and cfg.model.attention_dropout_rate == 0.1
  # Crash after checkpoint 4, resume: the same dropout masks, bit for bit.
  resumed = tmp_path / "resumed"
  loop.train(bert_tiny(data_dir), resumed)
  for step in checkpoint.steps(resumed):
    if step > 4:
      shutil.rmtree(resumed / "checkpoints" / str(step))
  loop.train(bert_tiny(data_dir), resumed)
  assert losses(resumed) == losses(straight)
  assert_trees_equal(params_of(resumed), params_of(straight))
  # pmap over 8 devices draws each row's masks as one device does (float sums differ in order).
  pmap = tmp_path / "pmap"
  loop.train(bert_tiny(data_dir, "--config.parallel.mode=pmap"), pmap)
  np.testing.assert_allclose([l for _, l in losses(pmap)], [l for _, l in losses(straight)], atol=2e-5)
  assert_trees_equal(params_of(pmap), params_of(straight), atol=2e-5)


# ---- 9. kill -9 at random moments ------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(tmp_path, data_dir):
  # A checkpoint every step makes a kill during a write likely; keep=100 so that retention deletes none.
  args = ["train", *TINY, f"--config.data.data_dir={data_dir}", "--config.train.checkpoint_every=1",
          "--config.train.keep=100"]
  reference = tmp_path / "reference"
  done = run_cli(*args, "--workdir", str(reference))
  assert done.wait(timeout=300) == 0
  workdir = tmp_path / "killed"
  rng = random.Random(0)
  kills, seen = 0, 0
  while kills < 3:
    proc = run_cli(*args, "--workdir", str(workdir))
    start = time.time()
    # Wait for this run to take at least one step past where it resumed, then a random moment more.
    while time.time() - start < 240 and proc.poll() is None and (
        not (workdir / "metrics.jsonl").exists() or len(losses(workdir)) <= seen):
      time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.3))
    assert proc.poll() is None, "the run finished before it could be killed"
    kept_steps = checkpoint.steps(workdir)
    kept_lines = [l for l in (workdir / "metrics.jsonl").read_text().splitlines()
                  if metrics_lib.step_of(l) is not None and metrics_lib.step_of(l) <= (kept_steps or [0])[-1]]
    config = (workdir / "config.json").read_text()
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    kills += 1
    # What was on disk before the kill is still there after the resume (a later run may only add).
    proc = run_cli(*args, "--workdir", str(workdir))
    assert proc.wait(timeout=300) == 0, proc.communicate()[1]
    assert set(kept_steps) <= set(checkpoint.steps(workdir))
    assert kept_lines == (workdir / "metrics.jsonl").read_text().splitlines()[:len(kept_lines)]
    assert json.loads((workdir / "config.json").read_text())["model"] == json.loads(config)["model"]
    if kills < 3:   # rewind to a half-finished run, as a crash there would leave it, for the next kill
      back_to = checkpoint.steps(workdir)[rng.randint(0, 5)]
      for step in checkpoint.steps(workdir):
        if step > back_to:
          shutil.rmtree(workdir / "checkpoints" / str(step))
      metrics = workdir / "metrics.jsonl"
      metrics.write_text("".join(l + "\n" for l in metrics.read_text().splitlines()
                                 if metrics_lib.step_of(l) <= back_to))
      seen = len(losses(workdir))
  assert kills == 3
  assert_trees_equal(params_of(workdir), params_of(reference))
  assert losses(workdir) == losses(reference)
