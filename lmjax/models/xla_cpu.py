"""Tricks that only XLA:CPU needs, kept out of the model so `Block` can be copied without them.

The model calls three of them, and greedy decoding a fourth, each in one named line:

    dot_general=xla_cpu.dense_dot_general        every Dense layer's matmul
    x = xla_cpu.materialize_grad(x)              between sublayers, and on the logits
    table_DxV = xla_cpu.transpose_table(table_VxD, rows)   the tied LM head
    tok_B = xla_cpu.argmax(logits_BxV)           greedy decoding's next tokens (inference/generate.py)

Each is the plain operation on every other platform. Which path runs is decided when the
computation is lowered, by the platform it is compiled for (`jax.lax.platform_dependent`),
not by `jax.default_backend()` at trace time: a step jitted onto CPU devices on a GPU host
still gets the CPU path, and a GPU program never contains a conditional meant for the CPU.

Why each one exists (training steps on 2 cores of an AMD EPYC, gpt_tiny / bert_tiny shapes,
both variants compiled in one process and their steps interleaved):

- `dense_dot_general`: a Dense layer's weight gradient x^T dy contracts x's token axis, its
  major one in memory; XLA:CPU's YNNPACK matmuls do not take an operand transposed that way
  and fall back to Eigen, about 30% slower (an MLP's dW: 7.7 -> 6.1 ms). Writing x^T to
  memory first costs less than that: GPT step 451 -> 424 ms (-5%), BERT 450 -> 396 ms (-11%).
- `materialize_grad`: XLA:CPU fuses the cheap adds of a pre-LN residual gradient into every
  consumer, so each layer's weight-gradient transpose recomputed the sum of all the layers
  above it (work quadratic in depth). Materializing the gradient once at each sublayer and
  at the logits: GPT step 667 -> 594 ms (-11%).
- `transpose_table`: the tied head's backward reads the embedding table transposed; with it
  in memory, a GPT training step is 1.5% faster. A forward alone is not (one row's logits:
  0.05 ms plain, 0.65 ms with the copy), so only logits of TRANSPOSED_TABLE_MIN_ROWS rows or
  more take it.

- `argmax`: XLA:CPU reduces (value, index) pairs one element at a time; a max, then the
  first index that holds it, are two vectorized reductions. jitted alone, interleaved, on
  gpt_tiny's logits: batch 32 x 4096 497-954 -> 107-126 us, batch 1 57-68 -> 23-28 us (a
  batch-32 decoding step is about 18 ms); greedy decoding, gpt_tiny, both compiled in one
  process, 6 alternating runs, load ~9: batch 32 1.02-1.22x per pair, batch 1 0.77-2.5x (noise).
  Same indices, NaN included.

The mechanism of the first three is one: XLA:CPU cannot fuse through a conditional (`optimization_barrier` is
removed before fusion there), so `_in_memory` computes a value inside a `lax.cond` whose two
branches are the same function.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

TRANSPOSED_TABLE_MIN_ROWS = 1024  # logit rows (B x L) from which the tied head reads a transposed copy


def _on_cpu(x, cpu, other):
  """cpu(x) in a program compiled for the CPU, other(x) anywhere else; chosen at lowering."""
  return jax.lax.platform_dependent(x, cpu=cpu, default=other)


def _in_memory(x, f=lambda x: x):
  """f(x), written to memory by itself: XLA:CPU cannot fuse through a conditional."""
  # Branches that look alike are merged away; x * 1.0 is x, bit for bit, NaN and -0 included.
  return jax.lax.cond(jnp.isfinite(x[(0,) * x.ndim]), f, lambda x: f(x * 1.0), x)


def _transpose_in_memory(x_MxC):
  """x^T, written to memory transposed, for a matmul to read row by row.

  Flat inside the conditional: a 2-D result would let XLA's layout assignment keep x's layout
  and copy it once more outside, after recomputing x's producer to feed the conditional.
  """
  return _in_memory(x_MxC, lambda x: x.T.reshape(-1)).reshape(x_MxC.shape[::-1])


def _transpose(x_MxC):
  return _on_cpu(x_MxC, _transpose_in_memory, lambda x: x.T)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` for a Dense layer (x W, x's features last, W's first), as a 2-D matmul
  whose weight gradient reads x^T from memory on the CPU. Other dimension numbers, and a
  preferred element type, go to `lax.dot_general` as they are."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  n = len(lhs_contract)
  plain = (tuple(lhs_contract) == tuple(range(lhs.ndim - n, lhs.ndim))
           and tuple(rhs_contract) == tuple(range(n)) and not lhs_batch and not rhs_batch)
  if not plain or preferred_element_type is not None:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                               preferred_element_type=preferred_element_type)
  c = math.prod(rhs.shape[:n])
  y_MxN = _matmul(lhs.reshape(-1, c), rhs.reshape(c, -1), precision)
  return y_MxN.reshape(lhs.shape[:lhs.ndim - n] + rhs.shape[n:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x_MxC, w_CxN, precision):
  return jax.lax.dot_general(x_MxC, w_CxN, (((1,), (0,)), ((), ())), precision)


def _matmul_fwd(x_MxC, w_CxN, precision):
  return _matmul(x_MxC, w_CxN, precision), (x_MxC, w_CxN)


def _matmul_bwd(precision, residuals, dy_MxN):
  x_MxC, w_CxN = residuals
  dx_MxC = jax.lax.dot_general(dy_MxN, w_CxN, (((1,), (1,)), ((), ())), precision)
  dw_CxN = jax.lax.dot_general(_transpose(x_MxC), dy_MxN, (((1,), (0,)), ((), ())), precision)
  return dx_MxC.astype(x_MxC.dtype), dw_CxN.astype(w_CxN.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def materialize_grad(x):
  """Identity whose cotangent XLA:CPU computes once, in memory, before anyone reads it.
  Both branches of the conditional are the identity, so its predicate never matters; other
  platforms keep the plain identity (a conditional on a GPU waits for the host)."""
  return x


def _materialize_fwd(x):
  return x, None


def _materialize_bwd(_, g):
  return (_on_cpu(g, _in_memory, lambda g: g),)


materialize_grad.defvjp(_materialize_fwd, _materialize_bwd)


def transpose_table(table_VxD, rows: int):
  """The tied head's table as D x V: a transposed copy in memory on the CPU when the logits
  have `rows` >= TRANSPOSED_TABLE_MIN_ROWS rows (a training step), a plain transpose otherwise."""
  if rows < TRANSPOSED_TABLE_MIN_ROWS:
    return table_VxD.T
  return _transpose(table_VxD)


def argmax(x_BxV):
  """`jnp.argmax(x, -1)`: the first index of each row's max (of its first NaN, if it has one).
  On the CPU as the max, then the first index that holds it."""
  return _on_cpu(x_BxV, _argmax_two_pass, lambda x: jnp.argmax(x, -1))


def _argmax_two_pass(x_BxV):
  V = x_BxV.shape[-1]
  max_Bx1 = jnp.max(x_BxV, -1, keepdims=True)
  hit_BxV = (x_BxV == max_Bx1) | jnp.isnan(x_BxV)   # a NaN max equals nothing; jnp.argmax picks the NaN
  return jnp.min(jnp.where(hit_BxV, jnp.arange(V, dtype=jnp.int32), V), -1)
