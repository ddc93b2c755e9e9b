"""Prompt -> target with a decoder: summarization (document -> summary), and translation through
the same rows. Trained on the target's tokens only; scored by ROUGE-1/2/L of greedy outputs.

    lmjax finetune --config experiments/xsum_gpt.py --init runs/gpt_tiny --workdir runs/xsum

Files: .jsonl with `document`/`summary` or `source`/`target` columns (or task.source_column /
task.target_column). Each row is the source (cut to fit), task.separator, the target and EOS.
"""
from __future__ import annotations

import re

import numpy as np

from lmjax.errors import UserError
from lmjax.inference import generate
from lmjax.tasks import common

OBJECTIVE = "seq2seq"            # objectives/seq2seq.py: the causal-LM loss on the target's tokens
HEADS = ()


def read_seq2seq(path, source_column: str = "", target_column: str = "") -> list[dict]:
  """[{source, target}] from .jsonl (document/summary or source/target); empty rows skipped, counted."""
  rows = common.read_rows(path)
  if not rows:
    raise UserError(f"task file {path} has no rows")
  src = common.column(path, rows, (source_column,) if source_column else ("document", "source"))
  tgt = common.column(path, rows, (target_column,) if target_column else ("summary", "target"))
  examples, skipped = [], 0
  for row in rows:
    s, t = str(row.get(src) or "").strip(), str(row.get(tgt) or "").strip()
    if not s or not t:
      skipped += 1
      continue
    examples.append({"source": s, "target": t})
  common.report_skipped(path, skipped, len(examples))
  return examples


def seq2seq_prompt(tok, source: str, *, seq_len: int, max_target_len: int, separator: str) -> list[int]:
  """Source tokens cut to leave max_target_len for the target, then the separator's tokens."""
  sep_ids = tok.encode(separator)
  return tok.encode(source)[:seq_len - max_target_len - len(sep_ids)] + sep_ids


def seq2seq_rows(examples: list[dict], tok, *, seq_len: int, max_target_len: int, separator: str) -> list[dict]:
  """One decoder row per example: prompt then target + EOS. target_mask is 1 on the target's
  tokens (and its EOS) only, so the loss ignores the prompt."""
  eos = tok.eos_id if tok.eos_id is not None else tok.sep_id
  if eos is None or max_target_len < 2 or max_target_len >= seq_len:
    raise UserError(f"prompt -> target rows need a tokenizer with EOS and 2 <= task.max_target_len "
                    f"({max_target_len}) < data.seq_len ({seq_len})")
  rows = []
  for ex in examples:
    prompt = seq2seq_prompt(tok, ex["source"], seq_len=seq_len, max_target_len=max_target_len, separator=separator)
    target = tok.encode(ex["target"])[:max_target_len - 1] + [eos]
    ids = prompt + target
    row = {"input_ids": np.zeros(seq_len, np.int32), "segment_ids": np.zeros(seq_len, np.int32),
           "positions": np.zeros(seq_len, np.int32), "target_mask": np.zeros(seq_len, np.int32)}
    row["input_ids"][:len(ids)] = ids
    row["segment_ids"][:len(ids)] = 1
    row["positions"][:len(ids)] = np.arange(len(ids))
    row["target_mask"][len(prompt):len(ids)] = 1
    rows.append(row)
  return rows


def read(cfg, path) -> list[dict]:
  return read_seq2seq(path, cfg.task.source_column, cfg.task.target_column)


def examples(cfg, split: str) -> list[dict]:
  return common.examples(cfg, split, read, key=lambda ex: ex["source"])


def source(cfg, examples, tokenizer) -> list[dict]:
  t = cfg.task
  return seq2seq_rows(examples, tokenizer, seq_len=cfg.data.seq_len, max_target_len=t.max_target_len,
                      separator=t.separator)


def rouge(targets: list[str], predictions: list[str]) -> dict:
  """Mean ROUGE-1/2/L F-measure in percent over pairs, stemmed (Porter), as rouge-score computes
  them for each pair (the summary-level ROUGE of the XSum and CNN/DM papers' tables)."""
  from rouge_score import rouge_scorer
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  per_pair = [scorer.score(t, p) for t, p in zip(targets, predictions)]
  return {k: 100.0 * float(np.mean([s[k].fmeasure for s in per_pair])) for k in ("rouge1", "rouge2", "rougeL")}


def lead_sentence(document: str) -> str:
  """The lead baseline's summary: the document's first sentence."""
  lines = [line.strip() for line in document.splitlines() if line.strip()]
  if len(lines) > 1:   # XSum and CNN/DM store one sentence a line
    return lines[0]
  # One line of running text: cut after the first . ! or ? that a space follows.
  return re.split(r"(?<=[.!?])\s+", lines[0] if lines else "", maxsplit=1)[0]


def summarize(cfg, model, params, tok, sources: list[str]) -> list[str]:
  """Greedy summaries (up to task.max_target_len tokens) of `sources`."""
  t = cfg.task
  prompts = [seq2seq_prompt(tok, s, seq_len=cfg.data.seq_len, max_target_len=t.max_target_len,
                            separator=t.separator) for s in sources]
  eos = tok.eos_id if tok.eos_id is not None else tok.sep_id   # as seq2seq_rows ends targets
  outputs = []
  for i in range(0, len(prompts), cfg.data.batch_size):
    outputs += generate.generate(model, params, prompts[i:i + cfg.data.batch_size], t.max_target_len,
                                 eos_id=eos, pad_id=tok.pad_id or 0)
  return [tok.decode([i for i in ids if i != eos]) for ids in outputs]


def scores(cfg, model, params, tok, examples) -> dict:
  """ROUGE-1/2/L of greedy summaries of the examples (the first task.eval_examples of them), next to
  the lead baseline (each source's first sentence as its summary) on the same examples, scored alike."""
  exs = examples[:cfg.task.eval_examples or len(examples)]
  sources, targets = [ex["source"] for ex in exs], [ex["target"] for ex in exs]
  model_scores = rouge(targets, summarize(cfg, model, params, tok, sources))
  lead_scores = rouge(targets, [lead_sentence(s) for s in sources])
  return {**model_scores, **{f"lead_{k}": v for k, v in lead_scores.items()}, "examples": len(exs)}
