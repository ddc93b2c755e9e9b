"""ELECTRA's replaced-token detection (Clark et al. 2020): a small generator, trained as a masked
LM, fills the masked positions with tokens sampled from its softmax; the discriminator labels
every real token of the result original or replaced. Loss = generator MLM + lambda x
discriminator loss, lambda = objective.electra_weight (50 in the paper).

Batch: the MLM batch (see mlm.py); masking is mlm.prepare's, any `masking`, with M slots when
max_predictions is set. The generator and the sampling run inside the model (models/electra.py),
which gets each row's sample key from here: a draw depends on (seed, step, global row) only.

Terms:
  "mlm": the generator's cross entropy on the selected positions, weighted as mlm.py weights it.
  "rtd": sigmoid cross entropy on every real token (padding carries no weight); the label is 1
         where the discriminator's input differs from the original token, so a sample equal to
         the original counts as original (ELECTRA's _get_fake_data). Its "loss" sum carries lambda,
         so the step differentiates mean MLM + lambda x mean BCE; "bce" is the unweighted sum.

Differences from google-research/electra: masking is mlm.py's (BERT's 80% [MASK] / 10% random /
10% kept; ELECTRA's own masking keeps 15% and puts no random tokens, and draws positions with
replacement), and both terms are means over the global batch (ELECTRA: over its TPU core's batch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lmjax.objectives import mlm
from lmjax.objectives.common import Objective


def key_data(key):
  return jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


def prepare(batch, rng_B, s):
  keys_Bx2 = jax.vmap(jax.random.split)(rng_B)
  inputs, targets = mlm.prepare(batch, keys_Bx2[:, 0], s)
  ids_BxL = batch["input_ids"]
  real_BxL = inputs["attention_mask"].astype(bool)
  if "mlm_positions" in inputs:   # the M slots -> B x L: which positions the generator fills
    write = lambda pos_M, w_M: jnp.zeros(ids_BxL.shape[1], bool).at[pos_M].max(w_M > 0)
    replace_BxL = jax.vmap(write)(inputs["mlm_positions"], targets["weights"]["mlm"])
  else:
    replace_BxL = targets["weights"]["mlm"] > 0
  # Key data, not typed keys: plain uint32 arrays split into micro-batches and shard like any input.
  inputs = {**inputs, "replace_mask": replace_BxL, "sample_keys": jax.vmap(key_data)(keys_Bx2[:, 1])}
  targets = {**targets, "original_ids": ids_BxL,
             "weights": {**targets["weights"], "rtd": real_BxL.astype(jnp.float32)}}
  return inputs, targets


def rtd_sums(logits_BxL, replaced_BxL, weights_BxL, weight: float) -> dict[str, jax.Array]:
  """Weighted sums of the discriminator's sigmoid cross entropy (x weight in "loss"), its accuracy,
  and the share of tokens replaced."""
  logits_BxL = logits_BxL.astype(jnp.float32)
  y_BxL = replaced_BxL.astype(jnp.float32)
  bce_BxL = jnp.logaddexp(0.0, logits_BxL) - y_BxL * logits_BxL   # -y log p - (1-y) log(1-p), p = sigmoid
  bce = jnp.sum(weights_BxL * bce_BxL)
  return {"loss": weight * bce, "bce": bce, "correct": jnp.sum(weights_BxL * ((logits_BxL > 0) == replaced_BxL)),
          "replaced": jnp.sum(weights_BxL * y_BxL)}


def loss(outputs, targets, s):
  replaced_BxL = outputs.rtd_input_ids != targets["original_ids"]
  return {**mlm.loss(outputs, targets, s),
          "rtd": rtd_sums(outputs.rtd_logits, replaced_BxL, targets["weights"]["rtd"], s.electra_weight)}


def report(means):
  generator = {f"mlm_{k}": v for k, v in mlm.report(means).items()}
  return {"loss": means["mlm"]["loss"] + means["rtd"]["loss"], **generator,
          "rtd_loss": means["rtd"]["bce"], "rtd_accuracy": means["rtd"]["correct"],
          "replaced": means["rtd"]["replaced"]}


OBJECTIVE = Objective(prepare=prepare, loss=loss, report=report, causal=False, batch="pairs", heads=("rtd",))
