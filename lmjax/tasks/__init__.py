"""Fine-tuning tasks by name. A new task is one file and one line here.

    task = tasks.get("sentiment")
    train_examples = task.examples(cfg, "train")
    scores = task.scores(cfg, model, params, tokenizer, task.examples(cfg, "validation"))

A task file holds everything about its task:

    OBJECTIVE                                   the loss it trains (a name in objectives/), which
                                                also fixes the model it needs (encoder or decoder)
    HEADS                                       the encoder heads it adds to the pretrained model
    read(cfg, path) -> examples                 its file format (also `lmjax eval --data FILE`)
    examples(cfg, split) -> examples            the train or held-out part of the config's data
    source(cfg, examples, tokenizer) -> rows    what the objective's batch layout reads
    scores(cfg, model, params, tokenizer, examples) -> {metric: value}   prediction, post-processing, metric
"""
from __future__ import annotations

from lmjax.errors import UserError
from lmjax.tasks import sentiment, squad, summarization, translation

TASKS = {
    "sentiment": sentiment,           # sentence classification on [CLS]: accuracy, F1
    "squad": squad,                   # extractive QA: exact match, F1
    "summarization": summarization,   # decoder prompt -> target: ROUGE-1/2/L, next to the lead sentence
    "translation": translation,       # decoder prompt -> target, beam search: BLEU, chrF (sacrebleu)
}


def get(name: str):
  if name not in TASKS:
    raise UserError(f"task.name={name!r} is not one of {sorted(TASKS)}")
  return TASKS[name]


__all__ = ["TASKS", "get"]
