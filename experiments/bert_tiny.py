"""lmjax train --config experiments/bert_tiny.py --workdir runs/bert_tiny

BERT pretraining as in Devlin et al. (2019) -- masked LM (15%, 80/10/10) plus
next-sentence prediction, summed -- with a 2-layer, 128-wide post-LN encoder
(Turc et al.'s BERT-tiny shape) on the embedded offline corpus, seq 128, batch 32.
About 8 minutes on 2 CPU cores; NSP accuracy on validation climbs well above 50%
and the masked-token loss falls steadily.
"""
from lmjax.config import base_config, model_section


def get_config():
  c = base_config()
  c.model = model_section("bert-tiny", vocab_size=4096, max_len=128)
  c.tokenizer.vocab_size = 4096
  c.data.batch_size = 32
  c.objective.update(name="mlm_nsp", max_predictions=20)
  c.optim.update(lr=1e-3, warmup_steps=100, weight_decay=0.01)
  c.train.update(steps=2000, eval_every=500, checkpoint_every=500, samples=0)
  return c
