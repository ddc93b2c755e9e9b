"""The model's configuration: one frozen dataclass for encoder and decoder, and the choices each
field takes. Plain Python, no JAX: an experiment config is checked against it without loading a model.

    cfg = TransformerConfig(**PRESETS["bert-tiny"], vocab_size=tok.vocab_size)
"""
from __future__ import annotations

import dataclasses
from typing import Any

from lmjax.models.presets import PRESETS

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "sinusoidal", "rotary")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu")
ATTENTION = ("auto", "xla", "cudnn", "einsum")
REMAT = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")
PARAM_DTYPES = ("float32", "bfloat16")
HEADS = ("mlm", "nsp", "classify", "span", "rtd")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """One frozen config serves the encoder and the decoder: `TransformerConfig(**c.model)`."""
  vocab_size: int = 8192
  hidden: int = 256             # D
  num_layers: int = 4           # N
  num_heads: int = 4            # H; head dim K = D // H
  mlp_dim: int = 1024           # F
  max_len: int = 512            # learned position table size; also the KV cache bound
  type_vocab_size: int = 0      # segment embeddings (BERT: 2); 0 = none
  causal: bool = False          # decoder-only when True
  pre_ln: bool = False          # BERT is post-LN, GPT-2 pre-LN
  norm: str = "layernorm"
  norm_eps: float = 1e-12
  position: str = "learned"
  rope_base: float = 10000.0
  activation: str = "gelu"
  use_bias: bool = True         # biases of the dense layers
  norm_bias: bool = True        # LayerNorm's bias (nanoGPT's bias=False: use_bias=False, norm_bias=False)
  tie_embeddings: bool = True
  heads: tuple = ()             # encoder heads: "mlm", "nsp", "classify", "span", "rtd"; decoder: "classify"
  num_labels: int = 2           # classify head width
  generator_fraction: float = 0.25  # "rtd" (ELECTRA): the generator's width / this model's (models/electra.py)
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  init_std: float = 0.02
  scale_residual_init: bool = False  # GPT-2: the projections into the residual stream start at init_std / sqrt(2 N)
  dtype: str = "float32"        # compute dtype; params stay in param_dtype
  param_dtype: str = "float32"
  attention: str = "auto"       # "auto": jax.nn.dot_product_attention on GPU (cuDNN flash when it
                                # can), "einsum" elsewhere; or force "xla", "cudnn", "einsum"
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    for field, choices in (("norm", NORMS), ("position", POSITIONS), ("activation", ACTIVATIONS),
                           ("attention", ATTENTION), ("remat", REMAT), ("dtype", DTYPES),
                           ("param_dtype", PARAM_DTYPES)):
      if getattr(self, field) not in choices:
        raise ValueError(f"model.{field}={getattr(self, field)!r} is not one of {choices}")
    if self.hidden % self.num_heads:
      raise ValueError(f"model.hidden={self.hidden} is not divisible by model.num_heads={self.num_heads}")
    if self.position == "rotary" and (self.hidden // self.num_heads) % 2:
      raise ValueError("rotary positions need an even head dim; change model.hidden or model.num_heads")
    bad = set(self.heads) - set(HEADS)
    if bad:
      raise ValueError(f"model.heads has {sorted(bad)}; valid heads are {', '.join(HEADS)}")
    if {"rtd", "mlm"} <= set(self.heads):
      raise ValueError("model.heads has both rtd and mlm; an ELECTRA model's MLM head is its generator's: drop mlm")
    if "rtd" in self.heads and not 0 < self.generator_fraction <= 1:
      raise ValueError(f"model.generator_fraction={self.generator_fraction} must be in (0, 1]; ELECTRA uses 0.25")
    if self.causal and set(self.heads) & {"mlm", "nsp", "span", "rtd"}:
      raise ValueError(f"a decoder (model.causal=True) cannot have heads {self.heads}; use an encoder "
                       "(a decoder takes classify only)")

  @property
  def head_dim(self) -> int:
    return self.hidden // self.num_heads

  @property
  def compute_dtype(self):
    import jax.numpy as jnp   # here, not at the top: loading a config must not import JAX
    return jnp.dtype(self.dtype)


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
