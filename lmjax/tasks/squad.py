"""Extractive question answering (SQuAD v1.1-style): [CLS] question [SEP] context window [SEP] ->
the answer's start and end tokens, scored by SQuAD's exact match and F1.

    lmjax finetune --config experiments/squad_minilm.py --init runs/minilm --workdir runs/squad

Files: SQuAD v1.1 / v2.0 JSON (v2's unanswerable questions are dropped). Contexts longer than a
window are cut into windows every task.doc_stride tokens; the answer is the best start + end score
over an example's windows. Needs a tokenizer with character offsets (an imported Hugging Face one).
"""
from __future__ import annotations

import json
import pathlib
import re
import string
from collections import Counter

import jax
import numpy as np

from lmjax.errors import UserError
from lmjax.tasks import common

OBJECTIVE = "span"               # objectives/span.py: start and end cross-entropies over the window
HEADS = ("span",)


def read_squad(path, answerable_only: bool = True) -> list[dict]:
  """[{id, question, context, answers: [text], answer_start}] from SQuAD v1.1/v2.0 JSON. Unanswerable
  questions (v2's is_impossible) are dropped: this is v1.1-style extractive QA."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise UserError(f"task file {p}: no such file")
  try:
    data = json.loads(p.read_text(encoding="utf-8"))["data"]
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
    raise UserError(f"task file {p} is not SQuAD JSON ({type(e).__name__}); expected {{'data': [articles]}}") from None
  examples, skipped = [], 0
  for article in data:
    for para in article.get("paragraphs", []):
      context = para.get("context", "")
      for qa in para.get("qas", []):
        answers = qa.get("answers") or []
        if not context.strip() or not qa.get("question", "").strip() or (answerable_only and not answers):
          skipped += 1
          continue
        qid = qa.get("id", str(len(examples)))
        for a in answers:
          if not isinstance(a, dict) or not isinstance(a.get("text"), str) or not isinstance(a.get("answer_start"), int):
            raise UserError(f"task file {p}: question {qid} has an answer without a text string and an integer "
                            f"answer_start ({a!r}); fix the file")
        if answers:   # the first answer's span is the training label: it must be where it says
          start, text = answers[0]["answer_start"], answers[0]["text"]
          if context[start:start + len(text)] != text:
            raise UserError(f"task file {p}: question {qid}'s answer_start {start} does not point at its answer "
                            f"{text!r} (the context there reads {context[start:start + len(text)]!r}); fix the file")
        examples.append({"id": qid, "question": qa["question"].strip(),
                         "context": context, "answers": [a["text"] for a in answers],
                         "answer_start": answers[0]["answer_start"] if answers else -1})
  if not examples:
    raise UserError(f"task file {p} has no answerable questions")
  return examples


def token_offsets(tok, text: str) -> tuple[list[int], list[tuple[int, int]]]:
  """Token ids of `text` and each token's (start, end) character span in it."""
  if not hasattr(tok, "tok"):
    raise UserError("extractive QA needs a Hugging Face tokenizer (character offsets); this workdir has "
                    "a sentencepiece one: import a pretrained BERT with lmjax convert --from-hf")
  enc = tok.tok.encode(text, add_special_tokens=False)
  return enc.ids, [tuple(o) for o in enc.offsets]


def squad_features(examples: list[dict], tok, *, seq_len: int, doc_stride: int, max_query_len: int):
  """(rows, meta): one row per window [CLS] question [SEP] context window [SEP] of each example.

  Windows start every doc_stride context tokens until one reaches the end of the context. A row's
  start/end_position is the answer's first/last token, or 0 ([CLS]) when the answer is not wholly in
  that window. meta[i] = (example index, offsets_Lx2): each row token's character span in the
  context, (-1, -1) outside it, to map predicted spans back to text.
  """
  if tok.cls_id is None or tok.sep_id is None:
    raise UserError("extractive QA needs a tokenizer with [CLS] and [SEP]")
  rows, meta = [], []
  for e, ex in enumerate(examples):
    q_ids = tok.encode(ex["question"])[:max_query_len]
    ctx_ids, ctx_offsets = token_offsets(tok, ex["context"])
    budget = seq_len - len(q_ids) - 3
    if budget < 1:
      raise UserError(f"data.seq_len={seq_len} leaves no room for the context after a {len(q_ids)}-token "
                      f"question; raise data.seq_len or lower task.max_query_len")
    a_start = ex["answer_start"]
    a_end = a_start + len(ex["answers"][0]) if ex["answers"] else -1
    # The answer's tokens: those whose span overlaps [a_start, a_end).
    in_answer = [i for i, (s, t) in enumerate(ctx_offsets) if s < a_end and t > a_start]
    first = 0
    while True:
      window = range(first, min(first + budget, len(ctx_ids)))
      ids = [tok.cls_id] + q_ids + [tok.sep_id] + ctx_ids[window.start:window.stop] + [tok.sep_id]
      shift = len(q_ids) + 2 - window.start    # context token i sits at row position i + shift
      start = end = 0
      if in_answer and in_answer[0] >= window.start and in_answer[-1] < window.stop:
        start, end = in_answer[0] + shift, in_answer[-1] + shift
      row = {"input_ids": np.full(seq_len, tok.pad_id or 0, np.int32), "token_type_ids": np.zeros(seq_len, np.int32),
             "attention_mask": np.zeros(seq_len, np.int32), "start_position": np.int32(start),
             "end_position": np.int32(end)}
      row["input_ids"][:len(ids)] = ids
      row["token_type_ids"][len(q_ids) + 2:len(ids)] = 1
      row["attention_mask"][:len(ids)] = 1
      offsets_Lx2 = np.full((seq_len, 2), -1, np.int32)
      offsets_Lx2[window.start + shift:window.stop + shift] = ctx_offsets[window.start:window.stop]
      rows.append(row)
      meta.append((e, offsets_Lx2))
      if window.stop >= len(ctx_ids):
        break
      first += doc_stride
  return rows, meta


def best_spans(examples, meta, start_logits_NxL, end_logits_NxL, max_answer_tokens: int = 30,
               top_k: int = 20) -> list[str]:
  """Each example's answer text: the best start+end score over all its windows, context tokens only."""
  best = [(-np.inf, "") for _ in examples]
  for (e, offsets_Lx2), s_L, t_L in zip(meta, start_logits_NxL, end_logits_NxL):
    context_L = offsets_Lx2[:, 0] >= 0
    s_L, t_L = np.where(context_L, s_L, -np.inf), np.where(context_L, t_L, -np.inf)
    for i in np.argsort(-s_L)[:top_k]:
      for j in np.argsort(-t_L)[:top_k]:
        if context_L[i] and context_L[j] and i <= j < i + max_answer_tokens and s_L[i] + t_L[j] > best[e][0]:
          best[e] = (s_L[i] + t_L[j], examples[e]["context"][offsets_Lx2[i, 0]:offsets_Lx2[j, 1]])
  return [text for _, text in best]


def normalize_answer(s: str) -> str:
  """SQuAD's official normalisation: lower case, no punctuation, no articles, single spaces."""
  s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def squad_f1(prediction: str, truth: str) -> float:
  pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
  common = sum((Counter(pred) & Counter(gold)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(pred), common / len(gold)
  return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: list[str], answers: list[list[str]]) -> dict:
  """Exact match and F1 in percent, each the best over an example's gold answers (SQuAD v1.1 script)."""
  em = [max(normalize_answer(p) == normalize_answer(a) for a in golds) for p, golds in zip(predictions, answers)]
  f1 = [max(squad_f1(p, a) for a in golds) for p, golds in zip(predictions, answers)]
  return {"exact_match": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1)), "examples": len(em)}


def read(cfg, path) -> list[dict]:
  del cfg
  return read_squad(path)


def examples(cfg, split: str) -> list[dict]:
  # Held out by context: no paragraph is on both sides.
  return common.examples(cfg, split, read, key=lambda ex: ex["context"])


def source(cfg, examples, tokenizer) -> list[dict]:
  return squad_features(examples, tokenizer, seq_len=cfg.data.seq_len, doc_stride=cfg.task.doc_stride,
                        max_query_len=cfg.task.max_query_len)[0]


def answer(cfg, model, params, tok, examples) -> list[str]:
  """Each example's predicted answer text: the best span over all of its windows."""
  rows, meta = squad_features(examples, tok, seq_len=cfg.data.seq_len, doc_stride=cfg.task.doc_stride,
                              max_query_len=cfg.task.max_query_len)

  @jax.jit
  def predict(params, b):
    out = model.apply({"params": params}, b["input_ids"], attention_mask=b["attention_mask"],
                      token_type_ids=b["token_type_ids"])
    return out.start_logits, out.end_logits
  start_NxL, end_NxL = common.predict_batches(cfg, rows, "features", tok, predict, params)
  return best_spans(examples, meta, start_NxL, end_NxL, cfg.task.max_answer_tokens)


def scores(cfg, model, params, tok, examples) -> dict:
  """Exact match and F1 over every example (all held-out questions, not a sample of batches)."""
  return squad_metrics(answer(cfg, model, params, tok, examples), [ex["answers"] for ex in examples])
