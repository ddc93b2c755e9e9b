"""Translation with a decoder: source -> target as a prompt and its continuation, decoded by beam
search, scored by sacrebleu's BLEU and chrF against every reference of each source.

    lmjax finetune --config experiments/translation_gpt.py --init runs/gpt_tiny --workdir runs/mt

Files: .tsv with no header and the source and target in the first two columns (the Tatoeba /
manythings.org export: english, french, attribution) or with a header naming them; .jsonl (or
.csv) with `source`/`target` columns (or task.source_column / task.target_column). Pairs with the
same source are one example with several references, and the held-out split is by source, so all
references of a sentence are on one side. Training rows are summarization's (tasks/summarization.py):
source, task.separator, one reference and EOS, the loss on the reference's tokens only; each
reference of a source is a row of its own.
"""
from __future__ import annotations

import csv
import pathlib

from lmjax.errors import UserError
from lmjax.inference import generate
from lmjax.tasks import common, summarization

OBJECTIVE = "seq2seq"            # objectives/seq2seq.py: the causal-LM loss on the target's tokens
HEADS = ()


def read_pairs(path, source_column: str = "", target_column: str = "") -> list[tuple[str, str]]:
  """(source, target) pairs of a task file, in file order; empty ones skipped and counted."""
  p = pathlib.Path(path)
  src_names = (source_column,) if source_column else ("source", "src")
  tgt_names = (target_column,) if target_column else ("target", "tgt")
  if p.suffix == ".tsv":
    if not p.is_file():
      raise UserError(f"task file {p}: no such file")
    try:
      text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(f"task file {p} is unreadable ({type(e).__name__}); give a UTF-8 .tsv or .jsonl") from None
    # Sentences contain quote characters: tabs alone separate the columns.
    table = [row for row in csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    if not table:
      raise UserError(f"task file {p} is empty")
    header = table[0]
    src = next((header.index(n) for n in src_names if n in header), None)
    tgt = next((header.index(n) for n in tgt_names if n in header), None)
    if src is not None and tgt is not None:
      s, t, table = src, tgt, table[1:]
    elif source_column or target_column:
      raise UserError(f"task file {p} has no header row naming {src_names[0]!r} and {tgt_names[0]!r}; "
                      "drop task.source_column/target_column to read its first two columns")
    else:
      s, t = 0, 1   # no header: source, target, then anything (Tatoeba's attribution)
    rows = [(r[s] if len(r) > s else "", r[t] if len(r) > t else "") for r in table]
  else:
    table = common.read_rows(p)
    if not table:
      raise UserError(f"task file {p} has no rows")
    s, t = common.column(p, table, src_names), common.column(p, table, tgt_names)
    rows = [(str(r.get(s) or ""), str(r.get(t) or "")) for r in table]
  pairs = [(a.strip(), b.strip()) for a, b in rows if a.strip() and b.strip()]
  common.report_skipped(p, len(rows) - len(pairs), len(pairs))
  return pairs


def read(cfg, path) -> list[dict]:
  """[{source, targets}]: one example per distinct source, its references in file order."""
  grouped: dict[str, list[str]] = {}
  for source, target in read_pairs(path, cfg.task.source_column, cfg.task.target_column):
    grouped.setdefault(source, []).append(target)
  return [{"source": s, "targets": ts} for s, ts in grouped.items()]


def examples(cfg, split: str) -> list[dict]:
  return common.examples(cfg, split, read, key=lambda ex: ex["source"])


def source(cfg, examples, tokenizer) -> list[dict]:
  t = cfg.task
  pairs = [{"source": ex["source"], "target": target} for ex in examples for target in ex["targets"]]
  return summarization.seq2seq_rows(pairs, tokenizer, seq_len=cfg.data.seq_len, max_target_len=t.max_target_len,
                                    separator=t.separator)


def translate(cfg, model, params, tok, sources: list[str]) -> list[str]:
  """Beam-search translations (task.num_beams, task.length_penalty) of `sources`."""
  t = cfg.task
  eos = tok.eos_id if tok.eos_id is not None else tok.sep_id   # as seq2seq_rows ends targets
  prompts = [summarization.seq2seq_prompt(tok, s, seq_len=cfg.data.seq_len, max_target_len=t.max_target_len,
                                          separator=t.separator) for s in sources]
  outputs = []
  for i in range(0, len(prompts), cfg.data.batch_size):
    outputs += generate.generate(model, params, prompts[i:i + cfg.data.batch_size], t.max_target_len,
                                 num_beams=t.num_beams, length_penalty=t.length_penalty,
                                 eos_id=eos, pad_id=tok.pad_id or 0)
  return [tok.decode([i for i in ids if i != eos]).strip() for ids in outputs]


def bleu_chrf(hypotheses: list[str], references: list[list[str]]) -> dict:
  """Corpus BLEU and chrF (sacrebleu's defaults: 13a tokenization, chrF2), each hypothesis against
  all of its references (reference streams padded with None, which sacrebleu skips)."""
  import sacrebleu
  depth = max(len(r) for r in references)
  streams = [[r[k] if k < len(r) else None for r in references] for k in range(depth)]
  return {"bleu": sacrebleu.corpus_bleu(hypotheses, streams).score,
          "chrf": sacrebleu.corpus_chrf(hypotheses, streams).score}


def scores(cfg, model, params, tok, examples) -> dict:
  """BLEU and chrF of the model's translations, next to the copy-the-source baseline scored alike."""
  exs = examples[:cfg.task.eval_examples or len(examples)]
  sources, references = [ex["source"] for ex in exs], [ex["targets"] for ex in exs]
  model_scores = bleu_chrf(translate(cfg, model, params, tok, sources), references)
  copy_scores = bleu_chrf(sources, references)
  return {**model_scores, "copy_bleu": copy_scores["bleu"], "copy_chrf": copy_scores["chrf"],
          "examples": len(exs), "references": sum(map(len, references))}
