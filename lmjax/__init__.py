"""lmjax: BERT- and GPT-style Transformer pretraining in JAX/Flax.

    model, params = lmjax.load("runs/gpt_tiny")        # an lmjax workdir
    model, params = lmjax.load("gpt2")                 # a Hugging Face hub id, converted once and cached
    out = model.apply({"params": params}, input_ids, attention_mask=mask)
    out.logits
"""
from __future__ import annotations


def load(name_or_dir, step: int | None = None):
  """(model, params) from an lmjax workdir (a training run or a converted checkpoint), a Hugging
  Face save_pretrained directory, or a hub id such as "bert-base-uncased" or "gpt2@REVISION"
  (lmjax/convert/hub.py: the Hugging Face cache first, converted once into LMJAX_CACHE)."""
  from lmjax.checkpoint import load_model
  from lmjax.convert.hub import model_dir
  return load_model(model_dir(name_or_dir), step)
