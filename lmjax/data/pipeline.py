"""Batches for training and evaluation, as numpy dicts: causal-LM rows, BERT sentence pairs, classification.

Every iterator reads documents through one index stream: grain shuffles the split's indices by seed
(a new order each epoch, epochs back to back), and the process takes every shard_count-th index of
that endless stream, starting at shard_index. So the shards are disjoint, together they cover each
epoch once, and the position in the stream is a plain integer. That integer, plus an offset inside
the current document, is the whole iterator state: `it.get_state()` is a small JSON-able dict and
`it.set_state(state)` resumes with exactly the batches that would have come next.
Everything drawn at random for a document (BERT pair lengths, next-or-random) comes from an rng
seeded by (seed, its position in the global stream), so it is the same however the data is sharded.
One layout reads no document stream: "stream" (StreamRows, nanoGPT's reading of one text) cuts
windows at random offsets from a split's tokens joined into one array; its state is a window count.

Tokenizing (and, for BERT pairs, making a document's instances) is a pure function of the
position in the stream, so it can run ahead in grain worker processes (`workers` > 0, the train
stream only): they return results in stream order, and the batches are the same, bit for bit,
whatever the number of workers; the state stays the plain position, so resume is exact too.

Evaluation iterators make one pass over the split in order (no shuffle) and then stop; the last
batch is padded with empty rows (segment_ids / attention_mask all 0), which losses weight out.
Give them num_batches when several processes evaluate: each then yields exactly that many batches
(all-padding ones once its shard is done), so no process waits on another in a collective.
"""
import functools
import random
import re
import weakref

import grain
import numpy as np

from lmjax.errors import UserError

TOKENIZE_CHUNK = 64   # documents tokenized together: encode_batch is much faster than one at a time
WORKER_AHEAD = 2      # chunks each worker process keeps ready


class _DocStream:
  """The documents one process reads, in order: global stream position g = shard_index + j * shard_count."""

  def __init__(self, source, *, seed: int, shard_index: int, shard_count: int, train: bool):
    if not 0 <= shard_index < shard_count:
      raise UserError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
    if len(source) < shard_count:
      raise UserError(f"{source} has {len(source)} documents, fewer than the {shard_count} processes reading it")
    self.source, self.shard_index, self.shard_count = source, shard_index, shard_count
    indices = grain.MapDataset.range(len(source))
    if train:
      indices = indices.shuffle(seed=seed).repeat()  # reshuffled each epoch
    self.indices = indices[shard_index::shard_count]

  def __len__(self):
    return len(self.indices)

  def global_position(self, j: int) -> int:
    return self.shard_index + j * self.shard_count

  def source_index(self, j: int) -> int:
    return int(self.indices[j])


class _Chunks:
  """The results of make(c) for chunks c of `chunk` stream positions, read forward: computed here
  when asked, or with workers > 0 ahead in grain worker processes, in order. make is pure, so
  results do not depend on where or when it ran, and a jump (resume) just restarts the workers."""

  def __init__(self, make, chunk: int, length: int, workers: int = 0):
    self.make, self.chunk, self.workers = make, chunk, workers
    self.num_chunks = -(-length // chunk)
    self.start, self.items = 0, []
    self._workers, self._next = None, None   # grain iterator over chunks, and the chunk it gives next

  def __call__(self, j: int):
    if not self.start <= j < self.start + len(self.items):
      c = j // self.chunk
      self.items, self.start = self._compute(c), c * self.chunk
    return self.items[j - self.start]

  def _compute(self, c: int) -> list:
    if not self.workers:
      return self.make(c)
    if self._workers is None or self._next != c:
      self.close()
      _absl_flags_parsed()
      # One thread per worker, a few chunks ahead: grain's default (16 threads, 500 elements ahead)
      # would fight over each worker's GIL and hold hundreds of chunks of token ids.
      chunks = grain.MapDataset.range(c, self.num_chunks).map(self.make).to_iter_dataset(
          grain.ReadOptions(num_threads=1, prefetch_buffer_size=WORKER_AHEAD))
      self._workers = iter(chunks.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.workers, per_worker_buffer_size=WORKER_AHEAD)))
      # Stopped before interpreter shutdown, which would otherwise tear grain down under its threads.
      self._close_at_exit = weakref.finalize(self, self._workers.close)
    self._next = c + 1
    return next(self._workers)

  def close(self):
    if self._workers is not None:
      self._close_at_exit()
      self._workers = None

  def __getstate__(self):   # workers receive the rows' makers, never a live iterator
    return {**self.__dict__, "_workers": None, "_close_at_exit": None, "items": [], "start": 0}


def _absl_flags_parsed():
  """grain's workers read absl flags, which a program not started by absl.app never parsed."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class _EncodeDocs:
  """Token ids of the documents at stream positions [c * chunk, (c + 1) * chunk): one encode_batch
  call, much faster than one document at a time."""

  def __init__(self, stream, tokenizer, chunk: int):
    self.stream, self.tokenizer, self.chunk = stream, tokenizer, chunk

  def __call__(self, c: int) -> list[list[int]]:
    positions = range(c * self.chunk, min((c + 1) * self.chunk, len(self.stream)))
    return self.tokenizer.encode_batch([self.stream.source[self.stream.source_index(j)] for j in positions])


class LMRows:
  """Causal-LM rows: documents + EOS, concatenated and cut into rows of seq_len; no token dropped or repeated.
  A document that does not fit continues at the start of the next row, as a new segment."""

  def __init__(self, stream: _DocStream, tokenizer, seq_len: int, workers: int = 0):
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.sep_id
    if eos is None:
      raise UserError("tokenizer has neither EOS nor [SEP] to end documents with")
    self.stream, self.seq_len, self.eos = stream, seq_len, eos
    self.tokens = _Chunks(_EncodeDocs(stream, tokenizer, TOKENIZE_CHUNK), TOKENIZE_CHUNK, len(stream), workers)
    self.doc, self.offset = 0, 0

  def get_state(self):
    return {"doc": self.doc, "offset": self.offset}

  def set_state(self, state):
    self.doc, self.offset = int(state["doc"]), int(state["offset"])

  def empty_row(self):
    zeros = np.zeros(self.seq_len, np.int32)
    return {"input_ids": zeros, "segment_ids": zeros.copy(), "positions": zeros.copy()}

  def next_row(self):
    row = self.empty_row()
    filled, segment = 0, 0
    while filled < self.seq_len and self.doc < len(self.stream):
      ids = self.tokens(self.doc)
      take = min(self.seq_len - filled, len(ids) + 1 - self.offset)  # +1: the EOS
      end = self.offset + take
      piece = ids[self.offset:end] + ([self.eos] if end > len(ids) else [])
      segment += 1
      row["input_ids"][filled:filled + take] = piece
      row["segment_ids"][filled:filled + take] = segment
      row["positions"][filled:filled + take] = np.arange(take)
      filled += take
      self.offset += take
      if self.offset == len(ids) + 1:
        self.doc, self.offset = self.doc + 1, 0
    return row if filled else None


class StreamRows:
  """Windows of one token stream, nanoGPT's get_batch: a split's documents tokenized and joined
  (EOS between them where the tokenizer has one; tinyshakespeare is one document) into T tokens;
  a window at offset i is input_ids = tokens[i:i+L], labels = tokens[i+1:i+1+L], so every one of
  its L positions is a target (segment_ids 1; 0 marks padding, whose labels are weighted out).

  Random windows (training, and evaluation with num_batches: nanoGPT's estimate_loss): the offsets
  of global batch b are uniform on [0, T - L) (torch.randint(len(data) - block_size)) drawn from
  numpy's generator seeded with (seed, split, b), so a batch is a function of (seed, step) alone;
  process p of P takes rows [p B/P, (p+1) B/P) of it, so the global batch is the same for any P.
  An evaluation therefore scores the same windows each time. The state is the number of windows
  this process has read. Evaluation without num_batches is one ordered pass instead: windows at
  0, L, 2L, ..., the last one padded, so every token but the first is scored exactly once.
  The whole split is held in memory as int32: meant for corpora of some hundred million tokens at most.
  """

  def __init__(self, source, tokenizer, seq_len: int, *, seed: int, shard_index: int, shard_count: int,
               batch_size: int, train: bool, random: bool):
    self.tokens = stream_tokens(source, tokenizer)
    if len(self.tokens) <= seq_len:
      raise UserError(f"{source} has {len(self.tokens)} tokens, too few for one window of data.seq_len={seq_len} "
                      "and its next-token targets; lower data.seq_len")
    self.seq_len, self.seed, self.train, self.random = seq_len, seed, train, random
    self.shard_index, self.shard_count = shard_index, shard_count
    self.rows_per_batch, self.batch_size = batch_size // shard_count, batch_size
    self.window = 0
    self._batch, self._windows = None, None
    self.num_windows = -(-(len(self.tokens) - 1) // seq_len)   # the ordered pass

  def get_state(self):
    return {"window": self.window}

  def set_state(self, state):
    self.window = int(state["window"])

  def empty_row(self):
    zeros = np.zeros(self.seq_len, np.int32)
    return {"input_ids": zeros, "labels": zeros.copy(), "segment_ids": zeros.copy()}

  def batch_offsets(self, b: int) -> np.ndarray:
    """Offsets of every window of global batch b (all processes' rows)."""
    rng = np.random.default_rng((self.seed, int(self.train), b))
    return rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)

  def next_row(self):
    L = self.seq_len
    if self.random:
      b, r = divmod(self.window, self.rows_per_batch)
      if self._batch != b:   # this process's windows of batch b, cut in one gather
        offsets = self.batch_offsets(b)[self.shard_index * self.rows_per_batch:][:self.rows_per_batch]
        self._batch, self._windows = b, self.tokens[offsets[:, None] + np.arange(L + 1)]
      self.window += 1
      window = self._windows[r]
      return {"input_ids": window[:-1], "labels": window[1:], "segment_ids": np.ones(L, np.int32)}
    g = self.shard_index + self.window * self.shard_count
    if g >= self.num_windows:
      return None
    self.window += 1
    window = self.tokens[g * L:g * L + L + 1]
    n = len(window) - 1   # targets in this window: L but in the last
    row = self.empty_row()
    row["input_ids"][:n], row["labels"][:n], row["segment_ids"][:n] = window[:-1], window[1:], 1
    return row


def stream_tokens(source, tokenizer) -> np.ndarray:
  """All documents of `source` as one int32 array, EOS between documents where the tokenizer has one."""
  encode = getattr(tokenizer, "encode_array", None) or (lambda text: np.asarray(tokenizer.encode(text), np.int32))
  parts = []
  for i in range(len(source)):
    if i and tokenizer.eos_id is not None:
      parts.append(np.array([tokenizer.eos_id], np.int32))
    parts.append(encode(source[i]).astype(np.int32))
  return np.concatenate(parts)


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]*[A-Z0-9])")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
MAX_SENTENCE_CHARS = 1000


def split_sentences(text: str) -> list[str]:
  """Paragraphs (blank lines), then sentence ends (. ! ? before a capital); over-long ones at newlines."""
  sentences = []
  for paragraph in _PARAGRAPH.split(text):
    for s in _SENTENCE_END.split(paragraph):
      s = s.strip()
      if len(s) > MAX_SENTENCE_CHARS:  # code blocks, tables: no sentence ends, but lines
        sentences.extend(line for line in s.split("\n") if line.strip())
      elif s:
        sentences.append(s)
  return sentences


def truncate_pair(a: list, b: list, max_tokens: int, rng: random.Random):
  """BERT's truncate_seq_pair: trim the longer side, from the front or back at random."""
  while len(a) + len(b) > max_tokens:
    longer = a if len(a) > len(b) else b
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()


class PairRows:
  """BERT pretraining rows as in create_pretraining_data.py: [CLS] A [SEP] B [SEP], B the actual next
  sentences half of the time (nsp_label 1), else sentences from a random other document (nsp_label 0).

  sentence_order=True gives ALBERT's sentence-order pairs instead (Lan et al. 2020): B always the
  actual next sentences of A's document, the two swapped in half of the pairs (nsp_label 1 = in
  order, 0 = swapped)."""

  def __init__(self, stream: _DocStream, tokenizer, seq_len: int, *, seed: int, short_seq_prob: float,
               sentence_order: bool = False, workers: int = 0):
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
      raise UserError("BERT pairs need a tokenizer with [CLS] and [SEP] (GPT-2's has neither)")
    self.stream, self.tok, self.seq_len = stream, tokenizer, seq_len
    self.seed, self.short_seq_prob, self.sentence_order = seed, short_seq_prob, sentence_order
    self.doc, self.instance = 0, 0
    self._setup_cache()
    # A document's instances depend on its stream position alone: workers can make them ahead.
    self._chunks = _Chunks(functools.partial(_instances_of, self), 1, len(stream), workers)

  def _setup_cache(self):
    # Random B segments revisit documents; books are slow to split into sentences.
    self._sentences = functools.lru_cache(maxsize=256)(lambda i: split_sentences(self.stream.source[i]))

  def __getstate__(self):   # what a worker needs to make instances: no cache, no worker pool
    return {k: v for k, v in self.__dict__.items() if k not in ("_sentences", "_chunks")}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._setup_cache()

  def get_state(self):
    return {"doc": self.doc, "instance": self.instance}

  def set_state(self, state):
    self.doc, self.instance = int(state["doc"]), int(state["instance"])

  def _encode(self, sentences):
    return [ids for ids in self.tok.encode_batch(sentences) if ids]

  def _random_segment(self, rng, own_index: int, target: int) -> list[int]:
    n = len(self.stream.source)
    for _ in range(10):  # another document, as BERT does; a 1-document split has to reuse itself
      other = rng.randrange(n)
      if other != own_index or n == 1:
        break
    sentences = self._sentences(other)
    start = rng.randrange(len(sentences)) if sentences else 0
    tokens, end = [], start
    while end < len(sentences) and len(tokens) < target:  # tokenize only what is needed: documents can be books
      for ids in self._encode(sentences[end:end + 8]):
        tokens.extend(ids)
      end += 8
    return tokens

  def _make_instances(self, j: int) -> list[tuple[list[int], list[int], int]]:
    g, own_index = self.stream.global_position(j), self.stream.source_index(j)
    rng = random.Random(f"{self.seed}/{g}")
    sentences = self._encode(self._sentences(own_index))
    max_tokens = self.seq_len - 3
    target = rng.randint(2, max_tokens) if rng.random() < self.short_seq_prob else max_tokens
    instances, chunk, length, i = [], [], 0, 0
    while i < len(sentences):
      chunk.append(sentences[i])
      length += len(sentences[i])
      if i == len(sentences) - 1 or length >= target:
        is_next = int(rng.random() < 0.5) or int(self.sentence_order)
        if is_next and len(chunk) == 1 and i + 1 < len(sentences):
          # BERT would make this a random pair; taking the next sentence keeps labels near 50/50
          # on text whose sentences are long (code, tables).
          i += 1
          chunk.append(sentences[i])
        if is_next and len(chunk) == 1:  # a document's last sentence, alone: no true pair, and a forced
          chunk, length = [], 0         # random one would tilt the labels, so it is left out
          i += 1
          continue
        a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
        a = [t for s in chunk[:a_end] for t in s]
        if not is_next:
          b = self._random_segment(rng, own_index, max(1, target - len(a)))
          i -= len(chunk) - a_end  # the unused sentences start the next instance
        else:
          b = [t for s in chunk[a_end:] for t in s]
        truncate_pair(a, b, max_tokens, rng)
        label = is_next
        if self.sentence_order and rng.random() < 0.5:
          a, b, label = b, a, 0
        if a and b:
          instances.append((a, b, label))   # token lists: cheap to send from a worker; rows are built on use
        chunk, length = [], 0
        target = rng.randint(2, max_tokens) if rng.random() < self.short_seq_prob else max_tokens
      i += 1
    return instances

  def _row(self, a, b, is_next):
    tok = self.tok
    ids = [tok.cls_id] + a + [tok.sep_id] + b + [tok.sep_id]
    n = len(ids)
    row = self.empty_row()
    row["input_ids"][:n] = ids
    row["token_type_ids"][len(a) + 2:n] = 1
    row["attention_mask"][:n] = 1
    row["nsp_label"] = np.int32(is_next)
    row["word_start"][:n] = np.concatenate([[True], tok.word_starts(a), [True], tok.word_starts(b), [True]])
    return row

  def empty_row(self):
    L = self.seq_len
    return {"input_ids": np.full(L, self.tok.pad_id, np.int32), "token_type_ids": np.zeros(L, np.int32),
            "attention_mask": np.zeros(L, np.int32), "nsp_label": np.int32(0), "word_start": np.zeros(L, bool)}

  def next_row(self):
    while self.doc < len(self.stream):
      instances = self._chunks(self.doc)
      if self.instance < len(instances):
        self.instance += 1
        return self._row(*instances[self.instance - 1])
      self.doc, self.instance = self.doc + 1, 0
    return None


def _instances_of(rows: PairRows, c: int) -> list[list[tuple]]:
  return [rows._make_instances(c)]   # chunks of one document: a book alone makes many instances


class ClassificationRows:
  """Text (or text pair) + label rows: [CLS] a [SEP] (b [SEP]), truncated to seq_len and padded."""

  def __init__(self, stream: _DocStream, tokenizer, seq_len: int):
    self.stream, self.tok, self.seq_len = stream, tokenizer, seq_len
    self.index = 0

  def get_state(self):
    return {"doc": self.index}

  def set_state(self, state):
    self.index = int(state["doc"])

  def empty_row(self):
    L = self.seq_len
    return {"input_ids": np.full(L, self.tok.pad_id or 0, np.int32), "token_type_ids": np.zeros(L, np.int32),
            "attention_mask": np.zeros(L, np.int32), "label": np.int32(0)}

  def next_row(self):
    if self.index >= len(self.stream):
      return None
    example = self.stream.source[self.stream.source_index(self.index)]
    self.index += 1
    text, pair, label = example["text"], example.get("text_pair"), example["label"]
    tok, L = self.tok, self.seq_len
    cls = [tok.cls_id] if tok.cls_id is not None else []
    sep = [tok.sep_id] if tok.sep_id is not None else []
    a = tok.encode(text)
    b = tok.encode(pair) if pair is not None else []
    budget = L - len(cls) - len(sep) * (2 if pair is not None else 1)
    while len(a) + len(b) > budget:  # trim the longer side from the end: deterministic
      (a if len(a) >= len(b) else b).pop()
    ids = cls + a + sep + (b + sep if pair is not None else [])
    row = self.empty_row()
    row["input_ids"][:len(ids)] = ids
    row["token_type_ids"][len(cls) + len(a) + len(sep):len(ids)] = 1
    row["attention_mask"][:len(ids)] = 1
    row["label"] = np.int32(label)
    return row


class PrebuiltRows:
  """Rows built ahead by a task (QA windows, prompt -> target rows), read in the stream's order;
  padding rows are all zeros, which every task objective weights out."""

  def __init__(self, stream: _DocStream):
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


# Row layouts by name; each objective names the one it reads (objectives/*.py: `batch=`).
ROWS = {"clm": LMRows, "pairs": PairRows, "sop_pairs": PairRows, "classification": ClassificationRows,
        "features": PrebuiltRows, "stream": StreamRows}
# data.layout: a layout that replaces an objective's own, and the one it replaces.
LAYOUTS = {"stream": "clm"}


class BatchIterator:
  """Stacks rows into batches of `rows_per_batch`; a finite (eval) stream ends with a padded last batch."""

  def __init__(self, rows, rows_per_batch: int, identity: dict, num_batches: int = 0):
    self.rows, self.rows_per_batch, self.identity = rows, rows_per_batch, identity
    self.num_batches, self.batches = num_batches, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.num_batches and self.batches >= self.num_batches:
      raise StopIteration
    rows = []
    for _ in range(self.rows_per_batch):
      row = self.rows.next_row()
      if row is None:
        break
      rows.append(row)
    if not rows and not self.num_batches:
      raise StopIteration
    # With num_batches set, a shard that runs out pads to the end, so every process makes the same number of steps.
    rows += [self.rows.empty_row() for _ in range(self.rows_per_batch - len(rows))]
    self.batches += 1
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}  # rows[0]: a row or a padding row

  def close(self) -> None:
    """Stops the worker processes, if any (they also stop when the iterator is collected or at exit)."""
    for part in vars(self.rows).values():
      if isinstance(part, _Chunks):
        part.close()

  def get_state(self) -> dict:
    return {**self.identity, **self.rows.get_state(), "batches": self.batches}

  def set_state(self, state: dict) -> None:
    mismatch = {k: (state.get(k), v) for k, v in self.identity.items() if state.get(k) != v}
    if mismatch:
      raise UserError(f"data state was saved by a different pipeline: (saved, now) = {mismatch}")
    self.rows.set_state(state)
    self.batches = int(state["batches"])


def reshard_state(states: list[dict], shard_index: int, shard_count: int) -> dict:
  """Iterator state for shard `shard_index` of `shard_count`, from the states of a run with a
  different process count: every shard continues after the furthest document any old shard
  had reached. No document is read twice; the few in flight at the save are skipped.
  A stream's batches do not depend on the process count: it continues at the next global batch."""
  if states[0]["kind"] == "stream":
    return {**states[0], "shard_index": shard_index, "shard_count": shard_count,
            "window": states[0]["batches"] * (states[0]["batch_size"] // shard_count)}
  frontier = max(s["shard_index"] + s["doc"] * s["shard_count"] for s in states) + 1
  return {**states[0], "shard_index": shard_index, "shard_count": shard_count,
          "doc": -(-(frontier - shard_index) // shard_count), "offset": 0, "instance": 0}


def make_iterator(kind: str, source, tokenizer, *, seq_len: int, batch_size: int, seed: int = 0,
                  shard_index: int = 0, shard_count: int = 1, train: bool = True, short_seq_prob: float = 0.1,
                  num_batches: int = 0, workers: int = 0) -> BatchIterator:
  """Batches of `kind` (a key of ROWS) from `source` (len() and [i]: documents as str; for
  classification dicts with text, optional text_pair and label; for features, rows built ahead).

  batch_size is global: this process gets batch_size // shard_count rows of each batch. train=True
  shuffles and repeats forever; train=False is one pass in order. num_batches > 0 stops after that many.
  workers > 0 tokenizes (clm, pairs) in that many grain worker processes: the same batches, sooner.
  A "stream" reads `source` as one token stream (StreamRows): random windows when training or
  when num_batches > 0, else one ordered pass.
  """
  if batch_size % shard_count:
    raise UserError(f"data.batch_size {batch_size} is not divisible by the {shard_count} processes")
  if kind not in ROWS:
    raise UserError(f"unknown batch kind {kind!r}; use one of {sorted(ROWS)}")
  if kind == "stream":
    rows = StreamRows(source, tokenizer, seq_len, seed=seed, shard_index=shard_index, shard_count=shard_count,
                      batch_size=batch_size, train=train, random=train or num_batches > 0)
    identity = dict(kind=kind, seed=seed, shard_index=shard_index, shard_count=shard_count, seq_len=seq_len,
                    batch_size=batch_size, train=train, documents=len(source), tokens=len(rows.tokens))
    return BatchIterator(rows, batch_size // shard_count, identity, num_batches)
  stream = _DocStream(source, seed=seed, shard_index=shard_index, shard_count=shard_count, train=train)
  if kind in ("pairs", "sop_pairs"):
    rows = PairRows(stream, tokenizer, seq_len, seed=seed, short_seq_prob=short_seq_prob,
                    sentence_order=kind == "sop_pairs", workers=workers)
  elif kind == "clm":
    rows = LMRows(stream, tokenizer, seq_len, workers=workers)
  elif kind == "features":
    rows = PrebuiltRows(stream)
  else:
    rows = ROWS[kind](stream, tokenizer, seq_len)
  identity = dict(kind=kind, seed=seed, shard_index=shard_index, shard_count=shard_count, seq_len=seq_len,
                  batch_size=batch_size, train=train, documents=len(source))
  return BatchIterator(rows, batch_size // shard_count, identity, num_batches)


def iterator_from_config(cfg, tokenizer, split: str = "train", *, kind: str, source=None, process_index: int = 0,
                         process_count: int = 1, num_batches: int = 0) -> BatchIterator:
  """The training loop's entry point: cfg.data -> batches of `kind` from one split.

  `split` is "train", "eval" (data.train_split / data.eval_split) or a split's own name; the train
  split is shuffled and endless, any other is one ordered pass (or num_batches). `source(split_name)`
  gives what to read (a task's examples or rows); by default the corpus that cfg.data names.
  data.layout, when set, replaces the objective's layout `kind` (LAYOUTS says which it may replace).
  """
  from lmjax.data import sources
  data = cfg.data
  layout = data.get("layout", "")
  if layout:
    if layout not in LAYOUTS:
      raise UserError(f"data.layout={layout!r} is not one of {sorted(LAYOUTS)} (or '' for the objective's own)")
    if kind != LAYOUTS[layout]:
      raise UserError(f"data.layout={layout!r} makes rows for objectives that read {LAYOUTS[layout]!r} rows "
                      f"(a causal LM), not {kind!r} rows; set data.layout='' or objective.name='clm'")
    kind = layout
  split_name = data.train_split if split == "train" else (data.eval_split if split == "eval" else split)
  docs = source(split_name) if source is not None else sources.source_from_config(data, split_name)
  return make_iterator(kind, docs, tokenizer, seq_len=data.seq_len, batch_size=data.batch_size,
                       seed=cfg.get("seed", 0), shard_index=process_index, shard_count=process_count,
                       train=split_name == data.train_split, short_seq_prob=data.get("short_seq_prob", 0.1),
                       num_batches=num_batches, workers=data.get("workers", 0) if split_name == data.train_split else 0)
