"""What every objective shares: its settings, its shape, and the cross-entropy sums.

An objective is two pure functions and a summary:

    inputs, targets = objective.prepare(batch, rng_B, settings)   # inside the compiled step
    sums = objective.loss(model_outputs, targets, settings)        # {term: {"loss": .., ...}}
    metrics = objective.report(means)                              # after the global reduction

`targets["weights"]` maps each loss term ("lm", "mlm", "nsp") to its weights. Weights
depend on the batch and the masking only, never on params, so the step sums them
over the global batch (all devices, all micro-batches) *before* differentiating, and
the loss it differentiates is sum over terms of loss_sum / global_weight_sum: the
same number on 1 device or 64, with or without gradient accumulation.
`means[term][name]` is a metric sum divided by its term's global weight sum.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Settings:
  """The objective section of the config plus the tokenizer's ids: `Settings(**c.objective, ...)`."""
  name: str = "clm"
  mask_rate: float = 0.15           # MLM: fraction of real, non-special tokens selected
  masking: str = "token"            # MLM: "token", "whole_word" or "span" (SpanBERT); mlm.MASKINGS
  max_predictions: int = 0          # MLM: M prediction slots per row; 0 = score all L positions
  z_loss: float = 0.0               # PaLM's z_loss * log(Z)^2, keeps the softmax normaliser near 1
  label_smoothing: float = 0.0
  electra_weight: float = 50.0      # ELECTRA: lambda, the discriminator loss's weight beside the generator's MLM
  mask_id: int = 4                  # lmjax tokenizers: 4; BERT's vocab: 103
  special_ids: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)  # never masked, never a random replacement
  vocab_size: int = 0


@dataclasses.dataclass(frozen=True)
class Objective:
  prepare: Callable   # (batch, rng_B, settings) -> (model inputs, targets)
  loss: Callable      # (model outputs, targets, settings) -> {term: {name: sum}}, "loss" per term
  report: Callable    # ({term: {name: global mean}}) -> flat metrics
  causal: bool | None  # the model it needs: a decoder (True), an encoder (False), or either (None)
  batch: str          # the rows it reads: a layout of data/pipeline.py's ROWS ("clm", "pairs", ...)
  heads: tuple[str, ...] = ()  # encoder heads it reads
  prefix: bool = False         # a decoder whose prefix attends both ways (no causal block skipping)


@jax.custom_vjp
def _log_z_and_label_logit(logits_NxV, labels_N, max_N):
  """(log sum_v exp(logits_v), logits[label]) per row; max_N (held constant) stabilises exp.
  The label's logit is a gather; its gradient, one-hot, is written into the softmax
  gradient in the same pass instead of a scatter-add (what autodiff of a gather gives)."""
  log_z_N = max_N + jnp.log(jnp.sum(jnp.exp(logits_NxV - max_N[..., None]), -1))
  return log_z_N, jnp.take_along_axis(logits_NxV, labels_N[..., None], -1)[..., 0]


def _log_z_and_label_logit_fwd(logits_NxV, labels_N, max_N):
  log_z_N, label_logit_N = _log_z_and_label_logit(logits_NxV, labels_N, max_N)
  return (log_z_N, label_logit_N), (logits_NxV, labels_N, log_z_N)


def _log_z_and_label_logit_bwd(residuals, cotangents):
  logits_NxV, labels_N, log_z_N = residuals
  d_log_z_N, d_label_logit_N = cotangents
  is_label_NxV = labels_N[..., None] == jnp.arange(logits_NxV.shape[-1], dtype=labels_N.dtype)
  d_logits_NxV = (d_log_z_N[..., None] * jnp.exp(logits_NxV - log_z_N[..., None])       # softmax
                  + jnp.where(is_label_NxV, d_label_logit_N[..., None], 0.0))            # one-hot
  return d_logits_NxV, None, jnp.zeros_like(log_z_N)


_log_z_and_label_logit.defvjp(_log_z_and_label_logit_fwd, _log_z_and_label_logit_bwd)


def cross_entropy_sums(logits_NxV, labels_N, weights_N, z_loss: float = 0.0,
                       label_smoothing: float = 0.0) -> dict[str, jax.Array]:
  """Weighted sums over any leading shape N: training loss, plain NLL, correct, z-loss.

  Written for speed on a large V: log Z and the label's logit come from two passes over
  the logits and a gather, and their gradient from one (`_log_z_and_label_logit`); the
  max that stabilises log Z is reused for accuracy (the first index reaching it is argmax,
  ties included, without argmax's slower two-operand reduction); log-probabilities over V
  are never materialised.
  """
  logits_NxV = logits_NxV.astype(jnp.float32)  # softmax and loss in fp32
  weights_N = weights_N.astype(jnp.float32)
  max_N = jax.lax.stop_gradient(jnp.max(logits_NxV, -1))
  log_z_N, label_logit_N = _log_z_and_label_logit(logits_NxV, labels_N, max_N)
  nll_N = log_z_N - label_logit_N
  loss_N = nll_N
  if label_smoothing:
    # Smoothing mixes the one-hot target with the uniform distribution over V: -mean(log p) = log Z - mean(logits).
    loss_N = (1.0 - label_smoothing) * nll_N + label_smoothing * (log_z_N - jnp.mean(logits_NxV, -1))
  z_N = z_loss * jnp.square(log_z_N)
  vocab_V = jnp.arange(logits_NxV.shape[-1], dtype=labels_N.dtype)
  argmax_N = jnp.min(jnp.where(logits_NxV == max_N[..., None], vocab_V, logits_NxV.shape[-1]), -1)
  correct_N = argmax_N == labels_N
  return {"loss": jnp.sum(weights_N * (loss_N + z_N)), "nll": jnp.sum(weights_N * nll_N),
          "correct": jnp.sum(weights_N * correct_N), "z_loss": jnp.sum(weights_N * z_N)}
