"""lmjax train --config experiments/bert_tiny.py --workdir runs/bert_tiny

BERT pretraining as in Devlin et al. (2019) -- masked LM (15%, 80/10/10) plus
next-sentence prediction, summed -- with a 2-layer, 128-wide post-LN encoder
(Turc et al.'s BERT-tiny shape) on the embedded offline corpus, seq 128, batch 32.
About 0.22 s a step on 2 CPU cores (11 minutes for the 3,000 steps). Measured: validation NSP
accuracy 0.62 / 0.61 / 0.64 / 0.65 / 0.60 / 0.64 at steps 500 ... 3,000 on the 374 validation
pairs (chance is 0.5; one standard error is 0.025), NSP loss 0.674 at step 500 and between
0.654 and 0.679 after (an earlier run rose to 0.727: on this small corpus the NSP head can
overfit while its accuracy holds), masked-token accuracy 0.135 -> 0.159.
"""
from lmjax.config import base_config, model_section


def get_config():
  c = base_config()
  c.model = model_section("bert-tiny", vocab_size=4096, max_len=128)
  c.tokenizer.vocab_size = 4096
  c.data.batch_size = 32
  c.objective.update(name="mlm_nsp", max_predictions=20)
  c.optim.update(lr=1e-3, warmup_steps=100, weight_decay=0.01)
  c.train.update(steps=3000, eval_every=500, checkpoint_every=1000, samples=0)
  return c
