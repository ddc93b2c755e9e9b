"""Tokenizers: our own sentencepiece models, characters (nanoGPT's shakespeare_char), and imported
Hugging Face ones (WordPiece, GPT-2 BPE).

All kinds share one small duck-typed interface: vocab_size, pad_id, unk_id, cls_id, sep_id, mask_id,
bos_id, eos_id (None where a tokenizer has no such token), special_ids, encode, encode_batch, decode,
id_to_piece, word_starts.

Our sentencepiece models reserve the same ids whatever their type, so a BERT and a GPT trained on one
tokenizer agree: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 <s>=5 </s>=6, then "\n" as a piece of its own.
They keep text exactly (identity normalization, no whitespace collapsing, newline piece, byte
fallback), so decode(encode(text)) == text for any text when byte_fallback is on, except that
sentencepiece's own space mark U+2581 '▁' in the input comes back as a space.
Character tokenizers (`tokenizer.model_type="char"`) are nanoGPT's data/shakespeare_char/prepare.py:
the vocabulary is the sorted set of the characters of the training text, id i = the i-th of them, and
nothing else: no special ids (all None), so a char model's ids are nanoGPT's (65 for Shakespeare,
'\n' = 0, ' ' = 1, ...). decode(encode(text)) == text for every text made of those characters; a
character outside the vocabulary is an error naming it, never a silent [UNK], so a round trip is exact.
Saved as WORKDIR/tokenizer.chars.json ({"type": "char", "chars": [...]}).
Tokenizer files are read and written through `etils.epath`, so a workdir may be a `gs://` URL.
"""
import io
import json
import logging
import os
import random
import re

import numpy as np
import sentencepiece as spm

from lmjax import paths
from lmjax.errors import UserError

MODEL_TYPES = ("unigram", "bpe", "char")   # tokenizer.model_type: sentencepiece's two, or characters
RESERVED = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>")
NEWLINE = "\n"
MAX_SENTENCE_CHARS = 4000   # sentencepiece skips training "sentences" longer than max_sentence_length bytes

log = logging.getLogger(__name__)


class SentencePieceTokenizer:
  """A sentencepiece model with the reserved ids above."""

  def __init__(self, model_path: str):
    self.path = model_path
    self.sp = spm.SentencePieceProcessor(model_proto=paths.path(model_path).read_bytes())
    ids = [self.sp.piece_to_id(p) for p in RESERVED]
    if ids != list(range(len(RESERVED))):
      raise UserError(f"{model_path} does not reserve ids 0..6 for {RESERVED}; retrain it with lmjax tokenizer train")
    self.vocab_size = self.sp.get_piece_size()
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id, self.bos_id, self.eos_id = ids
    self.special_ids = tuple(ids)
    # Pieces after which the next piece begins a word even without a '▁' (newline, controls, bytes).
    self._starts_after = np.zeros(self.vocab_size + 1, bool)
    self._is_start = np.zeros(self.vocab_size, bool)
    for i in range(self.vocab_size):
      piece = self.sp.id_to_piece(i)
      self._is_start[i] = piece.startswith("\u2581") or i in self.special_ids or piece == NEWLINE
      self._starts_after[i] = i in self.special_ids or piece == NEWLINE
    self._starts_after[self.vocab_size] = True  # the position before the first piece

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def encode_batch(self, texts) -> list[list[int]]:
    return self.sp.encode(list(texts), num_threads=os.cpu_count() or 1)

  def decode(self, ids) -> str:
    return self.sp.decode([int(i) for i in ids if i != self.pad_id])

  def id_to_piece(self, i: int) -> str:
    return self.sp.id_to_piece(int(i))

  def word_starts(self, ids) -> np.ndarray:
    ids = np.asarray(ids, np.int64)
    prev = np.concatenate([[self.vocab_size], ids[:-1]])
    return self._is_start[ids] | self._starts_after[prev]


class HFTokenizer:
  """An imported Hugging Face tokenizer (`tokenizers` package): BERT WordPiece or GPT-2 byte-level BPE."""

  def __init__(self, tok, path: str):
    # A saved tokenizer.json may carry its pipeline's padding/truncation; lmjax pads itself.
    tok.no_padding()
    tok.no_truncation()
    self.path, self.tok = path, tok
    self.vocab_size = tok.get_vocab_size()
    find = tok.token_to_id
    self.wordpiece = type(tok.model).__name__ == "WordPiece"
    if self.wordpiece:
      self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
          find("[PAD]"), find("[UNK]"), find("[CLS]"), find("[SEP]"), find("[MASK]"))
      self.bos_id = self.eos_id = None
    else:  # GPT-2: one <|endoftext|> token serves as BOS, EOS and padding
      eot = find("<|endoftext|>")
      self.pad_id = self.bos_id = self.eos_id = eot
      self.unk_id = self.cls_id = self.sep_id = self.mask_id = None
    self.special_ids = tuple(sorted({i for i in (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id,
                                                  self.bos_id, self.eos_id) if i is not None}))
    pieces = [tok.id_to_token(i) or "" for i in range(self.vocab_size)]
    specials = set(self.special_ids)
    if self.wordpiece:
      self._is_start = np.array([not p.startswith("##") for p in pieces])
    else:  # byte-level BPE marks a leading space with 'Ġ' and a newline with 'Ċ'
      self._is_start = np.array([p[:1] in ("\u0120", "\u010a") or i in specials for i, p in enumerate(pieces)])

  @classmethod
  def from_dir(cls, tok_dir: str):
    import tokenizers
    d = paths.path(tok_dir)
    if (d / "tokenizer.json").exists():
      return cls(tokenizers.Tokenizer.from_str((d / "tokenizer.json").read_text()), tok_dir)
    if (d / "vocab.json").exists() and (d / "merges.txt").exists():
      return cls(gpt2_bpe(d), tok_dir)
    lowercase = True
    if (d / "tokenizer_config.json").exists():
      lowercase = json.loads((d / "tokenizer_config.json").read_text()).get("do_lower_case", True)
    vocab = {piece: i for i, piece in enumerate((d / "vocab.txt").read_text(encoding="utf-8").splitlines())}
    wp = tokenizers.BertWordPieceTokenizer(vocab, lowercase=lowercase)
    return cls(wp._tokenizer, tok_dir)

  def encode(self, text: str) -> list[int]:
    return self.tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts) -> list[list[int]]:
    return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids) -> str:
    return self.tok.decode([int(i) for i in ids if i != self.pad_id], skip_special_tokens=False)

  def id_to_piece(self, i: int) -> str:
    return self.tok.id_to_token(int(i))

  def word_starts(self, ids) -> np.ndarray:
    ids = np.asarray(ids, np.int64)
    starts = self._is_start[ids]
    if len(starts):
      starts[0] = True
    return starts


class CharTokenizer:
  """One id per character, from a sorted character list (nanoGPT's stoi/itos); no special ids."""

  def __init__(self, chars, path: str = ""):
    chars = list(chars)
    if not chars or any(len(c) != 1 for c in chars) or chars != sorted(set(chars)):
      raise UserError(f"{path or 'a char tokenizer'}: its characters must be distinct, sorted and single; "
                      "rebuild it with lmjax tokenizer train")
    self.path, self.chars = path, chars
    self.vocab_size = len(chars)
    self.pad_id = self.unk_id = self.cls_id = self.sep_id = self.mask_id = self.bos_id = self.eos_id = None
    self.special_ids = ()
    self._ids = np.full(max(map(ord, chars)) + 2, -1, np.int32)   # code point -> id; -1: not in the vocabulary
    self._ids[[ord(c) for c in chars]] = np.arange(len(chars))
    self._chars = np.array(chars)
    self._space = np.array([c.isspace() for c in chars] + [True])  # + the position before the first char

  @classmethod
  def from_text(cls, texts, path: str = ""):
    """The sorted set of the characters of `texts` (an iterable of str), as prepare.py builds it."""
    seen = set()
    for text in texts:
      seen.update(text)
    return cls(sorted(seen), path)

  @classmethod
  def load(cls, path: str):
    spec = json.loads(paths.path(path).read_text(encoding="utf-8"))
    if spec.get("type") != "char":
      raise UserError(f"{path} is not a char tokenizer (type {spec.get('type')!r})")
    return cls(spec["chars"], path)

  def save(self, path: str):
    path = paths.path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")   # written whole, then renamed
    tmp.write_text(json.dumps({"type": "char", "chars": self.chars}), encoding="utf-8")
    tmp.replace(path)
    self.path = str(path)
    return self

  def encode_array(self, text: str) -> np.ndarray:
    """ids of `text` as int32, vectorised: a megabyte of text in milliseconds."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    ids = self._ids[np.minimum(codes, len(self._ids) - 1)]   # the last slot is -1: past every char
    bad = ids < 0
    if bad.any():
      unknown = sorted({chr(c) for c in codes[bad]})
      raise UserError(f"characters {''.join(unknown[:20])!r} are not in the char tokenizer's vocabulary "
                      f"({self.vocab_size} characters of its training text); a char model cannot read them")
    return ids

  def encode(self, text: str) -> list[int]:
    return self.encode_array(text).tolist()

  def encode_batch(self, texts) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    return "".join(self._chars[np.asarray(ids, np.int64)].tolist()) if len(ids) else ""

  def id_to_piece(self, i: int) -> str:
    return self.chars[int(i)]

  def word_starts(self, ids) -> np.ndarray:
    """A character begins a word unless it and the one before it are both non-whitespace
    (each whitespace character counts as a word of its own, as sentencepiece's newline piece)."""
    ids = np.asarray(ids, np.int64)
    prev = np.concatenate([[self.vocab_size], ids[:-1]])
    return self._space[ids] | self._space[prev]


def gpt2_bpe(d):
  """GPT-2's byte-level BPE from vocab.json + merges.txt, built as transformers' GPT2TokenizerFast
  builds it (no prefix space, GPT-2's split regex) with <|endoftext|> kept whole."""
  import tokenizers
  vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
  lines = (d / "merges.txt").read_text(encoding="utf-8").splitlines()
  merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges, fuse_unk=False))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  if "<|endoftext|>" in vocab:
    tok.add_special_tokens([tokenizers.AddedToken("<|endoftext|>", special=True)])
  return tok


CHAR_FILE = "tokenizer.chars.json"
HF_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")   # any one marks an imported HF tokenizer


def has_tokenizer(workdir: str) -> bool:
  w = paths.path(workdir)
  return (w / "tokenizer.model").exists() or (w / CHAR_FILE).exists() or any((w / "tokenizer" / f).exists() for f in HF_FILES)


def load_tokenizer(workdir: str):
  """WORKDIR/tokenizer.model (ours), WORKDIR/tokenizer.chars.json (characters), else
  WORKDIR/tokenizer/{tokenizer.json, vocab.txt, vocab.json + merges.txt} (imported HF)."""
  w = paths.path(workdir)
  if (w / "tokenizer.model").exists():
    return SentencePieceTokenizer(str(w / "tokenizer.model"))
  if (w / CHAR_FILE).exists():
    return CharTokenizer.load(str(w / CHAR_FILE))
  if any((w / "tokenizer" / f).exists() for f in HF_FILES):
    return HFTokenizer.from_dir(str(w / "tokenizer"))
  raise UserError(f"no tokenizer in {workdir}: expected tokenizer.model or tokenizer/vocab.txt; "
                  f"run `lmjax tokenizer train --workdir {workdir}`")


def check_vocab(model_vocab_size: int, tokenizer) -> None:
  if model_vocab_size != tokenizer.vocab_size:
    raise UserError(f"model.vocab_size {model_vocab_size} != tokenizer's {tokenizer.vocab_size}; "
                    f"set model.vocab_size={tokenizer.vocab_size} or retrain the tokenizer with that size")


def _training_lines(texts, sample_chars: int):
  """Documents cut into lines of at most MAX_SENTENCE_CHARS, newlines kept (they are a piece we learn)."""
  total = 0
  for text in texts:
    for start in range(0, len(text), MAX_SENTENCE_CHARS):
      line = text[start:start + MAX_SENTENCE_CHARS]
      yield line
      total += len(line)
      if total >= sample_chars:
        return


def train(texts, model_path: str, *, vocab_size: int, model_type: str = "unigram", byte_fallback: bool = True,
          character_coverage: float = 0.9995, sample_chars: int = 20_000_000):
  """Trains a sentencepiece model on `texts` (an iterable of documents) and writes it to model_path."""
  if model_type not in ("unigram", "bpe"):
    raise UserError(f"tokenizer.model_type={model_type!r}; use 'unigram', 'bpe' or 'char'")
  min_vocab = len(RESERVED) + 1 + (256 if byte_fallback else 0)
  if vocab_size <= min_vocab:
    raise UserError(f"tokenizer.vocab_size {vocab_size} is too small: the reserved, newline"
                    f"{' and 256 byte' if byte_fallback else ''} pieces alone take {min_vocab}")
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_training_lines(texts, sample_chars), model_writer=model,
        vocab_size=vocab_size, model_type=model_type, byte_fallback=byte_fallback,
        character_coverage=character_coverage,
        pad_id=0, unk_id=1, bos_id=5, eos_id=6, pad_piece="[PAD]", unk_piece="[UNK]", bos_piece="<s>",
        eos_piece="</s>", control_symbols=["[CLS]", "[SEP]", "[MASK]"], user_defined_symbols=[NEWLINE],
        # Keep text exactly as written, so decode(encode(x)) == x.
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        max_sentence_length=4 * MAX_SENTENCE_CHARS, input_sentence_size=0, num_threads=os.cpu_count() or 1,
        hard_vocab_limit=True, minloglevel=2)
  except RuntimeError as e:
    hint = re.search(r"Vocabulary size too high.*?<= ?(\d+)", str(e))
    if hint:
      raise UserError(f"corpus too small for tokenizer.vocab_size={vocab_size}: sentencepiece finds at most "
                      f"{hint.group(1)} pieces in it; lower tokenizer.vocab_size or train on more text") from None
    raise
  path = paths.path(model_path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")   # written whole, then renamed: a kill leaves no half a model
  tmp.write_bytes(model.getvalue())
  tmp.replace(path)
  return SentencePieceTokenizer(str(path))


def sample_documents(source, sample_chars: int, seed: int = 0):
  """Documents of `source` in a seeded random order, until about sample_chars characters."""
  order = list(range(len(source)))
  random.Random(seed).shuffle(order)
  total = 0
  for i in order:
    if total >= sample_chars:
      return
    doc = source[i]
    total += len(doc)
    yield doc


def train_from_config(cfg, workdir: str):
  """`lmjax tokenizer train`: builds the tokenizer of cfg.tokenizer from the train split of cfg.data,
  once: WORKDIR/tokenizer.model (sentencepiece) or WORKDIR/tokenizer.chars.json (model_type "char")."""
  from lmjax.data import sources
  t = cfg.tokenizer
  if t.model_type == "char":
    return _chars_from_config(cfg, workdir)
  model_path = str(paths.path(workdir) / "tokenizer.model")
  if paths.path(model_path).exists():
    tok = SentencePieceTokenizer(model_path)
    print(f"tokenizer: reusing {model_path} ({tok.vocab_size} pieces)")
    return tok
  source = sources.source_from_config(cfg.data, cfg.data.train_split)
  tok = train(sample_documents(source, t.sample_chars, cfg.get("seed", 0)), model_path,
              vocab_size=t.vocab_size, model_type=t.model_type, byte_fallback=t.byte_fallback,
              character_coverage=t.character_coverage, sample_chars=t.sample_chars)
  print(f"tokenizer: trained {t.model_type} with {tok.vocab_size} pieces on {source}, saved {model_path}")
  return tok


def _chars_from_config(cfg, workdir: str):
  """The characters of the whole train split (not a sample: a character seen only in a sample's
  complement could not be encoded); tokenizer.vocab_size must name their count."""
  from lmjax.data import sources
  path = str(paths.path(workdir) / CHAR_FILE)
  if paths.path(path).exists():
    tok = CharTokenizer.load(path)
    print(f"tokenizer: reusing {path} ({tok.vocab_size} characters)")
    return tok
  source = sources.source_from_config(cfg.data, cfg.data.train_split)
  tok = CharTokenizer.from_text(source[i] for i in range(len(source)))
  if tok.vocab_size != cfg.tokenizer.vocab_size:
    raise UserError(f"the train split of {source} has {tok.vocab_size} distinct characters, tokenizer.vocab_size "
                    f"says {cfg.tokenizer.vocab_size}; set tokenizer.vocab_size and model.vocab_size to {tok.vocab_size}")
  tok.save(path)
  print(f"tokenizer: {tok.vocab_size} characters of {source}, saved {path}")
  return tok
