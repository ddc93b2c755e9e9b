"""Model FLOPs and the device's peak, for tokens/s -> MFU.

Training FLOPs per token (forward + backward = 3x forward, each multiply-add = 2):
  dense:     6 * N_matmul, N_matmul = parameters in matmuls (embedding lookups are free;
             the tied output projection is a matmul and counts once)
  attention: 6 * 2 * n_layers * seq_len * hidden (q.k^T and p.v), halved under a causal mask
  MLM head:  the V x D projection (and its transform) only runs on the M predicted
             positions, so it counts M / L of a token's share.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from lmjax.models.layers import TransformerConfig

# bf16 dense peak per chip (vendor figures, no sparsity).
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


def train_flops_per_token(cfg: TransformerConfig, seq_len: int, mlm_predictions: int = 0) -> float:
  d, f, n, v = cfg.hidden, cfg.mlp_dim, cfg.num_layers, cfg.vocab_size
  mlp_mats = 3 if cfg.activation == "swiglu" else 2
  per_layer = 4 * d * d + mlp_mats * d * f
  head = v * d
  if not cfg.causal and "mlm" in cfg.heads:
    head += d * d  # the MLM transform
    if mlm_predictions:
      head *= mlm_predictions / seq_len
  attention = 2 * n * seq_len * d * (0.5 if cfg.causal else 1.0)
  return 6.0 * (n * per_layer + head) + 6.0 * attention


_measured: dict[str, float] = {}


def peak_flops(device=None) -> tuple[float, str]:
  """(FLOP/s, how it was known): a vendor figure, or a float32 matmul timed once here."""
  device = device or jax.devices()[0]
  for name, peak in PEAK_FLOPS.items():
    if device.device_kind.startswith(name):
      return peak, f"{device.device_kind} bf16 peak"
  n = 1024
  if device.device_kind not in _measured:
    a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    reps, t0 = 10, time.perf_counter()
    for _ in range(reps):
      out = matmul(a)
    out.block_until_ready()
    _measured[device.device_kind] = 2 * n ** 3 * reps / (time.perf_counter() - t0)
  return _measured[device.device_kind], f"measured {n}x{n} float32 matmul on {device.device_kind}"
