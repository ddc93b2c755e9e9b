"""BERT's joint pretraining loss: masked LM + next-sentence prediction (mean MLM loss
over masked tokens + mean NSP loss over rows, as in Devlin et al. 2019).

Batch: the MLM batch (see mlm.py) plus nsp_label (B; 1 = segment B follows A).
"""
from __future__ import annotations

from lmjax.objectives import mlm
from lmjax.objectives.common import Objective, cross_entropy_sums


def prepare(batch, rng_B, s):
  inputs, targets = mlm.prepare(batch, rng_B, s)
  # A row with no real token (padding at the end of an eval set) predicts nothing.
  real_B = batch["attention_mask"].sum(-1) > 0
  targets = {**targets, "nsp_label": batch["nsp_label"],
             "weights": {**targets["weights"], "nsp": real_B.astype("float32")}}
  return inputs, targets


def nsp_loss(nsp_logits_Bx2, labels_B, weights_B):
  """NSP sums: no smoothing or z-loss on a 2-way softmax."""
  return cross_entropy_sums(nsp_logits_Bx2, labels_B, weights_B)


def loss(outputs, targets, s):
  return {**mlm.loss(outputs, targets, s),
          "nsp": nsp_loss(outputs.nsp_logits, targets["nsp_label"], targets["weights"]["nsp"])}


def report(means):
  mlm_metrics = {f"mlm_{k}": v for k, v in mlm.report(means).items()}
  return {"loss": means["mlm"]["loss"] + means["nsp"]["loss"], **mlm_metrics,
          "nsp_loss": means["nsp"]["loss"], "nsp_accuracy": means["nsp"]["correct"]}


OBJECTIVE = Objective(prepare=prepare, loss=loss, report=report, causal=False, batch="pairs", heads=("mlm", "nsp"))
