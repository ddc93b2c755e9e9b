"""lmjax finetune --config experiments/xsum_gpt.py --init runs/gpt_tiny --workdir runs/xsum

Summarization (XSum) fine-tuning of a GPT trained with lmjax; runs/gpt_tiny is

  lmjax train --workdir runs/gpt_tiny        # or any decoder workdir (lmjax convert --from-hf GPT-2)

Each row is the article (cut to fit), task.separator (a newline and "TL;DR: "), then the one-sentence
summary and EOS; the loss counts the summary's tokens only. At the end, greedy summaries of the validation articles (~5% of the
200, by hash) are scored with ROUGE-1/2/L (rouge-score, stemmed). gpt_tiny's 128-token context keeps
only each article's first ~90 tokens: a demo of the pipeline, not a summarizer (expect low ROUGE;
not measured yet); give a larger decoder (max_len >= 512) and raise data.seq_len for real use.
For translation, give a .jsonl with source/target columns as data.path.
"""
import ml_collections

from lmjax.config import base_config, model_section


def get_config():
  c = base_config()
  c.model = model_section("")    # replaced by the --init model
  c.data.update(source="local", path="../shared/data/xsum/xsum_200.jsonl", seq_len=128, batch_size=8)
  c.objective.max_predictions = 0   # objective.name comes from the task
  c.optim.update(lr=3e-4, warmup_steps=20, schedule="linear", end_lr_ratio=0.0, weight_decay=0.1)
  c.train.update(steps=200, log_every=10, eval_every=200, eval_batches=5, checkpoint_every=100,
                 best_metric="", samples=0)
  c.task = ml_collections.ConfigDict(dict(
      name="summarization",         # lmjax/tasks/summarization.py
      eval_path="",               # a separate .jsonl for validation; "" = split one off data.path
      validation_percent=20.0,    # share of data.path held out (by hash of the document)
      source_column="",           # "" = `document`, else `source`
      target_column="",           # "" = `summary`, else `target`
      separator="\nTL;DR: ",      # between the article and its summary, as in GPT-2's paper
      max_target_len=32,          # summary tokens (with EOS) trained on and generated
      eval_examples=0,            # validation articles summarized at the end; 0 = all
      dropout=0.0,
  ))
  return c
