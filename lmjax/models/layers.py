"""Shared Transformer blocks: embeddings, attention, MLP, norms, residual blocks.

Letters in names: B batch, L query length, S key length, D model width, H heads,
K head dim, F MLP hidden, V vocab, N layers.

Every kernel carries logical axis names ("embed", "heads", "mlp", "vocab", ...)
through `nn.with_logical_partitioning`; `training/parallel.py` maps them onto a
device mesh. `nn.unbox` after `init` leaves plain arrays, so params are a plain
pytree everywhere else. Three XLA:CPU-only tricks are called by name from `xla_cpu.py`
(Dense matmuls, gradient barriers, the tied head's table); on other platforms each is
the plain operation, so a block copied without them only needs those lines made plain.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.models import xla_cpu
from lmjax.models.config import TransformerConfig

def dense_init(cfg: TransformerConfig, *axes):
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), axes)


def residual_init(cfg: TransformerConfig, *axes):
  """Init of a projection that adds into the residual stream (attention out, MLP wo). GPT-2
  (section 2.3; nanoGPT and HF's GPT2 alike) scales these by 1/sqrt(2 N): each of the 2 N
  sublayers adds to the stream, so its variance at init stays that of one sublayer."""
  std = cfg.init_std / math.sqrt(2 * cfg.num_layers) if cfg.scale_residual_init else cfg.init_std
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def zeros_init(*axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones_init(*axes):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def row_dropout(x_Bx, rate: float, rng, row_ids_B):
  """Inverted dropout whose mask for row b is drawn from fold_in(rng, row_ids_B[b]): a function of
  the row's index in the global batch, not of where the row sits, so jit, pmap and any mesh draw
  the same masks (as masking does, training/steps.py)."""
  keep = 1.0 - rate
  keep_Bx = jax.vmap(lambda r: jax.random.bernoulli(jax.random.fold_in(rng, r), keep, x_Bx.shape[1:]))(row_ids_B)
  return jnp.where(keep_Bx, x_Bx / keep, jnp.zeros_like(x_Bx))


class Dropout(nn.Module):
  """`row_dropout` with this call site's own key from the "dropout" rng stream."""
  rate: float

  @nn.compact
  def __call__(self, x_Bx, row_ids_B, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x_Bx
    return row_dropout(x_Bx, self.rate, self.make_rng("dropout"), row_ids_B)


class Norm(nn.Module):
  """LayerNorm or RMSNorm, computed in float32 (variance in bf16 loses too much)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    x = x_BxLxD.astype(jnp.float32)
    scale_D = self.param("scale", ones_init("embed"), (x.shape[-1],), cfg.param_dtype)
    if cfg.norm == "rmsnorm":
      y = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * scale_D
    else:
      mean = jnp.mean(x, -1, keepdims=True)
      var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
      y = (x - mean) * jax.lax.rsqrt(var + cfg.norm_eps) * scale_D
      if cfg.norm_bias:
        y = y + self.param("bias", zeros_init("embed"), (x.shape[-1],), cfg.param_dtype)
    return y.astype(cfg.compute_dtype)


def sinusoid(positions_BxL, dim: int):
  """Fixed sin/cos position table of "Attention is all you need", evaluated at positions."""
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, dim, 2) / dim))
  angles_BxLxD2 = positions_BxL[..., None].astype(jnp.float32) * inv_freq
  return jnp.concatenate([jnp.sin(angles_BxLxD2), jnp.cos(angles_BxLxD2)], -1)


def rotary(x_BxLxHxK, positions_BxL, base: float):
  """Rotary position embedding (RoFormer), in the half-split layout of GPT-NeoX/LLaMA."""
  k = x_BxLxHxK.shape[-1]
  inv_freq = 1.0 / (base ** (jnp.arange(0, k, 2, dtype=jnp.float32) / k))
  angles_BxLx1xK2 = (positions_BxL[..., None].astype(jnp.float32) * inv_freq)[:, :, None, :]
  sin, cos = jnp.sin(angles_BxLx1xK2), jnp.cos(angles_BxLx1xK2)
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
  return out.astype(x_BxLxHxK.dtype)


class Embed(nn.Module):
  """Token + position (+ segment) embeddings; `attend` gives the tied output projection."""
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    emb = functools.partial(nn.Embed, embedding_init=dense_init(cfg, "vocab", "embed"),
                            param_dtype=cfg.param_dtype, dtype=cfg.compute_dtype)
    self.token = emb(cfg.vocab_size, cfg.hidden)
    if cfg.position == "learned":
      self.position = nn.Embed(cfg.max_len, cfg.hidden, embedding_init=dense_init(cfg, None, "embed"),
                               param_dtype=cfg.param_dtype, dtype=cfg.compute_dtype)
    if cfg.type_vocab_size:
      self.segment = nn.Embed(cfg.type_vocab_size, cfg.hidden,
                              embedding_init=dense_init(cfg, None, "embed"),
                              param_dtype=cfg.param_dtype, dtype=cfg.compute_dtype)

  def __call__(self, ids_BxL, positions_BxL, token_type_ids_BxL=None):
    cfg = self.cfg
    x_BxLxD = self.token(ids_BxL)
    if cfg.position == "learned":
      x_BxLxD = x_BxLxD + self.position(positions_BxL)
    elif cfg.position == "sinusoidal":
      x_BxLxD = x_BxLxD + sinusoid(positions_BxL, cfg.hidden).astype(x_BxLxD.dtype)
    if cfg.type_vocab_size:
      types_BxL = jnp.zeros_like(ids_BxL) if token_type_ids_BxL is None else token_type_ids_BxL
      x_BxLxD = x_BxLxD + self.segment(types_BxL)
    return x_BxLxD

  def attend(self, y_BxLxD):
    """Logits y E^T against the token table: the tied output projection."""
    y_BxLxD, table_VxD = nn.dtypes.promote_dtype(y_BxLxD, self.token.embedding, dtype=self.cfg.compute_dtype)
    table_DxV = xla_cpu.transpose_table(table_VxD, rows=math.prod(y_BxLxD.shape[:-1]))
    return xla_cpu.dense_dot_general(y_BxLxD, table_DxV, (((y_BxLxD.ndim - 1,), (0,)), ((), ())))


def make_attention_mask(key_valid_BxS, causal: bool, query_slot_BxL=None, key_slot_BxS=None,
                   query_segment_BxL=None, key_segment_BxS=None, prefix_len_B=None):
  """Boolean mask B x 1 x L x S: True where a query may attend to a key.

  Padded keys are masked; with segments, attention stays inside one packed
  document; causal masking compares slot indices (a query at slot i sees keys at
  slots <= i), so the same function serves full sequences and the KV cache.
  With `prefix_len_B` (a prefix LM), slots below it also see each other both ways.
  """
  mask_BxLxS = key_valid_BxS[:, None, :]  # B x 1 x S until a query-dependent term broadcasts it
  if query_segment_BxL is not None:
    mask_BxLxS = mask_BxLxS & (query_segment_BxL[:, :, None] == key_segment_BxS[:, None, :])
  if causal:
    sees_BxLxS = query_slot_BxL[:, :, None] >= key_slot_BxS[:, None, :]
    if prefix_len_B is not None:
      in_prefix = lambda slot: slot < prefix_len_B[:, None]
      sees_BxLxS = sees_BxLxS | (in_prefix(query_slot_BxL)[:, :, None] & in_prefix(key_slot_BxS)[:, None, :])
    mask_BxLxS = mask_BxLxS & sees_BxLxS
  # A padding query may have no key left (packed rows); give it every key so the
  # softmax stays finite. Its output is never read.
  mask_BxLxS = mask_BxLxS | ~jnp.any(mask_BxLxS, -1, keepdims=True)
  return mask_BxLxS[:, None, :, :]


class Attention(nn.Module):
  """Multi-head self-attention with an optional key/value cache."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD, mask_Bx1xLxS, positions_BxL, row_ids_B, deterministic: bool, cache=None,
               blocked: bool = True):
    cfg = self.cfg
    proj = functools.partial(nn.DenseGeneral, features=(cfg.num_heads, cfg.head_dim),
                             use_bias=cfg.use_bias, dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
                             dot_general=xla_cpu.dense_dot_general,
                             kernel_init=dense_init(cfg, "embed", "heads", "kv"),
                             bias_init=zeros_init("heads", "kv"))
    q_BxLxHxK = proj(name="query")(x_BxLxD)
    k_BxLxHxK = proj(name="key")(x_BxLxD)
    v_BxLxHxK = proj(name="value")(x_BxLxD)
    if cfg.position == "rotary":
      q_BxLxHxK = rotary(q_BxLxHxK, positions_BxL, cfg.rope_base)
      k_BxLxHxK = rotary(k_BxLxHxK, positions_BxL, cfg.rope_base)

    new_cache = None
    if cache is not None:
      # Write this chunk's keys/values at the cache cursor, in place; attend over all S slots.
      k_cache_BxHxSxK, v_cache_BxHxSxK, index = cache
      k_new_BxHxLxK = k_BxLxHxK.transpose(0, 2, 1, 3).astype(k_cache_BxHxSxK.dtype)
      v_new_BxHxLxK = v_BxLxHxK.transpose(0, 2, 1, 3).astype(v_cache_BxHxSxK.dtype)
      k_BxHxSxK = jax.lax.dynamic_update_slice(k_cache_BxHxSxK, k_new_BxHxLxK, (0, 0, index, 0))
      v_BxHxSxK = jax.lax.dynamic_update_slice(v_cache_BxHxSxK, v_new_BxHxLxK, (0, 0, index, 0))
      new_cache = (k_BxHxSxK, v_BxHxSxK)
      # Heads-major storage: the attention matmuls read each (row, head)'s S x K keys and values
      # in place; stored B x S x H x K, every step copied the whole cache transposed first.
      k_BxLxHxK, v_BxLxHxK = k_BxHxSxK.transpose(0, 2, 1, 3), v_BxHxSxK.transpose(0, 2, 1, 3)

    dropout_rng = None
    if not deterministic and cfg.attention_dropout_rate > 0:
      dropout_rng = self.make_rng("dropout")
    y_BxLxHxK = dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask_Bx1xLxS, cfg,
                                      dropout_rng, causal=cfg.causal and cache is None and blocked,
                                      row_ids_B=row_ids_B)
    out = nn.DenseGeneral(cfg.hidden, axis=(-2, -1), use_bias=cfg.use_bias, dtype=cfg.compute_dtype,
                          param_dtype=cfg.param_dtype, dot_general=xla_cpu.dense_dot_general,
                          kernel_init=residual_init(cfg, "heads", "kv", "embed"),
                          bias_init=zeros_init("embed"), name="out")
    return out(y_BxLxHxK), new_cache


QUERY_BLOCK = 64  # causal einsum attention: rows per query block


def attention_implementation(cfg) -> str:
  """"einsum" (below), or jax.nn.dot_product_attention's "xla" or "cudnn" ("auto" on a GPU: cuDNN
  where it applies). Attention dropout always takes the einsums, which see the probabilities."""
  if cfg.attention == "auto":
    return "cudnn" if jax.default_backend() == "gpu" else "einsum"
  return cfg.attention


def causal_query_blocks(L: int, S: int) -> int:
  """How many query blocks the causal einsum path splits L queries into (1: no blocking)."""
  return L // QUERY_BLOCK if L % QUERY_BLOCK == 0 and L == S else 1


def dot_product_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask_Bx1xLxS, cfg, dropout_rng=None,
                          causal: bool = False, row_ids_B=None):
  """softmax(q k^T / sqrt(K)) v.

  On GPU, `jax.nn.dot_product_attention` (cuDNN flash attention where it applies). Elsewhere,
  and whenever attention dropout needs the probabilities, einsums: on CPU a GPT training step
  at seq 512 is 16% faster than with jax.nn's XLA path (at seq 128, the same). `causal` (a
  full causal sequence, no cache) splits the queries into blocks of QUERY_BLOCK rows that
  skip the keys after their last row, which the mask hides anyway: n blocks skip (n-1)/2n of
  the scores. GPT training steps on CPU: seq 128 (2 blocks) -3.5%; at seq 512, blocks of 64,
  128 or 256 rows measure the same. "auto" asks `jax.default_backend()`, the platform of the
  devices every lmjax step is placed on (jit, pmap and the mesh alike).
  """
  if dropout_rng is None and attention_implementation(cfg) != "einsum":
    return jax.nn.dot_product_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask_Bx1xLxS,
                                        implementation=None if cfg.attention == "auto" else cfg.attention)
  L, S = q_BxLxHxK.shape[1], k_BxSxHxK.shape[1]
  blocks = causal_query_blocks(L, S) if causal else 1
  q_BxLxHxK = q_BxLxHxK * (1.0 / math.sqrt(q_BxLxHxK.shape[-1]))  # scale L x K, not L x S
  rngs = [None] * blocks if dropout_rng is None else list(jax.random.split(dropout_rng, blocks))
  y_blocks = []
  for i in range(blocks):
    # Block i's queries are rows [i L/n, (i+1) L/n); causally they see keys [0, (i+1) L/n) only.
    rows, keys = slice(i * L // blocks, (i + 1) * L // blocks), slice(0, (i + 1) * S // blocks)
    scores_BxHxLxS = jnp.einsum("blhk,bshk->bhls", q_BxLxHxK[:, rows], k_BxSxHxK[:, keys]).astype(jnp.float32)
    scores_BxHxLxS = jnp.where(mask_Bx1xLxS[:, :, rows, keys], scores_BxHxLxS, jnp.finfo(jnp.float32).min)
    # Softmax in fp32, normalised after the value matmul: dividing L x K outputs instead of
    # L x S probabilities is one pass less over the scores (dropout commutes with the divide).
    max_BxHxLx1 = jax.lax.stop_gradient(jnp.max(scores_BxHxLxS, -1, keepdims=True))
    unnormalized_BxHxLxS = jnp.exp(scores_BxHxLxS - max_BxHxLx1)
    denominator_BxLxHx1 = jnp.sum(unnormalized_BxHxLxS, -1).transpose(0, 2, 1)[..., None]
    if rngs[i] is not None:
      unnormalized_BxHxLxS = row_dropout(unnormalized_BxHxLxS, cfg.attention_dropout_rate, rngs[i], row_ids_B)
    y_BxLxHxK = jnp.einsum("bhls,bshk->blhk", unnormalized_BxHxLxS.astype(v_BxSxHxK.dtype), v_BxSxHxK[:, keys])
    y_blocks.append((y_BxLxHxK / denominator_BxLxHx1).astype(v_BxSxHxK.dtype))
  return y_blocks[0] if blocks == 1 else jnp.concatenate(y_blocks, axis=1)


class Mlp(nn.Module):
  """wo(act(wi x)). No dropout on the F-wide hidden: BERT and GPT-2 drop only the block's
  D-wide output (the Block does), and masks over F cost four times as much."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    dense = functools.partial(nn.Dense, use_bias=cfg.use_bias, dtype=cfg.compute_dtype,
                              param_dtype=cfg.param_dtype, dot_general=xla_cpu.dense_dot_general)
    up = functools.partial(dense, cfg.mlp_dim, kernel_init=dense_init(cfg, "embed", "mlp"),
                           bias_init=zeros_init("mlp"))
    if cfg.activation == "swiglu":
      h_BxLxF = nn.silu(up(name="wi_gate")(x_BxLxD)) * up(name="wi")(x_BxLxD)
    else:
      act = {"gelu": functools.partial(nn.gelu, approximate=False),
             "gelu_tanh": functools.partial(nn.gelu, approximate=True),
             "relu": nn.relu}[cfg.activation]
      h_BxLxF = act(up(name="wi")(x_BxLxD))
    return dense(cfg.hidden, kernel_init=residual_init(cfg, "mlp", "embed"),
                 bias_init=zeros_init("embed"), name="wo")(h_BxLxF)


class Block(nn.Module):
  """One Transformer layer; pre-LN: x + f(norm(x)), post-LN: norm(x + f(x)). `blocked`: a causal
  mask may skip the keys after each query block (False when a prefix attends both ways)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD, mask_Bx1xLxS, positions_BxL, row_ids_B, deterministic: bool, cache=None,
               blocked: bool = True):
    cfg = self.cfg
    attn, mlp = Attention(cfg, name="attn"), Mlp(cfg, name="mlp")
    attn_norm, mlp_norm = Norm(cfg, name="attn_norm"), Norm(cfg, name="mlp_norm")
    drop = functools.partial(Dropout(cfg.dropout_rate), row_ids_B=row_ids_B, deterministic=deterministic)
    x_BxLxD = xla_cpu.materialize_grad(x_BxLxD)
    if cfg.pre_ln:
      a_BxLxD, new_cache = attn(attn_norm(x_BxLxD), mask_Bx1xLxS, positions_BxL, row_ids_B, deterministic, cache,
                                 blocked)
      x_BxLxD = xla_cpu.materialize_grad(x_BxLxD + drop(a_BxLxD))
      x_BxLxD = x_BxLxD + drop(mlp(mlp_norm(x_BxLxD)))
    else:
      a_BxLxD, new_cache = attn(x_BxLxD, mask_Bx1xLxS, positions_BxL, row_ids_B, deterministic, cache, blocked)
      x_BxLxD = attn_norm(x_BxLxD + drop(a_BxLxD))
      x_BxLxD = mlp_norm(x_BxLxD + drop(mlp(x_BxLxD)))
    return x_BxLxD, new_cache


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Stack(nn.Module):
  """N blocks, as a Python loop (params `layer_0..`) or one `nn.scan` (params `layers`,
  stacked on a leading N axis: compile time stays flat in depth).

  cache: None, or (k, v, index) for incremental decoding: k and v are tuples of N per-layer
  B x H x S x K buffers, which each layer updates in place and its attention reads in place.
  Before, one N x B x S x H x K array per side: XLA:CPU copied each layer's slab out of it
  every step, transposed for the attention matmuls (the copies were 60% of a batch-32 step's
  profile). Greedy decoding, gpt_tiny, 16 + 256 tokens, both versions compiled in one process
  and run alternately (2 shared cores, load ~11): batch 32 2.7-3.2x the tokens/s, batch 1 the
  same, beam search (batch 1, 4 beams) 1.5-3.3x; a scanned stack (it stacks the buffers for the
  scan) 1.4-1.7x at batch 32. Tokens identical.
  """
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD, mask_Bx1xLxS, positions_BxL, row_ids_B, deterministic: bool, cache=None,
               blocked: bool = True):
    cfg = self.cfg
    block = Block
    if cfg.remat != "none":   # static: `deterministic` and `blocked` (arguments 5 and 7, counting self)
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], static_argnums=(5, 7))
    if cfg.scan_layers:
      def body(layer, x, kv):
        layer_cache = None if kv is None else (kv[0], kv[1], cache[2])
        x, new_kv = layer(x, mask_Bx1xLxS, positions_BxL, row_ids_B, deterministic, layer_cache, blocked)
        return x, new_kv
      scanned = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      kv = None if cache is None else (jnp.stack(cache[0]), jnp.stack(cache[1]))
      x_BxLxD, new_kv = scanned(block(cfg, name="layers"), x_BxLxD, kv)
      if new_kv is not None:
        new_kv = tuple(tuple(x[i] for i in range(cfg.num_layers)) for x in new_kv)
    else:
      kvs = []
      for i in range(cfg.num_layers):
        layer_cache = None if cache is None else (cache[0][i], cache[1][i], cache[2])
        x_BxLxD, kv = block(cfg, name=f"layer_{i}")(x_BxLxD, mask_Bx1xLxS, positions_BxL, row_ids_B,
                                                    deterministic, layer_cache, blocked)
        kvs.append(kv)
      new_kv = None if cache is None else tuple(zip(*kvs))   # (N keys, N values)
    return x_BxLxD, new_kv


def stack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
  """Model params with a looped Stack (`stack/layer_i`) -> with a scanned one (`stack/layers`)."""
  layers = [params["stack"][f"layer_{i}"] for i in range(num_layers)]
  return {**params, "stack": {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}}


def unstack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
  layers = params["stack"]["layers"]
  return {**params, "stack": {f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], layers)
                              for i in range(num_layers)}}
