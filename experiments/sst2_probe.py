"""lmjax finetune --config sst2_probe --init runs/bert_tiny --workdir runs/bert_tiny_sst2

The probe of the `lmjax compare` studies: a short SST-2 sentiment fine-tuning from a pretrained
checkpoint (an encoder's [CLS] or a decoder's last token), scored by accuracy on the 5% of GLUE's
SST-2 training file held out by hash (3,316 phrases). Every arm and seed of a study gets the same
probe, so its score differs only by what pretraining left in the weights. 300 steps, seq 64,
batch 32, AdamW 5e-4 with linear decay. Its measured scores are in the studies' docstrings
(experiments/compare_bert_objectives.py, compare_bert_vs_gpt.py).
"""
import ml_collections

from lmjax.config import base_config, model_section


def get_config():
  c = base_config()
  c.model = model_section("")    # replaced by the --init model plus the classify head
  c.data.update(source="local", path="../shared/data/sentiment/sst2_train.tsv", seq_len=64, batch_size=32)
  c.objective.max_predictions = 0   # objective.name comes from the task
  c.optim.update(lr=5e-4, warmup_steps=30, schedule="linear", end_lr_ratio=0.0, weight_decay=0.01)
  c.optim.layer_decay = 1.0
  c.optim.freeze_encoder = False
  c.train.update(steps=300, log_every=50, eval_every=300, eval_batches=10, checkpoint_every=150,
                 best_metric="", samples=0)
  c.task = ml_collections.ConfigDict(dict(
      name="sentiment", eval_path="", validation_percent=5.0, num_labels=2, text_column="", dropout=0.1))
  return c
