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
  whole_word: bool = False          # MLM: select whole words (needs batch["word_start"])
  max_predictions: int = 0          # MLM: M prediction slots per row; 0 = score all L positions
  z_loss: float = 0.0               # PaLM's z_loss * log(Z)^2, keeps the softmax normaliser near 1
  label_smoothing: float = 0.0
  mask_id: int = 4                  # lmjax tokenizers: 4; BERT's vocab: 103
  special_ids: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)  # never masked, never a random replacement
  vocab_size: int = 0


@dataclasses.dataclass(frozen=True)
class Objective:
  prepare: Callable   # (batch, rng_B, settings) -> (model inputs, targets)
  loss: Callable      # (model outputs, targets, settings) -> {term: {name: sum}}, "loss" per term
  report: Callable    # ({term: {name: global mean}}) -> flat metrics
  causal: bool        # the model it needs: a decoder (True) or an encoder (False)
  heads: tuple[str, ...] = ()  # encoder heads it reads


def cross_entropy_sums(logits_NxV, labels_N, weights_N, z_loss: float = 0.0,
                       label_smoothing: float = 0.0) -> dict[str, jax.Array]:
  """Weighted sums over any leading shape N: training loss, plain NLL, correct, z-loss.

  Written for speed on a large V: the label's logit is picked with a one-hot select
  (its gradient is a select too, where take_along_axis would scatter), the max that
  stabilises log Z is reused for accuracy (the first index reaching it is argmax, ties
  included, without argmax's slower two-operand reduction), and log-probabilities over V
  are never materialised.
  """
  logits_NxV = logits_NxV.astype(jnp.float32)  # softmax and loss in fp32
  weights_N = weights_N.astype(jnp.float32)
  max_N = jax.lax.stop_gradient(jnp.max(logits_NxV, -1))
  log_z_N = max_N + jnp.log(jnp.sum(jnp.exp(logits_NxV - max_N[..., None]), -1))
  vocab_V = jnp.arange(logits_NxV.shape[-1], dtype=labels_N.dtype)
  is_label_NxV = labels_N[..., None] == vocab_V
  label_logit_N = jnp.sum(jnp.where(is_label_NxV, logits_NxV, 0.0), -1)
  nll_N = log_z_N - label_logit_N
  # Smoothing mixes the one-hot target with the uniform distribution over V: -mean(log p) = log Z - mean(logits).
  loss_N = (1.0 - label_smoothing) * nll_N + label_smoothing * (log_z_N - jnp.mean(logits_NxV, -1))
  z_N = z_loss * jnp.square(log_z_N)
  argmax_N = jnp.min(jnp.where(logits_NxV == max_N[..., None], vocab_V, logits_NxV.shape[-1]), -1)
  correct_N = argmax_N == labels_N
  return {"loss": jnp.sum(weights_N * (loss_N + z_N)), "nll": jnp.sum(weights_N * nll_N),
          "correct": jnp.sum(weights_N * correct_N), "z_loss": jnp.sum(weights_N * z_N)}
