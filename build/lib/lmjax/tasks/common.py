"""What fine-tuning tasks share: reading task files, the held-out split, and batched prediction.

Task files are .tsv / .csv / .jsonl (a header row first for tables), or a task's own format
(SQuAD's JSON). Without a separate validation file, a fixed ~percent% of the training file becomes
validation, chosen by a hash of each example's key: the same split on every machine, for any file
order. Bad input is a one-line UserError naming the file; an empty row is skipped and counted.
"""
from __future__ import annotations

import csv
import hashlib
import json
import pathlib
import sys

import jax
import numpy as np

from lmjax.data import pipeline
from lmjax.errors import UserError


def read_rows(path) -> list[dict]:
  """A .tsv / .csv / .jsonl file as a list of dicts (column -> str), header row first for tables."""
  p = pathlib.Path(path)
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
  raise UserError(f"task file {path} has no column {' or '.join(map(repr, wanted))}; its columns are {have}")


def report_skipped(path, skipped: int, kept: int) -> None:
  if skipped:
    print(f"lmjax: {path}: skipped {skipped} empty row(s), kept {kept}", file=sys.stderr)
  if not kept:
    raise UserError(f"task file {path} has no non-empty rows")


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


def examples(cfg, split: str, read, key) -> list:
  """A task's examples of `split` ("train", or anything else for validation): task.eval_path when
  set, else the train or held-out part of data.path by hash of key(example)."""
  data, task = cfg.data, cfg.task
  if split != "train" and task.eval_path:
    return read(cfg, task.eval_path)
  if not data.path:
    raise UserError(f"task {task.name!r} needs a task file: set data.path (and optionally task.eval_path)")
  train, validation = split_validation(read(cfg, data.path), task.validation_percent, key)
  return train if split == "train" else validation


def predict_batches(cfg, rows_or_examples, kind: str, tok, fn, params):
  """fn(params, batch) on every batch of one ordered pass; outputs concatenated, padding rows dropped."""
  it = pipeline.make_iterator(kind, rows_or_examples, tok, seq_len=cfg.data.seq_len,
                              batch_size=cfg.data.batch_size, train=False)
  outs = [jax.tree.map(np.asarray, fn(params, batch)) for batch in it]
  return jax.tree.map(lambda *x: np.concatenate(x)[:len(rows_or_examples)], *outs)
