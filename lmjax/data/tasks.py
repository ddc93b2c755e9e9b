"""Fine-tuning task data: sentiment rows, SQuAD windows, prompt -> target rows. Numpy only.

    examples = read_sentiment("../shared/data/sentiment/sst2_train.tsv", num_labels=2)  # [{text, label}]
    train, validation = split_validation(examples, percent=5)
    rows, meta = squad_features(read_squad(path), tok, seq_len=384, doc_stride=128, max_query_len=64)
    rows = seq2seq_rows(read_seq2seq(path, "document", "summary"), tok, seq_len=512, max_target_len=64)

Task files: sentiment as .tsv / .csv / .jsonl with a text column (`sentence` or `text`) and `label`
(an integer class), or a TFDS name (`glue/sst2`, `imdb_reviews`) read through tfds.data_source; SQuAD
as its JSON; summarization (`document`/`summary`) and translation (`source`/`target`) as .jsonl.
Without a separate validation file, a fixed ~percent% of the training file becomes validation,
chosen by a hash of each example's text: the same split on every machine, for any file order.
Bad input is one-line UserError naming the file; an empty row is skipped and counted.
"""
from __future__ import annotations

import csv
import hashlib
import json
import pathlib
import re
import string
import sys
from collections import Counter

import numpy as np

from lmjax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
TEXT_COLUMNS = ("sentence", "text")             # sentiment: the first one present holds the text
TFDS_TASKS = {"glue/sst2": "sentence", "imdb_reviews": "text"}  # TFDS name -> its text feature
TFDS_VALIDATION = {"glue/sst2": "validation", "imdb_reviews": "test"}  # imdb has no validation split


def resolve(path: str) -> pathlib.Path:
  """A task file as given, else relative to the repo root (configs name ../shared/data/...)."""
  p = pathlib.Path(path)
  if not p.exists() and not p.is_absolute() and (REPO / p).exists():
    return REPO / p
  return p


def read_rows(path) -> list[dict]:
  """A .tsv / .csv / .jsonl file as a list of dicts (column -> str), header row first for tables."""
  p = resolve(str(path))
  if not p.is_file():
    raise UserError(f"task file {p}: no such file")
  try:
    text = p.read_text(encoding="utf-8-sig")   # -sig: a BOM must not become part of the first column name
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"task file {p} is unreadable ({type(e).__name__}: {e}); give a UTF-8 .tsv, .csv or .jsonl") from None
  if not text.strip():
    raise UserError(f"task file {p} is empty")
  if p.suffix in (".jsonl", ".json"):
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"task file {p} line {i} is not JSON ({e.msg}); one object per line") from None
      if not isinstance(row, dict):
        raise UserError(f"task file {p} line {i} is not a JSON object")
      rows.append(row)
    return rows
  # SST-2's TSV is unquoted and its sentences contain quote characters: no quoting for tabs.
  delimiter, quoting = ("\t", csv.QUOTE_NONE) if p.suffix == ".tsv" else (",", csv.QUOTE_MINIMAL)
  csv.field_size_limit(sys.maxsize)
  try:
    return list(csv.DictReader(text.splitlines(), delimiter=delimiter, quoting=quoting))
  except csv.Error as e:
    raise UserError(f"task file {p} is not a valid {p.suffix[1:].upper()} file ({e})") from None


def column(path, rows: list[dict], wanted: tuple[str, ...]) -> str:
  """The first of `wanted` that the file has, or a UserError naming the file and its columns."""
  have = list(rows[0]) if rows else []
  for name in wanted:
    if name in have:
      return name
  raise UserError(f"task file {resolve(str(path))} has no column {' or '.join(map(repr, wanted))}; "
                  f"its columns are {have}")


def parse_label(raw, path, line: int, num_labels: int) -> int:
  try:
    label = int(str(raw).strip())
  except ValueError:
    label = -1
  if not 0 <= label < num_labels:
    raise UserError(f"task file {resolve(str(path))} row {line}: label {raw!r} is not a class in "
                    f"0..{num_labels - 1} (task.num_labels={num_labels})")
  return label


def read_sentiment(path, num_labels: int = 2, text_column: str = "") -> list[dict]:
  """[{text, label}] from a local task file; empty texts are skipped and counted on stderr."""
  rows = read_rows(path)
  if not rows:
    raise UserError(f"task file {resolve(str(path))} has a header but no rows")
  text_col = column(path, rows, (text_column,) if text_column else TEXT_COLUMNS)
  label_col = column(path, rows, ("label",))
  examples, skipped = [], 0
  for i, row in enumerate(rows, 2 if resolve(str(path)).suffix != ".jsonl" else 1):
    text = row.get(text_col)
    if text is None or not str(text).strip():
      skipped += 1
      continue
    examples.append({"text": str(text).strip(), "label": parse_label(row.get(label_col), path, i, num_labels)})
  report_skipped(path, skipped, len(examples))
  return examples


def report_skipped(path, skipped: int, kept: int) -> None:
  if skipped:
    print(f"lmjax: {resolve(str(path))}: skipped {skipped} empty row(s), kept {kept}", file=sys.stderr)
  if not kept:
    raise UserError(f"task file {resolve(str(path))} has no non-empty rows")


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


def in_validation(key: str, percent: float) -> bool:
  """Deterministic: a hash of the example, not its position, so reordering a file keeps the split."""
  return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 10_000 < percent * 100


def split_validation(examples: list, percent: float, key=lambda ex: ex["text"]) -> tuple[list, list]:
  """(train, validation): ~percent% of examples by hash of key(example); both non-empty."""
  train, validation = [], []
  for ex in examples:
    (validation if in_validation(key(ex), percent) else train).append(ex)
  if not validation or not train:  # a tiny file: still give each side something
    train, validation = examples[:-1] or examples, examples[-1:]
  return train, validation


# ---- SQuAD ----------------------------------------------------------------------------------------

def read_squad(path, answerable_only: bool = True) -> list[dict]:
  """[{id, question, context, answers: [text], answer_start}] from SQuAD v1.1/v2.0 JSON. Unanswerable
  questions (v2's is_impossible) are dropped: this is v1.1-style extractive QA."""
  p = resolve(str(path))
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
        examples.append({"id": qa.get("id", str(len(examples))), "question": qa["question"].strip(),
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


# ---- prompt -> target (summarization, translation) ------------------------------------------------

def read_seq2seq(path, source_column: str = "", target_column: str = "") -> list[dict]:
  """[{source, target}] from .jsonl (document/summary or source/target); empty rows skipped, counted."""
  rows = read_rows(path)
  if not rows:
    raise UserError(f"task file {resolve(str(path))} has no rows")
  src = column(path, rows, (source_column,) if source_column else ("document", "source"))
  tgt = column(path, rows, (target_column,) if target_column else ("summary", "target"))
  examples, skipped = [], 0
  for row in rows:
    s, t = str(row.get(src) or "").strip(), str(row.get(tgt) or "").strip()
    if not s or not t:
      skipped += 1
      continue
    examples.append({"source": s, "target": t})
  report_skipped(path, skipped, len(examples))
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


# ---- the loop's entry point -----------------------------------------------------------------------

class FeatureRows:
  """Rows already built (QA windows, prompt -> target rows) read in the stream's order; padding rows
  are all zeros, which every task objective weights out."""

  def __init__(self, stream):
    self.stream, self.index = stream, 0

  def get_state(self):
    return {"doc": self.index}

  def set_state(self, state):
    self.index = int(state["doc"])

  def empty_row(self):
    return {k: np.zeros_like(v) for k, v in self.stream.source[0].items()}

  def next_row(self):
    if self.index >= len(self.stream):
      return None
    self.index += 1
    return self.stream.source[self.stream.source_index(self.index - 1)]


def examples(cfg, split: str):
  """The task's examples of `split` ("train", or anything else for validation)."""
  data, task = cfg.data, cfg.task
  name = cfg.objective.name
  if name == "classify" and data.source not in ("local", "default"):
    return TfdsSentiment(data.source, split, data.data_dir)
  if split != "train" and task.eval_path:
    path, part = task.eval_path, None
  else:
    path, part = data.path, split
  if not path:
    raise UserError(f"objective {name!r} needs a task file: set data.path (and optionally task.eval_path)")
  if name == "classify":
    exs, key = read_sentiment(path, task.num_labels, task.text_column), lambda ex: ex["text"]
  elif name == "span":
    exs, key = read_squad(path), lambda ex: ex["context"]   # by context: no paragraph on both sides
  else:
    exs, key = read_seq2seq(path, task.source_column, task.target_column), lambda ex: ex["source"]
  if part is None:
    return exs
  train, validation = split_validation(exs, task.validation_percent, key)
  return train if part == "train" else validation


def source_from_config(cfg, split: str, tokenizer):
  """What pipeline.make_iterator reads for a task objective: {text, label} dicts or built rows."""
  exs = examples(cfg, split)
  name, L = cfg.objective.name, cfg.data.seq_len
  if name == "classify":
    return exs
  if name == "span":
    return squad_features(exs, tokenizer, seq_len=L, doc_stride=cfg.task.doc_stride,
                          max_query_len=cfg.task.max_query_len)[0]
  return seq2seq_rows(exs, tokenizer, seq_len=L, max_target_len=cfg.task.max_target_len,
                      separator=cfg.task.separator)



