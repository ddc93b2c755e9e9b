"""lmjax train --config experiments/electra_tiny.py --workdir runs/electra_tiny

ELECTRA (Clark et al. 2020) on mlm_tiny's encoder, data and batch: a generator a quarter as wide
(sharing the embeddings) fills the masked positions with samples, and the encoder learns to tell
replaced tokens from originals, weighted lambda = 50 beside the generator's MLM loss. The
discriminator is the model to fine-tune (lmjax finetune --init runs/electra_tiny) or export.
Measured (300 steps, 3.8 min on 2 shared CPU cores, ~7,000 tok/s): validation loss 26.44 =
mlm_loss 6.09 (generator accuracy 0.108) + 50 x rtd_loss 0.407; 14.3% of tokens replaced and
rtd_accuracy 0.857 = 1 - replaced: at this budget the discriminator has only learned the base
rate (rtd_loss is the entropy of a 14.3% coin, 0.410); it needs many more steps to beat it.
"""
from lmjax.config import base_config, model_section


def get_config():
  c = base_config()
  c.model = model_section("bert-tiny", vocab_size=4096, max_len=128, heads=("rtd",), generator_fraction=0.25)
  c.tokenizer.vocab_size = 4096
  c.data.batch_size = 32
  c.objective.update(name="electra", max_predictions=20, electra_weight=50.0)
  c.optim.update(lr=1e-3, warmup_steps=50, weight_decay=0.01)
  c.train.update(steps=300, eval_every=150, checkpoint_every=300, samples=0)
  return c
