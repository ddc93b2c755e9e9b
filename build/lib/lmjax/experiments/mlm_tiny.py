"""lmjax train --config experiments/mlm_tiny.py --workdir runs/mlm_tiny

Masked LM alone (no NSP), as RoBERTa (Liu et al. 2019) argued for, on the same
encoder, data and budget as bert_tiny: the pair to run to compare the objectives
at equal compute. About 12 minutes on 2 CPU cores; set its validation masked-token
accuracy beside bert_tiny's (0.159 at step 3,000).
"""
from lmjax.config import base_config, model_section


def get_config():
  c = base_config()
  c.model = model_section("bert-tiny", vocab_size=4096, max_len=128, heads=("mlm",))
  c.tokenizer.vocab_size = 4096
  c.data.batch_size = 32
  c.objective.update(name="mlm", max_predictions=20)
  c.optim.update(lr=1e-3, warmup_steps=100, weight_decay=0.01)
  c.train.update(steps=3000, eval_every=500, checkpoint_every=1000, samples=0)
  return c
