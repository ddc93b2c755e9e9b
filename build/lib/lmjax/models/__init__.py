"""Model library: `build(cfg)` returns the Encoder or Decoder a TransformerConfig describes."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from lmjax.models.decoder import Decoder, DecoderOutput, init_cache
from lmjax.models.encoder import Encoder, EncoderOutput
from lmjax.models.layers import TransformerConfig, stack_layers, unstack_layers
from lmjax.models.presets import PRESETS


def model_config(model_section: dict[str, Any]) -> TransformerConfig:
  """The model section of an experiment config (optionally naming a `preset`) -> TransformerConfig.

  Keys set in the section override the preset's.
  """
  section = dict(model_section)
  preset = section.pop("preset", "") or ""
  if preset and preset not in PRESETS:
    raise ValueError(f"model.preset={preset!r} is not one of {sorted(PRESETS)}")
  base = dict(PRESETS[preset]) if preset else {}
  base.update({k: v for k, v in section.items() if v is not None})
  if "heads" in base:
    base["heads"] = tuple(base["heads"])
  return TransformerConfig(**base)


def model_fields(preset: str = "", **overrides) -> dict[str, Any]:
  """Every TransformerConfig field and its value, from a preset and overrides, plus the preset's
  name: a whole model section, as config files and config.json hold it."""
  fields = {f.name: f.default for f in dataclasses.fields(TransformerConfig)}
  if preset:
    fields.update(PRESETS[preset])
  fields.update(overrides)
  return dict(preset=preset, **fields)


def build(cfg: TransformerConfig) -> nn.Module:
  return Decoder(cfg) if cfg.causal else Encoder(cfg)


def init_params(cfg: TransformerConfig, rng: jax.Array, seq_len: int = 8):
  """Plain-pytree params (logical-axis boxes removed)."""
  model = build(cfg)
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return nn.unbox(model.init(rng, ids))["params"]


def param_count(cfg: TransformerConfig) -> int:
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  return sum(x.size for x in jax.tree.leaves(shapes))


__all__ = ["Decoder", "DecoderOutput", "Encoder", "EncoderOutput", "PRESETS", "TransformerConfig",
           "build", "init_cache", "init_params", "model_config", "model_fields", "param_count", "stack_layers",
           "unstack_layers"]
