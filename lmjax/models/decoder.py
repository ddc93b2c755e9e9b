"""Decoder-only Transformer (GPT) with an LM head and a key/value cache.

Full forward:   out = model.apply({"params": p}, ids_BxL, attention_mask=mask_BxL)
Packed rows:    segment_ids_BxL (0 = padding) and positions_BxL restart per document.
Incremental:    cache = init_cache(cfg, B, S); out = model.apply(..., ids_BxL, cache=cache)
                returns out.cache with the cursor advanced by L; logits equal the
                full forward's (tests/test_models.py).
Classifier:     heads=("classify",) adds class_logits from the last real token's state (GPT-1).
Prefix LM:      prefix_len_B: slots below it attend to each other both ways (UniLM, T5's prefix LM).
Dropout:        row_ids_B, the rows' indices in the global batch, which masks are drawn from
                (default 0..B-1); training passes them so masks do not depend on the device layout.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.models import xla_cpu
from lmjax.models.layers import (Dropout, Embed, Norm, Stack, TransformerConfig, dense_init, make_attention_mask,
                                 zeros_init)


@flax.struct.dataclass
class DecoderOutput:
  logits: jax.Array                # B x L x V, float32
  hidden: jax.Array                # B x L x D, final-norm output
  cache: Any = None                # updated KV cache when decoding
  class_logits: jax.Array | None = None  # B x C, from the last real token (heads=("classify",))


def init_cache(cfg: TransformerConfig, batch: int, max_len: int):
  """Empty cache: keys and values (tuples of N layers' B x H x S x K buffers), which slots
  hold tokens (B x S), cursor."""
  layer = lambda: jnp.zeros((batch, cfg.num_heads, max_len, cfg.head_dim), cfg.compute_dtype)
  return {"k": tuple(layer() for _ in range(cfg.num_layers)), "v": tuple(layer() for _ in range(cfg.num_layers)),
          "valid": jnp.zeros((batch, max_len), bool), "index": jnp.zeros((), jnp.int32)}


class Decoder(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, positions=None, segment_ids=None,
               cache=None, deterministic: bool = True, token_type_ids=None, row_ids=None, prefix_len=None):
    cfg = self.cfg
    ids_BxL = input_ids
    B, L = ids_BxL.shape
    valid_BxL = (jnp.ones((B, L), bool) if attention_mask is None else attention_mask.astype(bool))
    if segment_ids is not None:
      valid_BxL = valid_BxL & (segment_ids > 0)
    if cache is None:
      positions_BxL = (jnp.broadcast_to(jnp.arange(L), (B, L)) if positions is None else positions)
      slots_BxL = jnp.broadcast_to(jnp.arange(L), (B, L))
      mask = make_attention_mask(valid_BxL, cfg.causal, slots_BxL, slots_BxL, segment_ids, segment_ids, prefix_len)
      stack_cache = None
    else:
      # New tokens fill slots index..index+L; keys are every slot already written.
      index = cache["index"]
      key_valid_BxS = jax.lax.dynamic_update_slice(cache["valid"], valid_BxL, (0, index))
      S = key_valid_BxS.shape[1]
      slots_BxL = index + jnp.broadcast_to(jnp.arange(L), (B, L))
      # Position = number of real tokens before this one in the row (prompts are left-padded).
      if positions is None:
        positions_BxL = (jnp.sum(cache["valid"], -1, keepdims=True)
                         + jnp.cumsum(valid_BxL, -1) - valid_BxL).astype(jnp.int32)
      else:
        positions_BxL = positions
      mask = make_attention_mask(key_valid_BxS, True, slots_BxL, jnp.broadcast_to(jnp.arange(S), (B, S)))
      stack_cache = (cache["k"], cache["v"], index)

    embed = Embed(cfg, name="embed")
    x_BxLxD = embed(ids_BxL, positions_BxL)
    row_ids_B = jnp.arange(B) if row_ids is None else row_ids
    x_BxLxD = Dropout(cfg.dropout_rate)(x_BxLxD, row_ids_B, deterministic)
    x_BxLxD, new_kv = Stack(cfg, name="stack")(x_BxLxD, mask, positions_BxL, row_ids_B, deterministic, stack_cache,
                                               prefix_len is None)
    if cfg.pre_ln:
      x_BxLxD = Norm(cfg, name="final_norm")(x_BxLxD)
    if cfg.tie_embeddings:
      logits_BxLxV = embed.attend(x_BxLxD)
    else:
      logits_BxLxV = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                              param_dtype=cfg.param_dtype,
                              kernel_init=dense_init(cfg, "embed", "vocab"),
                              dot_general=xla_cpu.dense_dot_general, name="lm_head")(x_BxLxD)
    logits_BxLxV = xla_cpu.materialize_grad(logits_BxLxV)  # its gradient feeds two matmuls: compute it once
    class_logits_BxC = None
    if "classify" in cfg.heads:
      # GPT-1's classifier (Radford et al. 2018): the last real token has read the whole text.
      last_B = jnp.maximum(jnp.sum(valid_BxL, -1) - 1, 0)
      h_BxD = Dropout(cfg.dropout_rate)(x_BxLxD[jnp.arange(B), last_B], row_ids_B, deterministic)
      class_logits_BxC = nn.Dense(cfg.num_labels, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
                                  kernel_init=dense_init(cfg, "embed", None), bias_init=zeros_init(None),
                                  dot_general=xla_cpu.dense_dot_general, name="classify_head")(h_BxD)
      class_logits_BxC = class_logits_BxC.astype(jnp.float32)
    new_cache = None
    if cache is not None:
      new_cache = {"k": new_kv[0], "v": new_kv[1], "valid": key_valid_BxS, "index": cache["index"] + L}
    return DecoderOutput(logits=logits_BxLxV.astype(jnp.float32), hidden=x_BxLxD, cache=new_cache,
                         class_logits=class_logits_BxC)

