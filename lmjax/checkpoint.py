"""Orbax checkpoints in WORKDIR/checkpoints, one item per part of the training state, and a
workdir's config.json: the I/O that training, inference and conversion all read and write.

    model, params = load_model("runs/gpt_tiny")     # what lmjax.load returns

Items: "params", "opt_state", "meta" (step, rng, skipped steps), "data" (input
iterator state), "config" (the experiment config). A converted Hugging Face model
has only "params" and "config", so `lmjax.load` reads both alike.

Nothing here deletes a checkpoint but orbax's retention policy (the last train.keep, and the
best). Orbax writes each checkpoint into a temporary directory and renames it when complete, so
a `kill -9` mid-save leaves the previous checkpoint intact. A complete-looking checkpoint that
cannot be read is skipped by every reader (the newest readable one is used, and said so); the
trainer moves it aside into checkpoints/unreadable/STEP, with the reason, so that it can write
that step again.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from lmjax import models, paths
from lmjax.errors import UserError

UNREADABLE = "unreadable"   # checkpoints/unreadable/STEP[.N]: moved aside by the trainer, never deleted


def checkpoint_dir(workdir) -> epath.Path:
  return paths.path(workdir) / "checkpoints"


def steps(workdir) -> list[int]:
  """The complete checkpoints' steps, oldest first (orbax's temporary directories are not)."""
  directory = checkpoint_dir(workdir)
  return sorted(ocp.path.step.checkpoint_steps(directory)) if directory.is_dir() else []


def first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


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
  """((step, params, opt_state, meta, data_state) of the newest readable checkpoint or None,
  [(step, reason)] of the newer ones that could not be read).

  Targets are pytrees of jax.ShapeDtypeStruct carrying the shardings wanted now,
  so a checkpoint written under one parallelism restores under another.
  """
  unreadable = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      r = mngr.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(params_target), opt_state=ocp.args.StandardRestore(opt_state_target),
          meta=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint is skipped, and said so
      unreadable.append((step, first_line(e)))
      print(f"lmjax: checkpoint {step} in {mngr.directory} is unreadable ({first_line(e)}); "
            "trying the previous one", file=sys.stderr)
      continue
    return (step, r["params"], r["opt_state"], r["meta"], r["data"]), unreadable
  return None, unreadable


def move_aside(workdir, step: int, reason: str) -> epath.Path:
  """checkpoints/STEP -> checkpoints/unreadable/STEP (or STEP.1, ...), with REASON.txt: kept for a
  person to look at, out of the way of a new save of that step."""
  directory = checkpoint_dir(workdir)
  aside = directory / UNREADABLE
  aside.mkdir(parents=True, exist_ok=True)
  target, n = aside / str(step), 0
  while target.exists():
    n += 1
    target = aside / f"{step}.{n}"
  (directory / str(step)).rename(target)
  (target / "REASON.txt").write_text(f"moved aside {time.strftime('%Y-%m-%d %H:%M:%S')}: {reason}\n")
  return target


def save_params(workdir, params, config: dict, step: int = 0) -> None:
  """Write params + config as checkpoint `step` (used by `lmjax convert`)."""
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
  with ocp.CheckpointManager(checkpoint_dir(workdir), options=options) as mngr:
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                            config=ocp.args.JsonSave(config)), force=True)
    mngr.wait_until_finished()


def restore_params(workdir, step: int | None = None, target: Any = None):
  """Params of checkpoint `step` (default: the newest readable one, said on stderr when a newer one
  was skipped), on the default device unless `target` (ShapeDtypeStructs with shardings) says
  otherwise. Reads the params item alone."""
  directory = checkpoint_dir(workdir)
  found = steps(workdir)
  if not found:
    raise UserError(f"no complete checkpoint in {directory}; train (lmjax train) or convert (lmjax convert) first")
  if step is not None and step not in found:
    raise UserError(f"{directory} has no checkpoint {step}; it has {found}")
  skipped = []
  with ocp.StandardCheckpointer() as reader:
    for s in ([step] if step is not None else found[::-1]):
      item = directory / str(s) / "params"
      try:
        wanted = target
        if wanted is None:
          # Without a target orbax would restore onto the devices recorded at save time.
          device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
          wanted = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                reader.metadata(item).item_metadata.tree)
        params = reader.restore(item, wanted)
      except Exception as e:  # noqa: BLE001 -- an unreadable checkpoint is skipped, and said so
        skipped.append((s, first_line(e)))
        continue
      if skipped:
        print(f"lmjax: using checkpoint {s} of {directory}; newer ones are unreadable: "
              + "; ".join(f"{t} ({why})" for t, why in skipped), file=sys.stderr)
      return params
  raise UserError(f"no checkpoint in {directory} is readable (checkpoint {skipped[0][0]}: {skipped[0][1]}); "
                  "see checkpoints/unreadable/ or retrain")


def load_model(workdir, step: int | None = None):
  """(model, params) of a workdir: a training run or a converted Hugging Face checkpoint."""
  cfg = models.model_config(read_config(workdir)["model"])
  return models.build(cfg), restore_params(workdir, step)


def rng_to_json(rng: jax.Array) -> list[int]:
  return np.asarray(jax.random.key_data(rng)).tolist()


def rng_from_json(data: list[int]) -> jax.Array:
  return jax.random.wrap_key_data(np.asarray(data, np.uint32))


def write_config(workdir, config: dict) -> None:
  """config.json, replaced atomically: a kill mid-write leaves the old one whole."""
  path = paths.path(workdir) / "config.json"
  tmp = path.parent / "config.json.tmp"
  tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


def read_config(workdir) -> dict:
  path = paths.path(workdir) / "config.json"
  if not path.is_file():
    raise UserError(f"{workdir} has no config.json; is it an lmjax workdir (from lmjax train or lmjax convert)?")
  try:
    config = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is not valid JSON ({e}); restore it (the last checkpoint holds a copy "
                    "in its config item) or use a new --workdir") from None
  if not isinstance(config, dict):
    raise UserError(f"{path} is not a JSON object; restore it or use a new --workdir")
  return config
