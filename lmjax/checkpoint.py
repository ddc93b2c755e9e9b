"""Orbax checkpoints in WORKDIR/checkpoints, one item per part of the training state, and a
workdir's config.json: the I/O that training, inference and conversion all read and write.

    model, params = load_model("runs/gpt_tiny")     # what lmjax.load returns

Items: "params", "opt_state", "meta" (step, rng, skipped steps), "data" (input
iterator state), "config" (the experiment config). A converted Hugging Face model
has only "params" and "config", so `lmjax.load` reads both alike.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a `kill -9` mid-save leaves the previous checkpoint intact;
`restore_latest` also skips a complete-looking but unreadable one.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from lmjax import models
from lmjax.errors import UserError


def checkpoint_dir(workdir) -> pathlib.Path:
  return pathlib.Path(workdir).resolve() / "checkpoints"


def open_manager(workdir, keep: int, best_metric: str = "", best_mode: str = "min",
                 asynchronous: bool = True) -> ocp.CheckpointManager:
  """Keeps the last `keep` checkpoints plus the best one by eval `best_metric`."""
  preserve = [policies.LatestN(n=keep)]
  if best_metric:
    preserve.append(policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min",
                                   n=1, keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=asynchronous, cleanup_tmp_directories=True,
      preservation_policy=policies.AnyPreservationPolicy(preserve))
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(mngr: ocp.CheckpointManager, step: int, params, opt_state, meta: dict, data_state: dict,
         config: dict, metrics: dict | None = None) -> None:
  """Starts an (asynchronous) save; arrays may be sharded over any mesh."""
  mngr.save(step, metrics=metrics, force=True, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
      meta=ocp.args.JsonSave(meta), data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config)))


def restore_latest(mngr: ocp.CheckpointManager, params_target, opt_state_target):
  """(step, params, opt_state, meta, data_state) of the newest readable checkpoint, or None.

  Targets are pytrees of jax.ShapeDtypeStruct carrying the shardings wanted now,
  so a checkpoint written under one parallelism restores under another.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      r = mngr.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(params_target), opt_state=ocp.args.StandardRestore(opt_state_target),
          meta=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint is skipped, and said so
      print(f"lmjax: checkpoint {step} in {mngr.directory} is unreadable ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); trying the previous one", file=sys.stderr)
      continue
    return step, r["params"], r["opt_state"], r["meta"], r["data"]
  return None


def save_params(workdir, params, config: dict, step: int = 0) -> None:
  """Write params + config as checkpoint `step` (used by `lmjax convert`)."""
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
  with ocp.CheckpointManager(checkpoint_dir(workdir), options=options) as mngr:
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                            config=ocp.args.JsonSave(config)), force=True)
    mngr.wait_until_finished()


def restore_params(workdir, step: int | None = None, target: Any = None):
  """Params of checkpoint `step` (default: the newest), on the default device unless
  `target` (ShapeDtypeStructs with shardings) says otherwise."""
  path = checkpoint_dir(workdir)
  if not path.is_dir():
    raise UserError(f"no checkpoints in {path}; train (lmjax train) or convert (lmjax convert) first")
  handlers = {"params": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True),
                             item_handlers=handlers) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise UserError(f"{path} holds no complete checkpoint")
    if target is None:
      # Without a target orbax would restore onto the devices recorded at save time.
      meta = mngr.item_metadata(step)["params"]
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta.tree)
    restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
  return restored["params"]


def load_model(workdir, step: int | None = None):
  """(model, params) of a workdir: a training run or a converted Hugging Face checkpoint."""
  cfg = models.model_config(read_config(workdir)["model"])
  return models.build(cfg), restore_params(workdir, step)


def rng_to_json(rng: jax.Array) -> list[int]:
  return np.asarray(jax.random.key_data(rng)).tolist()


def rng_from_json(data: list[int]) -> jax.Array:
  return jax.random.wrap_key_data(np.asarray(data, np.uint32))


def write_config(workdir, config: dict) -> None:
  path = pathlib.Path(workdir) / "config.json"
  path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_config(workdir) -> dict:
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise UserError(f"{workdir} has no config.json; is it an lmjax workdir (from lmjax train or lmjax convert)?")
  return json.loads(path.read_text())
