"""Extractive QA (SQuAD, as in BERT): the mean of the answer-start and answer-end cross-entropies
over the L positions of a window; a window without the answer points both at [CLS] (position 0).

Batch: input_ids, token_type_ids, attention_mask, start_position and end_position (B).
"""
from __future__ import annotations

import jax.numpy as jnp

from lmjax.objectives.common import Objective, cross_entropy_sums


def prepare(batch, rng_B, s):
  del rng_B, s
  real_B = batch["attention_mask"].sum(-1) > 0
  inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
  return inputs, {"start": batch["start_position"], "end": batch["end_position"],
                  "weights": {"span": real_B.astype(jnp.float32)}}


def loss(outputs, targets, s):
  w_B = targets["weights"]["span"]
  start = cross_entropy_sums(outputs.start_logits, targets["start"], w_B)
  end = cross_entropy_sums(outputs.end_logits, targets["end"], w_B)
  # One term, so the step normalises by rows once: (start + end) / 2 per row, as BERT's run_squad.
  return {"span": {"loss": 0.5 * (start["loss"] + end["loss"]), "start_correct": start["correct"],
                   "end_correct": end["correct"]}}


def report(means):
  span = means["span"]
  return {"loss": span["loss"], "start_accuracy": span["start_correct"], "end_accuracy": span["end_correct"]}


OBJECTIVE = Objective(prepare=prepare, loss=loss, report=report, causal=False, batch="features", heads=("span",))
