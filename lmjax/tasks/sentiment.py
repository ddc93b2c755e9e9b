"""Sentiment (or any sentence classification): [CLS] text [SEP] -> one of task.num_labels classes,
scored by accuracy and F1.

    lmjax finetune --config experiments/sst2_minilm.py --init runs/minilm --workdir runs/sst2

Files: .tsv / .csv / .jsonl with a text column (`sentence` or `text`, or task.text_column) and
`label` (an integer class); or a TFDS name as data.source (`glue/sst2`, `imdb_reviews`).
"""
from __future__ import annotations

import jax
import numpy as np

from lmjax.errors import UserError
from lmjax.tasks import common

OBJECTIVE = "classify"           # objectives/classify.py: cross-entropy on the pooled [CLS]
HEADS = ("classify",)
TEXT_COLUMNS = ("sentence", "text")             # the first one present holds the text
TFDS_TASKS = {"glue/sst2": "sentence", "imdb_reviews": "text"}  # TFDS name -> its text feature
TFDS_VALIDATION = {"glue/sst2": "validation", "imdb_reviews": "test"}  # imdb has no validation split


def parse_label(raw, path, line: int, num_labels: int) -> int:
  try:
    label = int(str(raw).strip())
  except ValueError:
    label = -1
  if not 0 <= label < num_labels:
    raise UserError(f"task file {path} row {line}: label {raw!r} is not a class in "
                    f"0..{num_labels - 1} (task.num_labels={num_labels})")
  return label


def read_sentiment(path, num_labels: int = 2, text_column: str = "") -> list[dict]:
  """[{text, label}] from a local task file; empty texts are skipped and counted on stderr."""
  rows = common.read_rows(path)
  if not rows:
    raise UserError(f"task file {path} has a header but no rows")
  text_col = common.column(path, rows, (text_column,) if text_column else TEXT_COLUMNS)
  label_col = common.column(path, rows, ("label",))
  examples, skipped = [], 0
  for i, row in enumerate(rows, 1 if str(path).endswith(".jsonl") else 2):  # tables: row 1 is the header
    text = row.get(text_col)
    if text is None or not str(text).strip():
      skipped += 1
      continue
    examples.append({"text": str(text).strip(), "label": parse_label(row.get(label_col), path, i, num_labels)})
  common.report_skipped(path, skipped, len(examples))
  return examples


class TfdsSentiment:
  """A TFDS sentiment split (`glue/sst2`, `imdb_reviews`) as a sequence of {text, label}, read lazily."""

  def __init__(self, name: str, split: str, data_dir: str = ""):
    import tensorflow_datasets as tfds
    if split != "train":
      split = TFDS_VALIDATION.get(name, split)
    try:
      self.ds = tfds.data_source(name, split=split, data_dir=data_dir or None)
    except Exception as e:  # noqa: BLE001 -- any TFDS failure means the same thing to the user
      raise UserError(f"TFDS {name!r} split {split!r} is not readable ({type(e).__name__}); download it "
                      f"first (tfds build {name}) or give a local task file as data.path") from None
    self.text = TFDS_TASKS.get(name, "text")

  def __len__(self):
    return len(self.ds)

  def __getitem__(self, i):
    ex = self.ds[int(i)]
    text = ex[self.text]
    return {"text": text.decode("utf-8") if isinstance(text, bytes) else str(text), "label": int(ex["label"])}


def read(cfg, path) -> list[dict]:
  return read_sentiment(path, cfg.task.num_labels, cfg.task.text_column)


def examples(cfg, split: str):
  if cfg.data.source not in ("local", "default"):
    return TfdsSentiment(cfg.data.source, split, cfg.data.data_dir)
  return common.examples(cfg, split, read, key=lambda ex: ex["text"])


def source(cfg, examples, tokenizer):
  """The classification rows tokenize the text themselves (data/pipeline.py)."""
  del cfg, tokenizer
  return examples


def classification_scores(labels_N, preds_N, num_labels: int) -> dict:
  """Accuracy, and F1 of class 1 (binary) or macro F1 (more classes), in percent."""
  f1s = []
  for c in range(1, 2) if num_labels == 2 else range(num_labels):
    tp = np.sum((preds_N == c) & (labels_N == c))
    denom = np.sum(preds_N == c) + np.sum(labels_N == c)
    f1s.append(2 * tp / denom if denom else 0.0)
  return {"accuracy": 100.0 * float(np.mean(preds_N == labels_N)), "f1": 100.0 * float(np.mean(f1s)),
          "examples": int(len(labels_N))}


def scores(cfg, model, params, tok, examples) -> dict:
  exs = [examples[i] for i in range(len(examples))]

  @jax.jit
  def predict(params, b):
    out = model.apply({"params": params}, b["input_ids"], attention_mask=b["attention_mask"],
                      token_type_ids=b["token_type_ids"])
    return out.class_logits.argmax(-1)
  preds_N = common.predict_batches(cfg, exs, "classification", tok, predict, params)
  return classification_scores(np.array([ex["label"] for ex in exs]), preds_N, cfg.task.num_labels)
