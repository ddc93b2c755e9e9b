"""Encoder-only Transformer (BERT) with its heads.

out = model.apply({"params": p}, ids_BxL, attention_mask=mask_BxL, token_type_ids=types_BxL)
out.logits (MLM, B x L x V), out.nsp_logits (B x 2), out.class_logits (B x C),
out.start_logits / out.end_logits (B x L), out.hidden (B x L x D), out.pooled (B x D).
Heads exist only when named in cfg.heads; their outputs are None otherwise.
`mlm_positions` (B x M) restricts the MLM head to M gathered positions, as BERT's
`max_predictions_per_seq` does, so the V-wide projection runs on M, not L, tokens.
`row_ids` (B): the rows' indices in the global batch, which dropout masks are drawn from
(default 0..B-1); training passes them so masks do not depend on the device layout.
ELECTRA ("rtd" in cfg.heads, models/electra.py): given `sample_keys` (B x 2 key data) and
`replace_mask` (B x L), a generator fills the replaced positions of input_ids with samples
and this encoder, the discriminator, reads the result: out.logits are then the generator's,
out.rtd_input_ids the sequence the discriminator read, out.rtd_logits (B x L) its verdicts.
Without sample_keys the discriminator reads input_ids as they are (probing, hidden states).
"""
from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.models import electra, xla_cpu
from lmjax.models.layers import (Dropout, Embed, Norm, Stack, TransformerConfig, dense_init, make_attention_mask,
                                 zeros_init)


@flax.struct.dataclass
class EncoderOutput:
  hidden: jax.Array                     # B x L x D
  pooled: jax.Array | None = None       # B x D, tanh(W h_[CLS] + b)
  logits: jax.Array | None = None       # B x L x V (or B x M x V), MLM
  nsp_logits: jax.Array | None = None   # B x 2
  class_logits: jax.Array | None = None  # B x C
  start_logits: jax.Array | None = None  # B x L, QA span start
  end_logits: jax.Array | None = None    # B x L
  rtd_logits: jax.Array | None = None    # B x L, ELECTRA's discriminator: > 0 = "replaced"
  rtd_input_ids: jax.Array | None = None  # B x L, the generator's samples in place: what it read


class Encoder(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, positions=None,
               segment_ids=None, mlm_positions=None, deterministic: bool = True, row_ids=None,
               sample_keys=None, replace_mask=None):
    cfg = self.cfg
    ids_BxL = input_ids
    B, L = ids_BxL.shape
    valid_BxL = jnp.ones((B, L), bool) if attention_mask is None else attention_mask.astype(bool)
    positions_BxL = jnp.broadcast_to(jnp.arange(L), (B, L)) if positions is None else positions
    row_ids_B = jnp.arange(B) if row_ids is None else row_ids
    mask = make_attention_mask(valid_BxL, False, query_segment_BxL=segment_ids, key_segment_BxS=segment_ids)

    embed = Embed(cfg, name="embed")
    embed_norm = None if cfg.pre_ln else Norm(cfg, name="embed_norm")

    def embed_ids(ids_BxL):   # ELECTRA's generator reads the same embeddings
      x_BxLxD = embed(ids_BxL, positions_BxL, token_type_ids)
      x_BxLxD = x_BxLxD if embed_norm is None else embed_norm(x_BxLxD)
      return Dropout(cfg.dropout_rate)(x_BxLxD, row_ids_B, deterministic)

    out = {}
    # init passes ids alone: the generator still runs then, so its params exist.
    if "rtd" in cfg.heads and (sample_keys is not None or self.is_initializing()):
      keys_Bx2 = jnp.zeros((B, 2), jnp.uint32) if sample_keys is None else sample_keys
      replace_BxL = jnp.zeros((B, L), bool) if replace_mask is None else replace_mask.astype(bool)
      generator = electra.Generator(cfg, MlmHead, name="generator")
      out["logits"] = logits_BxMxV = generator(embed_ids(ids_BxL), mask, positions_BxL, row_ids_B, deterministic,
                                               embed, mlm_positions)
      ids_BxL = electra.corrupt(ids_BxL, replace_BxL, electra.sample(keys_Bx2, logits_BxMxV), mlm_positions)
      out["rtd_input_ids"] = ids_BxL
    x_BxLxD = embed_ids(ids_BxL)
    x_BxLxD, _ = Stack(cfg, name="stack")(x_BxLxD, mask, positions_BxL, row_ids_B, deterministic)
    if cfg.pre_ln:
      x_BxLxD = Norm(cfg, name="final_norm")(x_BxLxD)

    dense = functools.partial(nn.Dense, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
                              bias_init=zeros_init(None), dot_general=xla_cpu.dense_dot_general)
    out["hidden"] = x_BxLxD
    if {"nsp", "classify"} & set(cfg.heads):
      pooler = dense(cfg.hidden, kernel_init=dense_init(cfg, "embed", None), name="pooler")
      out["pooled"] = pooled_BxD = jnp.tanh(pooler(x_BxLxD[:, 0]))
      if "nsp" in cfg.heads:
        out["nsp_logits"] = dense(2, kernel_init=dense_init(cfg, "embed", None),
                                  name="nsp_head")(pooled_BxD).astype(jnp.float32)
      if "classify" in cfg.heads:
        h_BxD = Dropout(cfg.dropout_rate)(pooled_BxD, row_ids_B, deterministic)
        out["class_logits"] = dense(cfg.num_labels, kernel_init=dense_init(cfg, "embed", None),
                                    name="classify_head")(h_BxD).astype(jnp.float32)
    if "mlm" in cfg.heads:
      h_BxMxD = x_BxLxD
      if mlm_positions is not None:
        h_BxMxD = jnp.take_along_axis(x_BxLxD, mlm_positions[..., None], axis=1)
      out["logits"] = MlmHead(cfg, name="mlm_head")(h_BxMxD, embed)
    if "rtd" in cfg.heads:
      out["rtd_logits"] = electra.RtdHead(cfg, name="rtd_head")(x_BxLxD)
    if "span" in cfg.heads:
      span_BxLx2 = dense(2, kernel_init=dense_init(cfg, "embed", None), name="span_head")(x_BxLxD)
      span_BxLx2 = span_BxLx2.astype(jnp.float32)
      out["start_logits"], out["end_logits"] = span_BxLx2[..., 0], span_BxLx2[..., 1]
    return EncoderOutput(**out)


class MlmHead(nn.Module):
  """BERT's transform (dense, activation, LayerNorm) then the decoder tied to the token embedding, plus a bias."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, h_BxMxD, embed: Embed):
    cfg = self.cfg
    act = functools.partial(nn.gelu, approximate=cfg.activation == "gelu_tanh")
    h_BxMxD = nn.Dense(cfg.hidden, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
                       kernel_init=dense_init(cfg, "embed", None), bias_init=zeros_init(None),
                       dot_general=xla_cpu.dense_dot_general, name="transform")(h_BxMxD)
    h_BxMxD = Norm(cfg, name="norm")(act(h_BxMxD))
    if cfg.tie_embeddings:
      logits_BxMxV = embed.attend(h_BxMxD)
    else:
      logits_BxMxV = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                              param_dtype=cfg.param_dtype, kernel_init=dense_init(cfg, "embed", "vocab"),
                              dot_general=xla_cpu.dense_dot_general, name="decoder")(h_BxMxD)
    bias_V = self.param("bias", zeros_init("vocab"), (cfg.vocab_size,), cfg.param_dtype)
    return xla_cpu.materialize_grad(logits_BxMxV + bias_V).astype(jnp.float32)  # gradient read by two matmuls
