"""Prefix LM (UniLM, Dong et al. 2019; T5's prefix LM, Raffel et al. 2020) for decoders: each row is
split at a random point; tokens before it see each other both ways, tokens after it causally, and
only the tokens after the split are predicted.

Batch: the CLM batch (clm.py). The split p of a row is drawn uniformly from 1 .. n-1, n the row's
real tokens (a row of one token is not split); position t predicts token t+1, so the weights are
the causal LM's at t >= p - 1: token p, the first after the prefix, is predicted from the whole
prefix, and no prefix token is ever a target (the prefix could see it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lmjax.objectives import clm
from lmjax.objectives.common import Objective


def prepare(batch, rng_B, s):
  inputs, targets = clm.prepare(batch, rng_B, s)
  seg_BxL = inputs["segment_ids"]
  B, L = seg_BxL.shape
  n_B = jnp.sum(seg_BxL > 0, -1)
  prefix_len_B = jax.vmap(lambda key, n: jax.random.randint(key, (), 1, jnp.maximum(n, 2)))(rng_B, n_B)
  after_split_BxL = jnp.arange(L) >= prefix_len_B[:, None] - 1
  weights_BxL = targets["weights"]["lm"] * after_split_BxL
  return {**inputs, "prefix_len": prefix_len_B.astype(jnp.int32)}, {**targets, "weights": {"lm": weights_BxL}}


OBJECTIVE = Objective(prepare=prepare, loss=clm.loss, report=clm.report, causal=True, batch="clm", prefix=True)
