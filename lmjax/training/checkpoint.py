"""Orbax checkpoints in WORKDIR/checkpoints, one item per part of the state.

Items: "params", "opt_state", "meta" (step, rng), "data" (input iterator state),
"config" (the experiment config as JSON). A converted Hugging Face model is the same
layout with only "params" and "config", so `lmjax.load` reads both alike.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from lmjax.errors import UserError


def checkpoint_dir(workdir) -> pathlib.Path:
  return pathlib.Path(workdir).resolve() / "checkpoints"


def save_params(workdir, params, config: dict, step: int = 0) -> None:
  """Write params + config as checkpoint `step` (used by `lmjax convert`)."""
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
  with ocp.CheckpointManager(checkpoint_dir(workdir), options=options) as mngr:
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                            config=ocp.args.JsonSave(config)), force=True)
    mngr.wait_until_finished()


def restore_params(workdir, step: int | None = None, target: Any = None):
  """Params of checkpoint `step` (default: latest), as arrays on the default device.

  `target` (a pytree of jax.ShapeDtypeStruct with shardings) restores straight
  into a sharded layout.
  """
  path = checkpoint_dir(workdir)
  if not path.is_dir():
    raise UserError(f"no checkpoints in {path}; train (lmjax train) or convert (lmjax convert) first")
  with ocp.CheckpointManager(path) as mngr:
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


def write_config(workdir, config: dict) -> None:
  path = pathlib.Path(workdir) / "config.json"
  path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_config(workdir) -> dict:
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise UserError(f"{workdir} has no config.json; is it an lmjax workdir (from lmjax train or lmjax convert)?")
  return json.loads(path.read_text())
