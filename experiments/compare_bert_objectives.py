"""lmjax compare --config compare_bert_objectives --workdir runs/compare_bert_objectives

BERT's pretraining objectives against each other at equal training compute, on one 2-layer,
128-wide encoder (BERT-tiny's shape) and the same English prose (seven Gutenberg books and the US
presidential speeches of ../shared/data): masked LM alone (RoBERTa's choice, the baseline), MLM +
next-sentence prediction (BERT), MLM + sentence-order prediction (ALBERT), ELECTRA's replaced-token
detection (its generator a quarter of the discriminator's width, lambda = 50), and MLM with
SpanBERT's span masking. Each arm trains for the same FLOPs (the generator's counted), two seeds
each, then the same SST-2 probe from each (experiments/sst2_probe.py).

MEASURED: (filled in from report.md once the study has run)
"""
import ml_collections

from lmjax.config import base_config, model_section


def get_config():
  c = base_config()
  c.model = model_section("bert-tiny", vocab_size=4096, max_len=128, heads=("mlm",))
  c.tokenizer.vocab_size = 4096
  c.data.update(source="local", path="../shared/data/gutenberg,../shared/data/speeches", seq_len=128, batch_size=32)
  c.objective.update(name="mlm", max_predictions=20)
  c.optim.update(lr=1e-3, warmup_steps=50, weight_decay=0.01)
  c.train.update(log_every=50, eval_batches=10, keep=1, best_metric="")
  c.study = ml_collections.ConfigDict(dict(
      arms={
          "mlm": {},
          "mlm_nsp": {"objective": {"name": "mlm_nsp"}, "model": {"heads": ("mlm", "nsp")}},
          "mlm_sop": {"objective": {"name": "mlm_sop"}, "model": {"heads": ("mlm", "nsp")}},
          "electra": {"objective": {"name": "electra"}, "model": {"heads": ("rtd",)}},
          "mlm_span": {"objective": {"masking": "span"}},
      },
      baseline="mlm",
      seeds=(0, 1),
      budget=dict(flops=6.5e12, tokens=0, steps=0),
      evals=4,
      held_out_batches=10,
      held_out_chars=100_000,
      probe=dict(config="sst2_probe", metric="accuracy", overrides={}),
  ))
  return c
