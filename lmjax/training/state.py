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
import optax

from lmjax import models


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
