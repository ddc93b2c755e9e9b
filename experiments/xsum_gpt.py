"""lmjax finetune --config experiments/xsum_gpt.py --init runs/gpt_tiny --workdir runs/xsum  # ~7 min, ROUGE-1/2/L 2.5/0.0/2.5 (lead 15.4/2.1/11.9)

Summarization (XSum) fine-tuning of a GPT trained with lmjax; runs/gpt_tiny is the default run

  lmjax train --workdir runs/gpt_tiny        # or any decoder workdir (lmjax convert --from-hf GPT-2)

Each row is the article (cut to fit), task.separator (a newline and "TL;DR: "), then the one-sentence
summary and EOS; the loss counts the summary's tokens only. 20% of the 200 articles, chosen by hash,
are held out (39); at the end their greedy summaries are scored with ROUGE-1/2/L (rouge-score,
stemmed, mean F-measure over articles), next to the lead baseline (each article's first sentence as
its summary), scored the same way on the same articles.

Measured (2 CPU cores shared with other jobs, load average 8-13): gpt_tiny's 500 steps took 32m39s
(485 CPU-seconds: ~4 min on 2 idle cores), this command 6m48s (115 CPU-seconds), 200 steps of
batch 8 at seq 128. 39 held-out articles: ROUGE-1/2/L 2.5 / 0.0 / 2.5; the lead sentence: 15.4 /
2.1 / 11.9 (the XSum paper's LEAD on its test set: 16.30 / 1.60 / 11.95). Far below the baseline, as
expected: a 4M-parameter model whose tokenizer was trained on CPython's documentation spends ~56
tokens on a 20-word BBC summary, so 97% of summaries are cut at task.max_target_len=32 and gpt_tiny's
128-token context holds only the article's first ~30 words; its greedy outputs are strings of word
pieces ("maha ma s s s"), not sentences. A demo of the pipeline and its baseline, not a summarizer:
give a larger decoder (max_len >= 512) and raise data.seq_len for real use.
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
