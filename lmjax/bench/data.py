"""`lmjax bench data`: tokens/s of the input pipeline (read + tokenize + pack or pair + batch) of the
train stream, with the tokenizing in 0 (this process), 1 and 2 grain worker processes.

Compare with the tokens/s a training step consumes (`lmjax bench train`): the pipeline should be far ahead.
Worker start-up (a fresh Python per worker, importing TFDS) is timed apart: a run pays it once.
"""
import os
import tempfile
import time

from lmjax import objectives
from lmjax.data import pipeline, sources, tokenizer

WORKERS = (0, 1, 2)


def main(cfg, args):
  t0 = time.perf_counter()
  sources.resolve_held_out(cfg.data)
  source = sources.source_from_config(cfg.data, cfg.data.train_split)
  print(f"corpus: {source} ready in {time.perf_counter() - t0:.1f}s")
  workdir = getattr(args, "workdir", None)
  if workdir and os.path.exists(os.path.join(workdir, "tokenizer.model")):
    tok = tokenizer.load_tokenizer(workdir)
  else:  # a throwaway tokenizer trained on a sample: the pipeline's speed barely depends on which one
    t0 = time.perf_counter()
    t = cfg.tokenizer
    path = os.path.join(tempfile.mkdtemp(prefix="lmjax_bench_"), "tokenizer.model")
    tok = tokenizer.train(tokenizer.sample_documents(source, min(t.sample_chars, 5_000_000)), path,
                          vocab_size=t.vocab_size, model_type=t.model_type, byte_fallback=t.byte_fallback,
                          character_coverage=t.character_coverage)
    print(f"tokenizer: trained {t.model_type} {tok.vocab_size} on a sample in {time.perf_counter() - t0:.1f}s")

  kind = objectives.OBJECTIVES[cfg.objective.name].batch
  results = {}
  for workers in WORKERS:
    cfg.data.workers = workers
    it = pipeline.iterator_from_config(cfg, tok, "train", kind=kind)
    t0 = time.perf_counter()
    next(it)   # starts the workers, if any
    start_s = time.perf_counter() - t0
    warmup = max(1, args.batches // 10)
    for _ in range(warmup):
      next(it)
    real = padded = 0
    t0 = time.perf_counter()
    for _ in range(args.batches):
      batch = next(it)
      mask = batch["segment_ids"] if "segment_ids" in batch else batch["attention_mask"]
      real += int((mask > 0).sum())
      padded += mask.size
    dt = time.perf_counter() - t0
    it.close()
    print(f"data pipeline ({kind}, batch {cfg.data.batch_size} x seq {cfg.data.seq_len}, {workers} workers, "
          f"{args.batches} batches after {warmup} warm-up; start {start_s:.1f}s): {real / dt:,.0f} tokens/s "
          f"({padded / dt:,.0f} incl. padding), {args.batches / dt:,.1f} batches/s, "
          f"{100 * real / max(padded, 1):.1f}% of positions are real tokens", flush=True)
    results[workers] = {"tokens_per_s": real / dt, "batches_per_s": args.batches / dt, "start_s": start_s}
  results["rows_from_ready_ids"] = rows_ceiling(cfg, tok, kind, args.batches)
  print(f"rows from ready token ids (the main process's share, what workers cannot speed up): "
        f"{results['rows_from_ready_ids']:,.0f} tokens/s", flush=True)
  return results


def rows_ceiling(cfg, tok, kind, batches) -> float:
  """tokens/s of the rows and batches alone: the same batches replayed with their token ids (or
  BERT instances) kept from a first pass, so the tokenizing costs nothing."""
  cfg.data.workers = 0
  it = pipeline.iterator_from_config(cfg, tok, "train", kind=kind)
  chunks = next(p for p in vars(it.rows).values() if isinstance(p, pipeline._Chunks))
  kept, make = {}, chunks.make
  chunks.make = lambda c: kept[c] if c in kept else kept.setdefault(c, make(c))
  start = it.get_state()
  for _ in range(batches):
    next(it)
  it.set_state(start)
  chunks.items, chunks.start = [], 0
  real, t0 = 0, time.perf_counter()
  for _ in range(batches):
    batch = next(it)
    real += int(((batch["segment_ids"] if "segment_ids" in batch else batch["attention_mask"]) > 0).sum())
  return real / (time.perf_counter() - t0)
