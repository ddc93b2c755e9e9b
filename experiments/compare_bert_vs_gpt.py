"""lmjax compare --config compare_bert_vs_gpt --workdir runs/compare_bert_vs_gpt

BERT against GPT at equal training compute: the same 2-layer, 128-wide Transformer (BERT-tiny's
shape) trained as an encoder with MLM + NSP (BERT), as a decoder with the causal LM loss (GPT) and
as a decoder with a prefix LM (UniLM / T5), each for the same training FLOPs, on the same English
prose (seven Gutenberg books and the US presidential speeches of ../shared/data), three seeds each;
then the same SST-2 probe from each (experiments/sst2_probe.py: [CLS] for the encoder, the last
token for the decoders).

MEASURED: (filled in from report.md once the study has run)
"""
import ml_collections

from lmjax.config import base_config, model_section

GPT = {"causal": True, "pre_ln": True, "heads": (), "type_vocab_size": 0, "activation": "gelu_tanh",
       "norm_eps": 1e-5}


def get_config():
  c = base_config()
  c.model = model_section("bert-tiny", vocab_size=4096, max_len=128)
  c.tokenizer.vocab_size = 4096
  c.data.update(source="local", path="../shared/data/gutenberg,../shared/data/speeches", seq_len=128, batch_size=32)
  c.objective.update(name="mlm_nsp", max_predictions=20)
  c.optim.update(lr=1e-3, warmup_steps=50, weight_decay=0.01)
  c.train.update(log_every=50, eval_batches=10, keep=1, best_metric="")
  c.study = ml_collections.ConfigDict(dict(
      arms={
          "bert_mlm_nsp": {},
          "gpt_clm": {"model": GPT, "objective": {"name": "clm"}},
          "gpt_prefix_lm": {"model": GPT, "objective": {"name": "prefix_lm"}},
      },
      baseline="bert_mlm_nsp",
      seeds=(0, 1, 2),
      budget=dict(flops=6.7e12, tokens=0, steps=0),
      evals=4,
      held_out_batches=10,
      held_out_chars=100_000,
      probe=dict(config="sst2_probe", metric="accuracy", overrides={}),
  ))
  return c
