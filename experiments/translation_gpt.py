"""lmjax finetune --config experiments/translation_gpt.py --model runs/gpt_init --workdir runs/mt  # ~5 min, BLEU 2.2 / chrF 13.8

English -> French (Tatoeba, ../shared/data/translation/eng-fra_tatoeba_5k.tsv: 5,000 pairs, 2,597
distinct English sentences, several French references each) by fine-tuning a GPT trained with lmjax.
--model takes any decoder (a workdir, or a hub id such as gpt2). The measured run started from a
small GPT pretrained for 150 steps on the default corpus (2m13s on 2 shared CPU cores, its
tokenizer reused from a gpt_tiny run; a fresh workdir trains the 4k-piece tokenizer first):

  lmjax train --config experiments/gpt_tiny.py --workdir runs/gpt_init --config.model.hidden=128 \
    --config.model.num_layers=2 --config.model.num_heads=2 --config.model.mlp_dim=512 \
    --config.train.steps=150 --config.train.eval_every=150 --config.train.checkpoint_every=150 --config.train.samples=0

Each row is the English sentence, task.separator, one French reference and EOS (the loss counts the
French tokens only); every reference of a sentence is a row. 10% of the English sentences, chosen
by hash, are held out with all their references; at the end they are translated by beam search
(task.num_beams, task.length_penalty) and scored with sacrebleu (corpus BLEU and chrF against all
references), next to copying the English source, scored the same way.

Measured (2 shared CPU cores, 4m50s for the whole command, 400 steps of batch 32 at seq 48):
258 held-out sentences (535 references): BLEU 2.2, chrF 13.8; copying the source: BLEU 2.3,
chrF 9.1. A demo of the pipeline at this size and budget: chrF is above the copy baseline,
BLEU is not (a 0.6M-parameter model trained for 5 minutes, a tokenizer trained on English only).
"""
import ml_collections

from lmjax.config import base_config, model_section


def get_config():
  c = base_config()
  c.model = model_section("")    # replaced by the --init model
  c.data.update(source="local", path="../shared/data/translation/eng-fra_tatoeba_5k.tsv", seq_len=48,
                batch_size=32)
  c.objective.max_predictions = 0   # objective.name comes from the task
  c.optim.update(lr=1e-3, warmup_steps=30, schedule="linear", end_lr_ratio=0.0, weight_decay=0.1)
  c.train.update(steps=400, log_every=50, eval_every=400, eval_batches=5, checkpoint_every=200,
                 best_metric="", samples=0)
  c.task = ml_collections.ConfigDict(dict(
      name="translation",         # lmjax/tasks/translation.py
      eval_path="",               # a separate file for validation; "" = split one off data.path
      validation_percent=10.0,    # share of the source sentences held out, all their references with them
      source_column="",           # "" = the first column of a header-less .tsv, else `source`
      target_column="",           # "" = the second column, else `target`
      separator="\nFrench: ",     # between the source and its translation
      max_target_len=24,          # target tokens (with EOS) trained on and generated
      num_beams=4,                # beam search at evaluation
      length_penalty=1.0,         # a hypothesis scores sum(log p) / length**length_penalty
      eval_examples=0,            # held-out sentences translated at the end; 0 = all
      dropout=0.1,
  ))
  return c
