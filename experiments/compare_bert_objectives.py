"""lmjax compare --config compare_bert_objectives --workdir runs/compare_bert_objectives

BERT's pretraining objectives against each other at equal training compute, on one 2-layer,
128-wide encoder (BERT-tiny's shape) and the same English prose (seven Gutenberg books and the US
presidential speeches of ../shared/data): masked LM alone (RoBERTa's choice, the baseline), MLM +
next-sentence prediction (BERT), MLM + sentence-order prediction (ALBERT), ELECTRA's replaced-token
detection (its generator a quarter of the discriminator's width, lambda = 50), and MLM with
SpanBERT's span masking. Each arm trains for the same FLOPs (the generator's counted), two seeds
each, then the same SST-2 probe from each (experiments/sst2_probe.py).

Measured on 2 CPU cores (2026-11-30; 59 minutes with the cores shared with test runs, about 40
alone; report, results and every run's metrics.jsonl in experiments/results/compare_bert_objectives/):
6.5e12 FLOPs per run give the MLM arms 486 steps (1.99M tokens) and ELECTRA 438 (its generator's
FLOPs counted).

| arm      | steps | held-out MLM loss | SST-2 probe accuracy | vs mlm (95% CI)          |
|----------|-------|-------------------|----------------------|--------------------------|
| mlm      | 486   | 6.280 ± 0.026     | 74.50 ± 0.62         | baseline                 |
| electra  | 438   | n/a               | 62.97 ± 5.2          | -11.5 [-55.7, +32.6] ≈   |
| mlm_nsp  | 486   | 6.357 ± 0.009     | 73.09 ± 0.15         | -1.42 [-5.90, +3.07] ≈   |
| mlm_sop  | 486   | 6.356 ± 0.11      | 74.88 ± 0.13         | +0.38 [-4.34, +5.10] ≈   |
| mlm_span | 486   | 6.274 ± 0.078     | 74.82 ± 0.51         | +0.32 [-2.21, +2.84] ≈   |

Every difference to MLM alone is within the noise of two seeds (≈: the 95% interval includes zero;
with two seeds the t interval is wide). What the table does show: ELECTRA's discriminator had not
started to learn in 438 steps (its rtd_accuracy, 0.855, equals 1 - the replaced share, 0.145: it
calls every token original, the generator being too weak to fool it) and probes worst and most
variably; NSP and SOP cost a little masked-token loss (6.36 against 6.28) at equal FLOPs. ELECTRA's
paper trains for 1M steps; a fair ELECTRA comparison needs at least the step counts where its
discriminator leaves the base rate.
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
