"""lmjax train --config experiments/bert_tiny.py --workdir runs/bert_tiny

BERT pretraining as in Devlin et al. (2019) -- masked LM (15%, 80/10/10) plus
next-sentence prediction, summed -- with a 2-layer, 128-wide post-LN encoder
(Turc et al.'s BERT-tiny shape) on the embedded offline corpus, seq 128, batch 32.
About 0.33 s a step on 2 CPU cores (~11 minutes). Measured with --config.train.steps=1500:
validation NSP accuracy 0.51 / 0.57 / 0.58 at steps 500 / 1000 / 1500 (NSP loss 0.697 ->
0.666), masked-token accuracy 0.12 -> 0.135. NSP is learned slowly on this small corpus,
whose validation split holds only ~95 pairs.
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
