"""Prompt -> target with a decoder (summarization, translation): the causal-LM loss on target tokens only.

Batch: the CLM batch (input_ids, segment_ids, positions; see clm.py) plus target_mask (B x L): 1 on
the target's tokens and its EOS, 0 on the prompt and padding. Position t predicts token t+1, so
its weight is target_mask[t+1]: the model is trained to write the target, never the prompt.
"""
from __future__ import annotations

import jax.numpy as jnp

from lmjax.objectives import clm
from lmjax.objectives.common import Objective


def prepare(batch, rng_B, s):
  inputs, targets = clm.prepare(batch, rng_B, s)
  next_is_target_BxL = jnp.pad(batch["target_mask"][:, 1:], ((0, 0), (0, 1))).astype(jnp.float32)
  return inputs, {**targets, "weights": {"lm": targets["weights"]["lm"] * next_is_target_BxL}}


OBJECTIVE = Objective(prepare=prepare, loss=clm.loss, report=clm.report, causal=True, batch="features")
