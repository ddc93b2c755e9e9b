"""The FLOPs a training step computes, and the device's peak, for tokens/s -> MFU.

Counted: the multiply-adds of the matmuls the step runs, per token, x 6 (forward + backward =
3x forward, a multiply-add = 2 FLOPs) (elementwise work, about 3% of a step at gpt_tiny's shapes, is left out, as
PaLM's MFU leaves it out). What runs depends on the objective, so the count does too:
  body:      every layer's projections and MLP (embedding lookups are free)
  attention: q k^T and p v over the scores actually computed: all L x L, except the causal
             einsum path, whose query blocks skip the keys after them ((n+1)/2n of the scores
             for n blocks), and cuDNN's causal flash kernel, which skips about half
  heads:     a decoder's LM head on every position (or its classifier on the last token); an encoder's MLM head (transform + V x D)
             on the M predicted positions (all L without max_predictions); the pooler with
             NSP's or a classifier's output on one position per row; the span head on every
             position. A head whose output the objective does not read is not computed (XLA
             removes it), and is not counted.
  ELECTRA:   the generator's projection from D to its width G (when they differ), its stack and
             attention at width G, and its MLM head (transform G -> D + V x D) on the M positions;
             the discriminator's rtd head (D x D + D) on every position. Its gradient is a full
             backward too (the generator trains on its MLM loss), so it is x 6 like the rest.
tests/test_flops.py checks the count against XLA's cost analysis of the compiled step.
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp

from lmjax.models.electra import generator_config
from lmjax.models.layers import TransformerConfig, attention_implementation, causal_query_blocks

# bf16 dense peak per chip (vendor figures, no sparsity).
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


def attention_fraction(cfg: TransformerConfig, seq_len: int, prefix: bool = False) -> float:
  """The share of the L x L attention scores a training step computes (a prefix LM's mask is
  not causal: every score is computed)."""
  if not cfg.causal or prefix:
    return 1.0
  implementation = "einsum" if cfg.attention_dropout_rate > 0 else attention_implementation(cfg)
  if implementation == "einsum":
    n = causal_query_blocks(seq_len, seq_len)
    return (n + 1) / (2 * n)
  return 0.5 if implementation == "cudnn" else 1.0


def train_flops_per_token(cfg: TransformerConfig, seq_len: int, heads: tuple = (), max_predictions: int = 0,
                          prefix: bool = False) -> float:
  """Training FLOPs per token of a step at sequence length `seq_len`. `heads`: the encoder heads
  the objective reads (objectives' `heads`); `max_predictions`: MLM prediction slots per row;
  `prefix`: a prefix LM's attention (objectives' `prefix`)."""
  d, f, n, v, L = cfg.hidden, cfg.mlp_dim, cfg.num_layers, cfg.vocab_size, seq_len
  mlp_mats = 3 if cfg.activation == "swiglu" else 2
  body = n * (4 * d * d + mlp_mats * d * f)
  attention = n * 2 * L * d * attention_fraction(cfg, L, prefix)   # q k^T and p v: L x d multiply-adds each
  if cfg.causal:   # the LM head, unless a classifier on the last token is all the loss reads
    head = cfg.num_labels * d / L if "classify" in heads else v * d
  else:
    used = set(heads) & set(cfg.heads)
    head = 0.0
    if "mlm" in used:
      head += (d * d + v * d) * (min(max_predictions, L) / L if max_predictions else 1.0)
    if used & {"nsp", "classify"}:
      head += d * d / L   # the pooler, on [CLS]
    head += (2 * d / L if "nsp" in used else 0) + (cfg.num_labels * d / L if "classify" in used else 0)
    head += 2 * d if "span" in used else 0
    if "rtd" in used:
      gen = generator_config(cfg)
      g, predicted = gen.hidden, (min(max_predictions, L) / L if max_predictions else 1.0)
      head += n * (4 * g * g + mlp_mats * g * gen.mlp_dim) + n * 2 * L * g   # the generator's body, attention
      head += (d * g if g != d else 0) + (g * d + v * d) * predicted        # its projection and MLM head
      head += d * d + d                                                      # the discriminator's rtd head
  return 6.0 * (body + head + attention)


_measured: dict[str, float] = {}


def peak_flops(device=None) -> tuple[float, str]:
  """(FLOP/s, how it was known): a vendor figure, or the fastest of 5 timings of 4 float32 matmuls
  each, measured here. The fastest, not the mean: another process sharing the cores slows some
  timings, and a peak measured low would inflate every MFU divided by it. 4 calls a timing, so
  a device where one matmul takes microseconds is not timed by its dispatch."""
  device = device or jax.devices()[0]
  for name, peak in PEAK_FLOPS.items():
    if device.device_kind.startswith(name):
      return peak, f"{device.device_kind} bf16 peak"
  n, calls = 1024, 4
  if device.device_kind not in _measured:
    a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    best = math.inf
    for _ in range(5):
      t0 = time.perf_counter()
      for _ in range(calls):
        out = matmul(a)
      out.block_until_ready()
      best = min(best, (time.perf_counter() - t0) / calls)
    _measured[device.device_kind] = 2 * n ** 3 / best
  return _measured[device.device_kind], f"{n}x{n} float32 matmuls, fastest of 5 timings, on {device.device_kind}"
