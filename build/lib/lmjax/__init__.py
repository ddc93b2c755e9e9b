"""lmjax: BERT- and GPT-style Transformer pretraining in JAX/Flax.

    model, params = lmjax.load("runs/gpt_tiny")
    out = model.apply({"params": params}, input_ids, attention_mask=mask)
    out.logits
"""
from __future__ import annotations


def load(workdir, step: int | None = None):
  """(model, params) from an lmjax workdir: a training run or a converted HF checkpoint."""
  from lmjax.checkpoint import load_model
  return load_model(workdir, step)
