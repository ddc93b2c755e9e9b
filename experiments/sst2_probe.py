"""lmjax finetune --config sst2_probe --init runs/bert_tiny --workdir runs/bert_tiny_sst2

The probe of the `lmjax compare` studies: a short SST-2 sentiment fine-tuning from a pretrained
checkpoint (an encoder's [CLS] or a decoder's last token), scored by accuracy on the 5% of GLUE's
SST-2 training file held out by hash (3,316 phrases). Every arm and seed of a study gets the same
probe, so its score differs only by what pretraining left in the weights. It is sst2_minilm.py's
recipe (seq 64, batch 32, the same held-out part) made for small models trained from scratch:
300 steps, AdamW 5e-4 with linear decay. Its measured scores are in the studies' docstrings
(experiments/compare_bert_objectives.py, compare_bert_vs_gpt.py).
"""
from lmjax.config import load_config


def get_config():
  c = load_config("sst2_minilm")
  c.optim.lr = 5e-4
  c.train.update(steps=300, log_every=50, eval_every=300, eval_batches=10, checkpoint_every=150)
  return c
