"""lmjax compare: a study's plan is checked before anything trains; a tiny study runs to a report whose
figures are the runs' metrics.jsonl; a study stopped by SIGTERM and killed by kill -9 mid-arm resumes
to the same results.json; --arm/--seed run runs alone and --report gathers what has finished."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

from lmjax import checkpoint
from lmjax.__main__ import main
from lmjax.compare import report

STUDY = '''
import ml_collections
from lmjax.config import base_config, model_section


def get_config():
  c = base_config()
  c.model = model_section("bert-tiny", vocab_size=384, max_len=32, hidden=32, num_layers=1, num_heads=2,
                          mlp_dim=64, heads=("mlm",))
  c.tokenizer.update(vocab_size=384, sample_chars=200_000)
  c.data.update(source="local", path={corpus!r}, data_dir={data_dir!r}, seq_len=32, batch_size=8)
  c.objective.update(name="mlm", max_predictions=5)
  c.optim.update(warmup_steps=1)
  c.train.update(log_every=1, eval_batches=2, keep=1, best_metric="")
  probe = {{"data": {{"path": {probe!r}, "seq_len": 32, "batch_size": 8}}, "optim": {{"warmup_steps": 1}},
           "train": {{"steps": 4, "eval_every": 4, "checkpoint_every": 2, "eval_batches": 2, "log_every": 1}},
           "task": {{"validation_percent": 25.0}}}}
  c.study = ml_collections.ConfigDict(dict(
      arms={arms},
      baseline="token", seeds=(0, 1), budget=dict(flops=0.0, tokens=0, steps={steps}), evals=2,
      held_out_batches=2, held_out_chars=3000,
      probe=dict(config="sst2_probe", metric="accuracy", overrides=probe)))
  return c
'''
ARMS = '{"token": {}, "span": {"objective": {"masking": "span"}}}'


@pytest.fixture(scope="module")
def study_file(tmp_path_factory, shared_data):
  """A tiny study: two masking arms of a 1-layer encoder, 200 steps each, two seeds, a 4-step SST-2 probe."""
  root = tmp_path_factory.mktemp("study")
  rows = (shared_data / "sentiment" / "sst2_train.tsv").read_text().splitlines()[:401]
  (root / "sst2_400.tsv").write_text("\n".join(rows) + "\n")

  def write(name="study.py", arms=ARMS, steps=200):
    path = root / name
    path.write_text(STUDY.format(corpus=str(shared_data / "speeches" / "inaugural.zip"), data_dir=str(root / "tfds"),
                                 probe=str(root / "sst2_400.tsv"), arms=arms, steps=steps))
    return path
  return write


def compare(*args):
  main(["compare", *map(str, args)])


def error_of(capsys, *args) -> str:
  with pytest.raises(SystemExit) as e:
    compare(*args)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  return err


@pytest.mark.parametrize("arms, steps, message", [
    ('{"token": {}, "x": {"objective": {"nme": "mlm"}}}', 6, "study arm 'x': unknown config key 'objective.nme'"),
    ('{"token": {}, "x": {"objective": {"name": "clm"}}}', 6, "study arm 'x': objective 'clm' needs a decoder"),
    ('{"token": {}, "x": {"optim": {"lr": "fast"}}}', 6, "study arm 'x': optim.lr='fast': expected a float, got a str"),
    ('{"tok": {}}', 6, "study.baseline='token' is not one of the arms ['tok']"),
    (ARMS, 0.5, "the budget of 0.5 steps is smaller than one step"),
])
def test_a_bad_study_fails_in_one_line_before_anything_trains(study_file, tmp_path, capsys, arms, steps, message):
  err = error_of(capsys, "--config", study_file("bad.py", arms, steps), "--workdir", tmp_path / "w")
  assert message in err, err
  assert not (tmp_path / "w").exists()


def test_arm_and_seed_must_be_the_studys(study_file, tmp_path, capsys):
  assert "--arm 'nope' is not one of the study's arms ['token', 'span']" in error_of(
      capsys, "--config", study_file(), "--workdir", tmp_path / "w", "--arm", "nope")
  assert "--seed 7 is not one of the study's seeds [0, 1]" in error_of(
      capsys, "--config", study_file(), "--workdir", tmp_path / "w", "--seed", "7")


@pytest.fixture(scope="module")
def reference(study_file, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  compare("--config", study_file(), "--workdir", workdir)
  return workdir


def lines(workdir, split):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if f'"split": "{split}"' in l]


def test_every_figure_of_the_report_is_in_the_runs_metrics(reference):
  results = json.loads((reference / "results.json").read_text())
  assert results["complete"] and set(results["arms"]) == {"token", "span"}
  for arm, a in results["arms"].items():
    probe, mlm = [], []
    for seed in (0, 1):
      run = reference / "runs" / arm / f"seed_{seed}"
      last = lines(run / "pretrain", "train")[-1]
      assert last["step"] == a["steps"] == 200
      assert (last["train_flops"], last["tokens"]) == (a["train_flops"], a["tokens"]) == (last["train_flops"], 200 * 8 * 32)
      mlm.append(lines(run / "pretrain", "held_out")[-1]["mlm_loss"])
      probe.append(lines(run / "probe", "task")[-1]["accuracy"])
      # the curve is the eval lines: the arm's own loss against the FLOPs spent
      record = json.loads((run / "result.json").read_text())
      assert record["eval_curve"] == [[l["train_flops"], l["loss"]] for l in lines(run / "pretrain", "eval")]
      assert len(record["eval_curve"]) == 2   # study.evals
    assert a["probe"]["values"] == probe and a["held_out"]["mlm_loss"]["values"] == mlm
    assert a["probe"]["mean"] == pytest.approx(np.mean(probe)) and a["probe"]["std"] == pytest.approx(np.std(probe, ddof=1))
  # The held-out MLM loss uses the same rows and masks for every arm and seed: same weight sums.
  weights = {lines(reference / "runs" / arm / f"seed_{s}" / "pretrain", "held_out")[-1]["mlm_weight"]
             for arm in ("token", "span") for s in (0, 1)}
  assert len(weights) == 1
  md = (reference / "report.md").read_text()
  span = results["arms"]["span"]
  assert f"| span | {span['params']:,} | 200 |" in md and "| token |" in md and "baseline" in md
  d = span["vs_baseline"]
  assert f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" in md
  assert ("includes 0" in md) == d["includes_zero"]
  for png in ("loss_vs_flops.png", "probe.png"):
    assert (reference / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_interval_is_welchs():
  a, b = [0.80, 0.82, 0.81, 0.83], [0.70, 0.72, 0.70]
  got = report.welch_interval(a, b)
  want = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  assert (got["low"], got["high"]) == pytest.approx((want.low, want.high), rel=1e-9)
  assert not got["includes_zero"] and report.welch_interval([1.0, 2.0], [1.5, 1.6])["includes_zero"]
  assert report.welch_interval([0.7], b) is None   # one seed: no noise estimate, no interval


def run_until(args, path, sig, timeout=300):
  """Starts `lmjax compare ARGS` and sends `sig` once `path` exists (a checkpoint mid-arm)."""
  proc = subprocess.Popen([sys.executable, "-m", "lmjax", "compare", *map(str, args)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + timeout
  while time.time() < deadline and not path.exists() and proc.poll() is None:
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()[1]
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, err


@pytest.mark.slow
def test_a_study_stopped_and_killed_mid_arm_resumes_to_the_same_results(study_file, reference, tmp_path, capsys):
  workdir = tmp_path / "study"
  config = study_file()
  runs = workdir / "runs"
  # SIGTERM while the first arm pretrains: it saves and stops.
  code, err = run_until(["--config", config, "--workdir", workdir],
                        runs / "token" / "seed_0" / "pretrain" / "checkpoints" / "100", signal.SIGTERM)
  assert code == 0 and "stopped by SIGTERM" in err, err
  assert not (runs / "token" / "seed_0" / "result.json").exists()
  # kill -9 while the first arm of seed 1 pretrains (seed 0's two runs finish first).
  code, _ = run_until(["--config", config, "--workdir", workdir],
                      runs / "token" / "seed_1" / "pretrain" / "checkpoints" / "100", signal.SIGKILL)
  assert code == -signal.SIGKILL
  assert checkpoint.steps(runs / "token" / "seed_1" / "pretrain")
  # What has finished so far makes a partial report.
  capsys.readouterr()
  compare("--config", config, "--workdir", workdir, "--report")
  partial = json.loads((workdir / "results.json").read_text())
  assert not partial["complete"] and [a["seeds"] for a in partial["arms"].values()] == [[0], [0]]
  assert "partial report" in capsys.readouterr().out
  # One run alone, then the rest.
  compare("--config", config, "--workdir", workdir, "--arm", "token", "--seed", "1")
  assert (runs / "token" / "seed_1" / "result.json").exists() and not (runs / "span" / "seed_1").exists()
  compare("--config", config, "--workdir", workdir)
  assert (workdir / "results.json").read_text() == (reference / "results.json").read_text()
  # Rerunning a finished study trains nothing and writes the same report.
  before = (runs / "span" / "seed_1" / "pretrain" / "metrics.jsonl").read_text()
  compare("--config", config, "--workdir", workdir)
  assert "(finished before; skipped)" in capsys.readouterr().out
  assert (runs / "span" / "seed_1" / "pretrain" / "metrics.jsonl").read_text() == before
  assert (workdir / "results.json").read_text() == (reference / "results.json").read_text()
  # A changed budget does not mix with the finished runs of the old one.
  assert "a changed budget is a new study, give it a new --workdir" in error_of(
      capsys, "--config", study_file("longer.py", steps=300), "--workdir", workdir)
