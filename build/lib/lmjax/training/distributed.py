"""Multi-process JAX: one process per host (TPU pods, GPU clusters), one global mesh.

`initialize` is called by `lmjax train` first thing. With explicit flags
(--coordinator, --num-processes, --process-id) it passes them to
`jax.distributed.initialize`; without them it lets JAX detect SLURM, Open MPI,
Kubernetes (JobSet) or Cloud TPU from the environment, and on a single machine
does nothing. A coordinator that cannot be reached is an error after
`timeout_s`, not a hang.
"""
from __future__ import annotations

import os
import socket
import time

import jax

from lmjax.errors import UserError

# Environment variables by which JAX's cluster detection knows it is one of many processes.
CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "JOBSET_NAME", "TPU_WORKER_HOSTNAMES",
               "MEGASCALE_COORDINATOR_ADDRESS")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int | None = None) -> None:
  # LMJAX_DISTRIBUTED_TIMEOUT (seconds) shortens the wait, e.g. in tests of a wrong address.
  timeout_s = timeout_s or int(os.environ.get("LMJAX_DISTRIBUTED_TIMEOUT", 120))
  explicit = coordinator is not None or num_processes is not None or process_id is not None
  if explicit and None in (coordinator, num_processes, process_id):
    raise UserError("multi-process training needs all of --coordinator HOST:PORT, --num-processes N "
                    "and --process-id I (or none, to let JAX read them from SLURM/Kubernetes/TPU)")
  if not explicit and not any(os.environ.get(k) for k in CLUSTER_ENV):
    return
  if jax.distributed.is_initialized():
    return
  if explicit and num_processes == 1:
    return
  # CPU devices exchange collectives through gloo (tests, laptops); accelerators ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit and process_id != 0:
    wait_for_coordinator(coordinator, timeout_s)
  try:
    if explicit:
      jax.distributed.initialize(coordinator, num_processes, process_id,
                                 initialization_timeout=timeout_s)
    else:
      jax.distributed.initialize(initialization_timeout=timeout_s)
  except Exception as e:  # noqa: BLE001 -- jax raises several types here; all mean the same to a user
    where = coordinator or "the coordinator from the environment"
    raise UserError(f"could not join the process group at {where} within {timeout_s}s "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); check that process 0 "
                    "is running and the address is reachable from this host") from None


def wait_for_coordinator(coordinator: str, timeout_s: int) -> None:
  """Polls HOST:PORT until it accepts a connection. JAX's client aborts the whole process
  (a C++ fatal log, no Python exception) when the coordinator never answers, so we ask first."""
  host, _, port = coordinator.rpartition(":")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=min(5.0, timeout_s)):
        return
    except (OSError, ValueError) as e:
      if time.monotonic() > deadline:
        raise UserError(f"could not join the process group at {coordinator} within {timeout_s}s "
                        f"({type(e).__name__}: {e}); check that process 0 is running and the address "
                        "is reachable from this host") from None
    time.sleep(0.5)


def barrier(name: str) -> None:
  """All processes reach this point before any goes on (e.g. process 0 wrote a file)."""
  from jax.experimental import multihost_utils
  multihost_utils.sync_global_devices(name)


def allgather_json(obj) -> list:
  """Every process's `obj` (JSON-able), in process order: e.g. each host's data iterator
  state, which process 0 alone writes into the checkpoint."""
  if jax.process_count() == 1:
    return [obj]
  import json

  import numpy as np
  from jax.experimental import multihost_utils
  raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([raw.size], np.int32))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:raw.size] = raw
  rows = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:int(n)]).decode()) for row, n in zip(rows, np.ravel(sizes))]
