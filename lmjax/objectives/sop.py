"""ALBERT's pretraining loss (Lan et al. 2020): masked LM + sentence-order prediction, the mean
MLM loss over masked tokens plus the mean SOP loss over rows.

Batch: the MLM batch (see mlm.py) plus nsp_label from sentence-order pairs (data/pipeline.py
PairRows with sentence_order=True): both segments are consecutive text of one document, swapped
in half of the rows; 1 = in the document's order, 0 = swapped. The binary head is the model's
"nsp" head (a 2-way classifier on the pooled [CLS]), so a BERT preset serves it as it is.
"""
from __future__ import annotations

from lmjax.objectives import nsp
from lmjax.objectives.common import Objective


def report(means):
  metrics = nsp.report(means)
  return {**{k: v for k, v in metrics.items() if not k.startswith("nsp_")},
          "sop_loss": metrics["nsp_loss"], "sop_accuracy": metrics["nsp_accuracy"]}


OBJECTIVE = Objective(prepare=nsp.prepare, loss=nsp.loss, report=report, causal=False, batch="sop_pairs",
                      heads=("mlm", "nsp"))
