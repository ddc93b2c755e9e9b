"""ELECTRA's generator and discriminator head (Clark et al. 2020), used by the Encoder when
"rtd" is in cfg.heads; the objective is objectives/electra.py.

The generator is a small masked LM: its width is cfg.generator_fraction of the discriminator's,
with the same depth (ELECTRA's generator_layers=1.0), and it shares the discriminator's
embeddings (token, position, segment and their LayerNorm), as ELECTRA's code does by default
(untied_generator_embeddings=False). It samples a token for each masked position; the
discriminator (the Encoder itself, whose params stay an ordinary BERT encoder's) reads the
sampled sequence and its "rtd" head says, per token, original or replaced.

Params: the discriminator's at the top level (embed, embed_norm, stack, ...), the generator's
under "generator", the discriminator head under "rtd_head"; fine-tuning (graft), export and
probes see a plain BERT encoder and leave the other two out.

Matching google-research/electra (run_pretraining.py, pretrain/pretrain_helpers.py):
  * generator_config: hidden = round(D * fraction), layers = N, MLP = F * fraction, heads =
    max(1, round(H * fraction)). ELECTRA sets intermediate 4 x hidden and heads hidden // 64:
    the same numbers for BERT's shapes (F = 4D, head dim 64), and ours keep the head dim of
    models whose head dim is not 64.
  * the embeddings are D wide (ELECTRA's embedding_size defaults to the discriminator's hidden);
    the generator projects them to its width ("embed_project", ELECTRA's embeddings_project);
    its MLM head maps back to D (dense, activation, LayerNorm) and is tied to the shared table
    (get_token_logits).
  * sampling: a draw from softmax(logits) (ELECTRA: Gumbel-max at temperature 1, the same
    distribution), as data, so no gradient flows through it; per row from that row's key,
    never from a flax rng stream, so the draw depends on (seed, step, global row) only.
  * RtdHead: dense(D), activation, dense(1) (_get_discriminator_output).
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.models import xla_cpu
from lmjax.models.layers import Norm, Stack, TransformerConfig, dense_init, zeros_init


def generator_config(cfg: TransformerConfig) -> TransformerConfig:
  """The generator's shapes: cfg's, narrowed by cfg.generator_fraction (see the docstring)."""
  hidden = max(1, round(cfg.hidden * cfg.generator_fraction))
  num_heads = max(1, round(cfg.num_heads * cfg.generator_fraction))
  if hidden % num_heads:
    raise ValueError(f"model.generator_fraction={cfg.generator_fraction} gives a generator of width {hidden} "
                     f"and {num_heads} heads, which do not divide; choose a fraction with hidden * fraction "
                     "divisible by num_heads * fraction")
  return dataclasses.replace(cfg, hidden=hidden, num_heads=num_heads,
                             mlp_dim=max(1, round(cfg.mlp_dim * cfg.generator_fraction)), heads=())


class Generator(nn.Module):
  """Shared embeddings (D) -> [projection] -> a narrow Stack -> MLM logits over the M positions."""
  cfg: TransformerConfig     # the discriminator's
  mlm_head: type             # encoder.MlmHead (passed in: encoder.py imports this file)

  @nn.compact
  def __call__(self, x_BxLxD, mask_Bx1xLxL, positions_BxL, row_ids_B, deterministic: bool, embed,
               mlm_positions_BxM=None):
    cfg, gen = self.cfg, generator_config(self.cfg)
    x_BxLxG = x_BxLxD
    if gen.hidden != cfg.hidden:
      x_BxLxG = nn.Dense(gen.hidden, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
                         kernel_init=dense_init(cfg, "embed", None), bias_init=zeros_init(None),
                         dot_general=xla_cpu.dense_dot_general, name="embed_project")(x_BxLxD)
    x_BxLxG, _ = Stack(gen, name="stack")(x_BxLxG, mask_Bx1xLxL, positions_BxL, row_ids_B, deterministic)
    if cfg.pre_ln:
      x_BxLxG = Norm(gen, name="final_norm")(x_BxLxG)
    if mlm_positions_BxM is not None:
      x_BxLxG = jnp.take_along_axis(x_BxLxG, mlm_positions_BxM[..., None], axis=1)
    # The head's transform maps G back to D, the width of the tied table (ELECTRA's get_token_logits).
    return self.mlm_head(cfg, name="mlm_head")(x_BxLxG, embed)


class RtdHead(nn.Module):
  """Replaced-token detection: one logit per token, > 0 for "replaced"."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    dense = functools.partial(nn.Dense, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
                              bias_init=zeros_init(None), dot_general=xla_cpu.dense_dot_general)
    act = functools.partial(nn.gelu, approximate=cfg.activation == "gelu_tanh")
    h_BxLxD = act(dense(cfg.hidden, kernel_init=dense_init(cfg, "embed", None), name="dense")(x_BxLxD))
    return dense(1, kernel_init=dense_init(cfg, None, None), name="out")(h_BxLxD)[..., 0].astype(jnp.float32)


def sample(keys_Bx2, logits_BxMxV):
  """One token per position from softmax(logits), row b from its key data keys_Bx2[b] (uint32)."""
  logits_BxMxV = jax.lax.stop_gradient(logits_BxMxV.astype(jnp.float32))
  draw = lambda key_2, logits_MxV: jax.random.categorical(jax.random.wrap_key_data(key_2), logits_MxV, -1)
  return jax.vmap(draw)(keys_Bx2, logits_BxMxV).astype(jnp.int32)


def corrupt(ids_BxL, replace_BxL, samples_BxM, positions_BxM=None):
  """The discriminator's input: ids with each position in replace_BxL set to its sample.

  samples_BxM: one per position (M = L) or, with positions_BxM, one per slot of mlm.prepare's
  layout (the selected positions in order, then padding slots, which are not written).
  """
  if positions_BxM is None:
    return jnp.where(replace_BxL, samples_BxM.astype(ids_BxL.dtype), ids_BxL)
  L, M = ids_BxL.shape[1], positions_BxM.shape[1]
  filled_BxM = jnp.arange(M) < jnp.sum(replace_BxL, -1, keepdims=True)
  # Padding slots point past the end, and mode="drop" skips them.
  where_BxM = jnp.where(filled_BxM, positions_BxM, L)
  write = lambda ids_L, where_M, samples_M: ids_L.at[where_M].set(samples_M.astype(ids_L.dtype), mode="drop")
  return jax.vmap(write)(ids_BxL, where_BxM, samples_BxM)
