"""Compiling the steps three ways, chosen by `parallel.mode`:

  jit   one device.
  pmap  data parallel over the local devices: state replicated (leading device axis),
        batch split into B/n rows per device, loss/weight/gradient sums psummed.
  mesh  one jit over a Mesh with axes ("data", "fsdp", "tensor"): params and optimizer
        state sharded by the logical-axis RULES below, batch rows split over
        ("data", "fsdp"), XLA inserts the collectives.

    mesh = make_mesh(data=2, fsdp=2, tensor=2) if mode == "mesh" else None
    state = create_state(mode, model_cfg, tx, rng, mesh)
    step = compile_train_step(functools.partial(train_step, ...), mode, state, mesh)
    state, metrics = step(state, put_batch(np_batch, mode, mesh), rng)
    saved = host_state(state, mode)   # saved.params, saved.opt_state for checkpoint.save

Every function takes the same (mode, mesh) pair; nothing else is remembered.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lmjax.errors import UserError
from lmjax.training.state import TrainState, boxed_init, init_state

MODES = ("jit", "pmap", "mesh")
MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")   # batch rows are split over these; replicated over "tensor"
PMAP_AXIS = "devices"

# Logical axis (as annotated in models/layers.py) -> mesh axis. FSDP shards the model
# width of every weight; tensor parallelism (Megatron) splits heads, MLP and vocab.
RULES = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("layers", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all); data=-1 takes what is left."""
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  if data == -1:
    if fsdp < 1 or tensor < 1 or n % (fsdp * tensor):
      raise UserError(f"parallel.fsdp={fsdp} x parallel.tensor={tensor} does not divide the {n} "
                      "devices; choose sizes whose product divides the device count")
    data = n // (fsdp * tensor)
  if min(data, fsdp, tensor) < 1 or data * fsdp * tensor != n:
    raise UserError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = {data * fsdp * tensor} "
                    f"devices, but there are {n}; make the product {n} (or set parallel.data=-1)")
  # Explicit Auto axes: the step is written for global arrays and lets XLA place collectives.
  return jax.make_mesh((data, fsdp, tensor), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


def mesh_from_config(c_parallel) -> Mesh | None:
  return make_mesh(c_parallel.data, c_parallel.fsdp, c_parallel.tensor) if c_parallel.mode == "mesh" else None


def batch_shards(mode: str, mesh: Mesh | None = None) -> int:
  """How many ways the rows of a global batch are split."""
  if mode not in MODES:
    raise UserError(f"parallel.mode={mode!r} is not one of {MODES}")
  if mode == "pmap":
    return jax.local_device_count() * jax.process_count()
  if mode == "mesh":
    return mesh.shape["data"] * mesh.shape["fsdp"]
  return 1


def check_batch_size(batch_size: int, mode: str, mesh: Mesh | None = None, grad_accum: int = 1) -> None:
  """Every device gets the same whole number of rows of every micro-batch."""
  shards = batch_shards(mode, mesh)
  if grad_accum < 1 or batch_size % (shards * grad_accum):
    raise UserError(f"data.batch_size={batch_size} does not split into optim.grad_accum={grad_accum} "
                    f"micro-batches over {shards} batch shards (parallel.mode={mode}); use a multiple "
                    f"of {shards * max(grad_accum, 1)}")


# --- state ---------------------------------------------------------------------

def state_shardings(mesh: Mesh, model_cfg, tx: optax.GradientTransformation) -> TrainState:
  """NamedShardings of the whole TrainState, from the model's logical axis annotations.
  Optimizer-state leaves shaped like params (Adam's moments) follow their param;
  others (counts, Adafactor's factored statistics) are replicated."""
  boxed = jax.eval_shape(lambda: boxed_init(model_cfg, jax.random.key(0)))
  param_specs = nn.get_partition_spec(boxed)["params"]
  param_shapes = nn.unbox(boxed)["params"]
  opt_shapes = jax.eval_shape(tx.init, param_shapes)
  follow = lambda leaf, spec, param: spec if leaf.shape == param.shape else P()
  opt_specs = optax.tree_map_params(tx, follow, opt_shapes, param_specs, param_shapes,
                                    transform_non_params=lambda _: P(),
                                    is_leaf=lambda x: isinstance(x, P))
  logical = TrainState(step=P(), params=param_specs, opt_state=opt_specs, skipped=P())
  return nn.logical_to_mesh_sharding(logical, mesh, RULES)


def pmap_sharding() -> NamedSharding:
  """The layout pmap itself uses for its inputs: leading axis over the local devices."""
  return NamedSharding(Mesh(np.array(jax.local_devices()), (PMAP_AXIS,)), P(PMAP_AXIS))


def replicate(tree):
  """One copy per local device, stacked on a leading axis, as pmap takes it."""
  n = jax.local_device_count()
  stack = lambda t: jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), t)
  return jax.jit(stack, out_shardings=pmap_sharding())(tree)


def create_state(mode: str, model_cfg, tx, rng, mesh: Mesh | None = None) -> TrainState:
  """A fresh state laid out for `mode`; under a mesh each device only ever holds its shards."""
  init = functools.partial(init_state, model_cfg, tx)
  if mode == "mesh":
    return jax.jit(init, out_shardings=state_shardings(mesh, model_cfg, tx))(rng)
  state = jax.jit(init)(rng)
  return replicate(state) if mode == "pmap" else state


def place_state(state: TrainState, mode: str, mesh: Mesh | None = None, model_cfg=None, tx=None):
  """A host (e.g. restored) state -> laid out for `mode` (the mesh needs model_cfg and tx)."""
  if mode == "mesh":
    return jax.device_put(state, state_shardings(mesh, model_cfg, tx))
  if mode == "pmap":
    return replicate(state)
  return jax.device_put(state)


def host_state(state: TrainState, mode: str) -> TrainState:
  """The state as one global copy, for checkpoints and export: pmap's first replica;
  jit and mesh arrays already are global (Orbax saves sharded arrays as they are)."""
  return jax.tree.map(lambda x: x[0], state) if mode == "pmap" else state


def restore_target(state: TrainState, mode: str) -> TrainState:
  """ShapeDtypeStructs of one global copy of `state`, with the shardings to restore it into:
  the mesh's own; for pmap one device, replicated after (its stacked layout is not a global array)."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device if mode == "pmap"
                                                     else x.sharding), host_state(state, mode))


def place_restored(restored: TrainState, target: TrainState, mode: str) -> TrainState:
  """A state restored into `restore_target`'s layout -> laid out for `mode`; host scalars
  (step, skipped) join the target's shardings."""
  if mode == "pmap":
    return replicate(restored)
  if mode == "jit":
    return jax.device_put(restored)
  return restored.replace(step=jax.device_put(restored.step, target.step.sharding),
                          skipped=jax.device_put(restored.skipped, target.skipped.sharding))


# --- batches -------------------------------------------------------------------

def put_batch(batch: dict, mode: str, mesh: Mesh | None = None) -> dict:
  """A numpy batch (this process's rows) -> device arrays laid out for `mode`."""
  if mode == "mesh":
    rows = NamedSharding(mesh, P(BATCH_AXES))
    return {k: jax.make_array_from_process_local_data(rows, np.asarray(v)) for k, v in batch.items()}
  if mode == "pmap":
    n = jax.local_device_count()
    sharding = pmap_sharding()
    return {k: jax.device_put(np.asarray(v).reshape(n, -1, *np.shape(v)[1:]), sharding)
            for k, v in batch.items()}
  return jax.device_put(batch)


# --- compiled steps --------------------------------------------------------------

def compile_train_step(step_fn, mode: str, state: TrainState, mesh: Mesh | None = None):
  """step_fn(state, batch, rng, axis_name=None) -> (state, metrics), e.g. a partial of
  steps.train_step, compiled once for `mode` with the state's buffers donated.
  The compiled step returns metrics as plain scalars in every mode."""
  if mode == "pmap":
    return jax.pmap(functools.partial(step_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
                    in_axes=(0, 0, None), out_axes=(0, None), donate_argnums=0)
  if mode == "mesh":
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    replicated = NamedSharding(mesh, P())
    return jax.jit(step_fn, in_shardings=(state_sharding, NamedSharding(mesh, P(BATCH_AXES)), replicated),
                   out_shardings=(state_sharding, replicated), donate_argnums=0)
  return jax.jit(step_fn, donate_argnums=0)


def compile_eval_step(eval_fn, mode: str, mesh: Mesh | None = None):
  """eval_fn(params, batch, rng, axis_name=None) -> metrics, e.g. a partial of steps.eval_step;
  called with state.params as laid out by create_state."""
  if mode == "pmap":
    return jax.pmap(functools.partial(eval_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
                    in_axes=(0, 0, None), out_axes=None)
  if mode == "mesh":
    replicated = NamedSharding(mesh, P())
    return jax.jit(eval_fn, in_shardings=(None, NamedSharding(mesh, P(BATCH_AXES)), replicated),
                   out_shardings=replicated)
  return jax.jit(eval_fn)
