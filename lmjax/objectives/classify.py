"""Sequence classification (sentiment, NLI): cross-entropy over task.num_labels, on an encoder's pooled
[CLS] (BERT) or a decoder's last real token (GPT-1): either model serves it.

Batch: input_ids, token_type_ids, attention_mask (1 = real), label (B). A padding row (no real
token, at the end of an eval set) carries no weight.
"""
from __future__ import annotations

import jax.numpy as jnp

from lmjax.objectives.common import Objective, cross_entropy_sums


def prepare(batch, rng_B, s):
  del rng_B, s  # nothing random
  real_B = batch["attention_mask"].sum(-1) > 0
  inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
  return inputs, {"label": batch["label"], "weights": {"classify": real_B.astype(jnp.float32)}}


def loss(outputs, targets, s):
  return {"classify": cross_entropy_sums(outputs.class_logits, targets["label"], targets["weights"]["classify"],
                                         label_smoothing=s.label_smoothing)}


def report(means):
  c = means["classify"]
  return {"loss": c["loss"], "accuracy": c["correct"]}


OBJECTIVE = Objective(prepare=prepare, loss=loss, report=report, causal=None, batch="classification",
                      heads=("classify",))
