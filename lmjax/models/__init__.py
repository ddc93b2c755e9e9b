"""Model library: `build(cfg)` returns the Encoder or Decoder a TransformerConfig describes.

Importing this package loads no JAX (an experiment config reads `model_fields` from it); the
functions that build a model import the model modules when they are called.
"""
from __future__ import annotations

from lmjax.models.config import TransformerConfig, model_config, model_fields
from lmjax.models.presets import PRESETS


def build(cfg: TransformerConfig):
  """The flax Module `cfg` describes: a Decoder if cfg.causal, else an Encoder."""
  from lmjax.models.decoder import Decoder
  from lmjax.models.encoder import Encoder
  return Decoder(cfg) if cfg.causal else Encoder(cfg)


def init_params(cfg: TransformerConfig, rng, seq_len: int = 8):
  """Plain-pytree params (logical-axis boxes removed)."""
  import flax.linen as nn
  import jax.numpy as jnp
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return nn.unbox(build(cfg).init(rng, ids))["params"]


def param_count(cfg: TransformerConfig) -> int:
  import jax
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  return sum(x.size for x in jax.tree.leaves(shapes))


__all__ = ["PRESETS", "TransformerConfig", "build", "init_params", "model_config", "model_fields", "param_count"]
