"""Causal LM: predict token t+1 from tokens <= t, within one packed document.

Batch: input_ids, segment_ids (1.. per document, 0 = padding), positions (restart per
document) -- segment_ids and positions default to one unpadded document per row. A row that
carries its own next tokens, `labels` (data.layout="stream": windows of one text), has every
real position scored, the last included, as nanoGPT's loss does.
"""
from __future__ import annotations

import jax.numpy as jnp

from lmjax.objectives.common import Objective, cross_entropy_sums


def prepare(batch, rng_B, s):
  del rng_B, s  # nothing random: the targets are the next tokens
  ids_BxL = batch["input_ids"]
  B, L = ids_BxL.shape
  seg_BxL = batch.get("segment_ids")
  if seg_BxL is None:
    seg_BxL = jnp.ones((B, L), jnp.int32)
  positions_BxL = batch.get("positions")
  if positions_BxL is None:
    positions_BxL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
  if "labels" in batch:
    labels_BxL, weights_BxL = batch["labels"], (seg_BxL > 0).astype(jnp.float32)
  else:
    labels_BxL = jnp.pad(ids_BxL[:, 1:], ((0, 0), (0, 1)))
    # Token t+1 is a target for t only if it is real and in t's document; the last
    # slot has no next token.
    same_doc_BxL1 = (seg_BxL[:, 1:] == seg_BxL[:, :-1]) & (seg_BxL[:, 1:] > 0)
    weights_BxL = jnp.pad(same_doc_BxL1, ((0, 0), (0, 1))).astype(jnp.float32)
  inputs = {"input_ids": ids_BxL, "segment_ids": seg_BxL, "positions": positions_BxL}
  return inputs, {"labels": labels_BxL, "weights": {"lm": weights_BxL}}


def loss(outputs, targets, s):
  return {"lm": cross_entropy_sums(outputs.logits, targets["labels"], targets["weights"]["lm"],
                                   s.z_loss, s.label_smoothing)}


def report(means):
  lm = means["lm"]
  # Perplexity from the plain NLL (no smoothing or z-loss), averaged over the global batch.
  return {"loss": lm["loss"], "accuracy": lm["correct"], "perplexity": jnp.exp(lm["nll"]),
          "z_loss": lm["z_loss"]}


OBJECTIVE = Objective(prepare=prepare, loss=loss, report=report, causal=True, batch="clm")
