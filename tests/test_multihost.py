"""Multi-process training on one machine: 2 processes x 2 CPU devices on 127.0.0.1 (gloo
collectives) must train the same params as 1 process x 4 devices fed the same global
batches, and resume from their own checkpoint; bad addresses and meshes fail in one line.

Each process reads its own shard of the document stream, so a 2-process global batch is
(shard 0 rows, shard 1 rows), not what 1 process reads. The reference run therefore
reads both shards itself (REFERENCE below) and stacks them in that order."""
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest

from test_train import REPO, TINY, assert_trees_equal, drop_checkpoints_after, params_of

pytestmark = pytest.mark.slow

# 8 steps, a checkpoint every 4 (the resume point), one eval at the end.
RUN = TINY + ["--config.train.steps=8", "--config.train.checkpoint_every=4", "--config.train.eval_every=8",
              "--config.optim.warmup_steps=1", "--config.parallel.mode=mesh", "--config.parallel.data=4",
              "--config.train.best_metric=",
              "--config.data.eval_split=train"]  # the tiny corpus has 1 validation document, 2 processes need 2

# `lmjax train` in one process whose iterators stack the rows of shards 0 and 1 of 2,
# i.e. the global batches of a 2-process run.
REFERENCE = """
import sys, numpy as np
from lmjax.data import pipeline
make = pipeline.iterator_from_config

class BothShards:
  def __init__(self, *args, **kwargs):
    kwargs.update(process_count=2)
    self.shards = [make(*args, **{**kwargs, "process_index": i}) for i in range(2)]
  def __iter__(self):
    return self
  def __next__(self):
    parts = [next(s) for s in self.shards]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  def get_state(self):
    return {"shards": [s.get_state() for s in self.shards]}
  def set_state(self, state):
    for s, st in zip(self.shards, state["shards"]):
      s.set_state(st)

pipeline.iterator_from_config = BothShards
from lmjax.__main__ import main
main(sys.argv[1:])
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(devices: int, **extra) -> dict:
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **extra}


def lmjax_cmd(workdir, data_dir, *extra, prefix=("-m", "lmjax")):
  return [sys.executable, *prefix, "train", "--workdir", str(workdir), *RUN,
          f"--config.data.data_dir={data_dir}", *extra]


def run_reference(workdir, data_dir, *extra):
  out = subprocess.run(lmjax_cmd(workdir, data_dir, *extra, prefix=("-c", REFERENCE)), env=env(4),
                       cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]


def run_two_processes(workdir, data_dir, *extra, devices=2, timeout=600):
  port = free_port()
  procs = [subprocess.Popen(lmjax_cmd(workdir, data_dir, "--coordinator", f"127.0.0.1:{port}",
                                      "--num-processes", "2", "--process-id", str(i), *extra),
                            env=env(devices), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  return [p.returncode for p in procs], outs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """1 process x 4 devices, 8 steps on the 2-process global batches; also builds the corpus."""
  workdir = tmp_path_factory.mktemp("reference")
  run_reference(workdir, data_dir)
  return workdir


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, data_dir, reference):
  workdir = tmp_path_factory.mktemp("two_process")
  codes, outs = run_two_processes(workdir, data_dir)
  assert codes == [0, 0], "\n".join(err[-3000:] for _, err in outs)
  return workdir


def test_two_processes_match_one(two_process_run, reference):
  assert_trees_equal(params_of(two_process_run), params_of(reference), atol=1e-5)
  # Only process 0 logs: one train line per step.
  rows = (two_process_run / "metrics.jsonl").read_text().splitlines()
  assert sum('"train"' in r for r in rows) == 8


def test_two_processes_resume_after_crash(two_process_run, reference, data_dir, tmp_path):
  workdir = tmp_path / "resumed"
  shutil.copytree(two_process_run, workdir)
  drop_checkpoints_after(workdir, 4)
  codes, outs = run_two_processes(workdir, data_dir)
  assert codes == [0, 0], "\n".join(err[-3000:] for _, err in outs)
  assert "resumed from checkpoint 4" in outs[0][1]
  assert_trees_equal(params_of(workdir), params_of(reference), atol=1e-5)


def test_one_process_resumes_a_two_process_checkpoint(two_process_run, data_dir, tmp_path):
  """Params and optimizer state restore onto one host's 4 devices; the data shards of the two
  hosts merge into one stream that continues after the furthest document either had read."""
  workdir = tmp_path / "one"
  shutil.copytree(two_process_run, workdir)
  drop_checkpoints_after(workdir, 4)
  out = subprocess.run(lmjax_cmd(workdir, data_dir), env=env(4), cwd=REPO, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed from checkpoint 4" in out.stderr and "written by 2 processes" in out.stderr
  rows = (workdir / "metrics.jsonl").read_text().splitlines()
  assert sum('"train"' in r for r in rows) == 8


def test_unreachable_coordinator_is_one_line_error(tmp_path, data_dir):
  t0 = time.perf_counter()
  out = subprocess.run(lmjax_cmd(tmp_path, data_dir, "--coordinator", f"127.0.0.1:{free_port()}",
                                 "--num-processes", "2", "--process-id", "1"),
                       env=env(2, LMJAX_DISTRIBUTED_TIMEOUT="5"), cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2, out.stderr[-3000:]
  assert "could not join the process group at 127.0.0.1" in out.stderr
  assert out.stderr.count("lmjax train: error") == 1
  assert time.perf_counter() - t0 < 90


def test_mesh_not_matching_global_devices_is_clear(tmp_path, data_dir):
  # 2 processes x 1 device = 2 global devices, but the mesh asks for data=4.
  codes, outs = run_two_processes(tmp_path, data_dir, devices=1, timeout=300)
  assert codes == [2, 2]
  assert all("mesh data=4 x fsdp=1 x tensor=1 = 4 devices, but there are 2" in err for _, err in outs)
