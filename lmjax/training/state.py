"""The training state: everything a step changes, and nothing else.

The base rng is *not* in the state: it never changes, every step derives its keys
as fold_in(rng, state.step), so it is passed to the step as an argument and saved
once in the checkpoint's metadata. Resuming from (step, params, opt_state) with the
same seed replays the same masks and dropout.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmjax import models
from lmjax.errors import UserError


@flax.struct.dataclass
class TrainState:
  step: jax.Array       # int32 scalar: updates applied so far, plus steps skipped
  params: Any
  opt_state: Any
  skipped: jax.Array    # int32 scalar: steps whose update was dropped as non-finite


def boxed_init(model_cfg: models.TransformerConfig, rng: jax.Array, seq_len: int = 8):
  """Model variables with their logical-axis boxes (nn.Partitioned), for sharding rules."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return models.build(model_cfg).init(rng, ids)


def init_state(model_cfg: models.TransformerConfig, tx: optax.GradientTransformation,
               rng: jax.Array) -> TrainState:
  """A fresh state with plain (unboxed) params. Pure: jit it with out_shardings to
  create it directly sharded (training/parallel.py)."""
  params = nn.unbox(boxed_init(model_cfg, rng))["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    skipped=jnp.zeros((), jnp.int32))


def graft(params, pretrained):
  """`params` with each leaf replaced by `pretrained`'s at the same path (fine-tuning from a
  pretrained model); leaves it lacks (a new task head) keep their fresh values. Host arrays."""
  flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(pretrained)}

  def pick(path, x):
    y = flat.get(jax.tree_util.keystr(path))
    if y is None:
      return np.asarray(x)
    if y.shape != x.shape:
      raise UserError(f"pretrained {jax.tree_util.keystr(path)} has shape {y.shape}, this model needs "
                      f"{x.shape}; the --init checkpoint's architecture does not fit this config")
    return np.asarray(y, x.dtype)
  return jax.tree_util.tree_map_with_path(pick, params)
