"""Data: tokenizer round trips, corpora through TFDS, and pipeline properties (packing, pairs, resume, shards)."""
import importlib.util
import json
import os
import pathlib
import shutil

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lmjax.data import pipeline, sources, tokenizer
from lmjax.errors import UserError

DEFAULT_CHARS = 400_000   # a slice of the default corpus keeps the module fast; the CLI builds it all
VOCAB = 1000


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def default_train(data_dir):
  return sources.open_source("default", "train", data_dir=data_dir, max_chars=DEFAULT_CHARS)


@pytest.fixture(scope="module")
def tok(default_train, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
  return tokenizer.train(tokenizer.sample_documents(default_train, 10_000_000), path, vocab_size=VOCAB)


def write_corpus(root: pathlib.Path, docs: list[str]) -> str:
  root.mkdir(parents=True, exist_ok=True)
  for i, doc in enumerate(docs):
    (root / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
  return str(root)


def small_docs(n=40):
  rng = np.random.default_rng(0)
  words = "the cat sat on a mat while rain fell over old grey towns and rivers".split()
  docs = []
  for i in range(n):
    sentences = [" ".join(rng.choice(words, rng.integers(3, 12))).capitalize() + "." for _ in range(rng.integers(1, 12))]
    docs.append(f"Document {i}. " + " ".join(sentences))
  return docs


@pytest.fixture(scope="module")
def small(tmp_path_factory, data_dir):
  path = write_corpus(tmp_path_factory.mktemp("small"), small_docs())
  return sources.open_source("local", "train", path=path, data_dir=data_dir)


def gpt_tiny_config(data_dir, **data):
  spec = importlib.util.spec_from_file_location("gpt_tiny", pathlib.Path(__file__).parent.parent / "experiments/gpt_tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  cfg.data.data_dir = data_dir
  cfg.data.max_chars = DEFAULT_CHARS
  cfg.tokenizer.vocab_size = VOCAB
  cfg.data.update(data)
  return cfg


# ------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_reserved_ids_and_exact_round_trip(tok, default_train, shared_data):
  assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.bos_id, tok.eos_id] == list(range(7))
  assert [tok.id_to_piece(i) for i in range(7)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]
  assert tok.vocab_size == VOCAB
  alice = (shared_data / "gutenberg/pg11.txt").read_text(encoding="utf-8-sig")[:30_000]
  assert "\n\n" in alice and "  " in default_train[0] + alice
  for text in [alice, default_train[0], default_train[1], "  two  spaces\n\n\tTab\r\nend \n"]:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode([tok.pad_id] + ids + [tok.pad_id] * 3) == text  # padding is skipped
  assert [tok.decode(ids) for ids in tok.encode_batch(["a\nb", "é ☃ 中文"])] == ["a\nb", "é ☃ 中文"]


# U+2581 is sentencepiece's own space mark: it decodes as " " (documented in tokenizer.py).
@hypothesis.given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"), max_size=200))
@hypothesis.settings(max_examples=200, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_tokenizer_round_trips_any_text(tok, text):
  assert tok.decode(tok.encode(text)) == text


def test_word_starts(tok):
  ids = tok.encode("Unbelievable results\nfollowed quickly")
  starts = tok.word_starts(ids)
  pieces = [tok.id_to_piece(i) for i in ids]
  assert starts[0]
  assert all(s == (p.startswith("\u2581") or p == "\n" or prev == "\n")
             for s, p, prev in zip(starts, pieces, [None] + pieces[:-1]))
  words = "".join(("|" if s else "") + p for s, p in zip(starts, pieces)).replace("\u2581", " ").split("|")
  assert [w.strip() for w in words if w.strip()] == ["Unbelievable", "results", "followed", "quickly"]


def test_train_from_config_trains_once_and_is_reused(data_dir, tmp_path):
  cfg = gpt_tiny_config(data_dir)
  first = tokenizer.train_from_config(cfg, str(tmp_path))
  mtime = os.stat(tmp_path / "tokenizer.model").st_mtime_ns
  second = tokenizer.train_from_config(cfg, str(tmp_path))
  assert os.stat(tmp_path / "tokenizer.model").st_mtime_ns == mtime
  assert first.encode("import os") == second.encode("import os") == tokenizer.load_tokenizer(str(tmp_path)).encode("import os")


def test_vocab_mismatch_is_an_error(tok):
  tokenizer.check_vocab(VOCAB, tok)
  with pytest.raises(UserError, match=f"model.vocab_size 4096 != tokenizer's {VOCAB}"):
    tokenizer.check_vocab(4096, tok)


def test_corpus_too_small_for_vocab(tmp_path):
  with pytest.raises(UserError, match="corpus too small for tokenizer.vocab_size=5000"):
    tokenizer.train(["The cat sat on the mat.\nThe dog did not."] * 20, str(tmp_path / "t.model"), vocab_size=5000)
  assert not os.path.exists(tmp_path / "t.model")


def test_load_missing_tokenizer(tmp_path):
  with pytest.raises(UserError, match="no tokenizer in"):
    tokenizer.load_tokenizer(str(tmp_path))


def test_hf_wordpiece_vocab(tmp_path):
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "un", "##believ", "##able", "."]
  (tmp_path / "tokenizer").mkdir()
  (tmp_path / "tokenizer/vocab.txt").write_text("\n".join(vocab) + "\n")
  hf = tokenizer.load_tokenizer(str(tmp_path))
  assert (hf.pad_id, hf.unk_id, hf.cls_id, hf.sep_id, hf.mask_id, hf.bos_id) == (0, 1, 2, 3, 4, None)
  ids = hf.encode("The cat Unbelievable.")  # uncased by default
  assert [hf.id_to_piece(i) for i in ids] == ["the", "cat", "un", "##believ", "##able", "."]
  assert hf.word_starts(ids).tolist() == [True, True, True, False, False, True]
  assert hf.decode(ids + [0]) == "the cat unbelievable."


# ------------------------------------------------------------------------------------------- sources


def test_default_corpus_splits(data_dir, default_train):
  val = sources.open_source("default", "validation", data_dir=data_dir, max_chars=DEFAULT_CHARS)
  assert len(val) >= 1 and len(default_train) > 50 * len(val) / 2
  assert not {default_train[i] for i in range(len(default_train))} & {val[i] for i in range(len(val))}
  assert sum(len(default_train[i]) for i in range(len(default_train))) >= DEFAULT_CHARS * 0.9


def test_local_builder_is_readable_by_name_and_reused(shared_data, data_dir, tmp_path):
  path = str(tmp_path / "books")
  os.mkdir(path)
  for book in ["pg11.txt", "pg74.txt", "pg120.txt"]:
    os.symlink(shared_data / "gutenberg" / book, os.path.join(path, book))
  name = sources.prepare_local(path, data_dir=data_dir)
  info = pathlib.Path(data_dir, name, "1.0.0", "dataset_info.json")
  mtime = info.stat().st_mtime_ns
  assert sources.prepare_local(path, data_dir=data_dir) == name and info.stat().st_mtime_ns == mtime
  by_name = tfds.data_source(name, split="train", data_dir=data_dir)
  via_source = sources.open_source("local", "train", path=path, data_dir=data_dir)
  docs = sorted(via_source[i] for i in range(len(via_source)))
  assert docs == sorted(r["text"].decode() for r in by_name)
  assert len(docs) == 2 and not any(d.startswith("\ufeff") for d in docs)  # one book went to validation; BOM gone
  assert sources.corpus_stats(name, data_dir)["documents"] == 3
  os.symlink(shared_data / "gutenberg/pg174.txt", os.path.join(path, "pg174.txt"))  # a changed corpus is rebuilt
  assert sources.prepare_local(path, data_dir=data_dir) != name


def test_non_utf8_zip_members_are_counted(shared_data, data_dir):
  name = sources.prepare_local(str(shared_data / "speeches/state_union.zip"), data_dir=data_dir)
  stats = sources.corpus_stats(name, data_dir)
  assert stats["documents"] == 65 and stats["non_utf8_files"] == 6 and stats["replaced_chars"] > 0
  train = sources.TextSource(name, "train", data_dir=data_dir)
  assert any("\ufffd" in train[i] for i in range(len(train)))


def test_jsonl_field_empty_docs_and_huge_line(tmp_path, data_dir):
  rows = [{"body": "First document."}, {"body": "   \n  "}, {"body": ""}, {"body": "x" * 10 + " word" * 1_200_000},
          {"body": "Second document.\n\nWith two paragraphs."}]
  (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
  with pytest.raises(UserError, match=r"c.jsonl:1: no field 'text' \(has \['body'\]\)"):
    sources.prepare_local(str(tmp_path / "c.jsonl"), data_dir=data_dir)
  name = sources.prepare_local(str(tmp_path / "c.jsonl"), data_dir=data_dir, text_field="body")
  stats = sources.corpus_stats(name, data_dir)
  assert stats["documents"] == 3 and stats["empty_docs"] == 2 and stats["long_line_cuts"] >= 60
  docs = [sources.TextSource(name, s, data_dir=data_dir) for s in ("train", "validation")]
  texts = [d[i] for d in docs for i in range(len(d))]
  assert max(len(line) for t in texts for line in t.split("\n")) <= sources.MAX_LINE_CHARS
  assert "".join(max(texts, key=len).split("\n")) == rows[3]["body"]  # cut, not lost


def test_txt_paragraph_documents(tmp_path):
  (tmp_path / "a.txt").write_text("One.\n\nTwo\nlines.\n \n\n\nThree.")
  docs, stats = sources.read_documents([str(tmp_path / "a.txt")], txt_docs="paragraph")
  assert docs == ["One.", "Two\nlines.", "Three."]


@pytest.mark.parametrize("make, message", [
    (lambda p: str(p / "nope"), "does not exist"),
    (lambda p: (p / "x.csv").write_text("a") and str(p), "no .txt, .jsonl or .zip files"),
    (lambda p: (p / "a.txt").write_text(" \n ") and str(p), "no non-empty documents"),
    (lambda p: (p / "a.txt").write_text("Just one.") and str(p), "only 1 document"),
    (lambda p: (p / "a.jsonl").write_text('{"text": 3}\n') and str(p), "field 'text' is int"),
    (lambda p: (p / "a.jsonl").write_text('{"text": \n') and str(p), r"a.jsonl:1: not valid JSON"),
])
def test_bad_corpora_are_user_errors(tmp_path, data_dir, make, message):
  with pytest.raises(UserError, match=message):
    sources.prepare_local(make(tmp_path), data_dir=data_dir)


def test_empty_split_and_unknown_dataset(small, data_dir):
  with pytest.raises(UserError, match="is empty"):
    sources.TextSource(small.name, "train[:0]", data_dir=data_dir)
  with pytest.raises(UserError, match="cannot open TFDS dataset 'lmjax_text/nope'"):
    sources.TextSource("lmjax_text/nope", "train", data_dir=data_dir)
  with pytest.raises(UserError, match="no field 'body'"):
    sources.TextSource(small.name, "train", data_dir=data_dir, text_field="body")


# ------------------------------------------------------------------------------------------- causal LM


def doc_tokens(source, tok):
  return {tuple(ids) for ids in tok.encode_batch([source[i] for i in range(len(source))])}


def token_stream(batches):
  """Real tokens of consecutive batches in order; rows are filled one after the other."""
  return [int(t) for b in batches for ids, seg in zip(b["input_ids"], b["segment_ids"]) for t in ids[seg > 0]]


def split_at(stream, eos):
  docs, cur = [], []
  for t in stream:
    if t == eos:
      docs.append(tuple(cur))
      cur = []
    else:
      cur.append(t)
  return docs


def check_lm_invariants(batch, seq_len):
  seg, pos = batch["segment_ids"], batch["positions"]
  for s, p in zip(seg, pos):
    real = s > 0
    if not real.any():
      continue  # an eval stream's padding row
    assert real[:real.sum()].all(), "padding only at the end of a row"
    assert s[0] == 1 and (np.diff(s[real]) >= 0).all() and (np.diff(s[real]) <= 1).all()
    starts = np.flatnonzero(np.diff(np.concatenate([[0], s[real]])) != 0)
    for a, b in zip(starts, list(starts[1:]) + [real.sum()]):
      assert (p[a:b] == np.arange(b - a)).all()


def test_lm_batches_shapes_and_invariants(default_train, tok):
  it = pipeline.make_iterator("clm", default_train, tok, seq_len=64, batch_size=8, seed=1)
  for _ in range(20):
    batch = next(it)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {k: ((8, 64), np.int32) for k in
                                                                 ("input_ids", "segment_ids", "positions")}
    assert (batch["segment_ids"] > 0).all()  # training rows are always full
    check_lm_invariants(batch, 64)


def test_lm_epochs_cover_every_token_once(small, tok):
  docs = doc_tokens(small, tok)
  n = len(small)
  it = pipeline.make_iterator("clm", small, tok, seq_len=32, batch_size=4, seed=3)
  stream = []
  while len(split_at(stream, tok.eos_id)) < 3 * n:
    stream += token_stream([next(it)])
  seen = split_at(stream, tok.eos_id)
  epochs = [seen[e * n:(e + 1) * n] for e in range(3)]
  for epoch in epochs:  # every document once per epoch, nothing in between: no gap, no duplicate
    assert sorted(epoch) == sorted(docs)
  assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_lm_shards_are_disjoint_and_cover(small, tok):
  per_shard = []
  for shard in range(2):
    it = pipeline.make_iterator("clm", small, tok, seq_len=32, batch_size=4, shard_index=shard, shard_count=2,
                                train=False)
    batches = list(it)
    assert all(b["input_ids"].shape == (2, 32) for b in batches)
    per_shard.append(split_at(token_stream(batches), tok.eos_id))
  assert not set(per_shard[0]) & set(per_shard[1])
  assert sorted(per_shard[0] + per_shard[1]) == sorted(doc_tokens(small, tok))


def test_eval_iterator_is_one_deterministic_padded_pass(small, tok):
  make = lambda: pipeline.make_iterator("clm", small, tok, seq_len=32, batch_size=4, train=False)
  first, second = list(make()), list(make())
  assert len(first) == len(second) and all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(first, second))
  assert (first[-1]["segment_ids"][-1] == 0).any()  # padded at the very end
  assert sorted(split_at(token_stream(first), tok.eos_id)) == sorted(doc_tokens(small, tok))
  assert len(list(pipeline.make_iterator("clm", small, tok, seq_len=32, batch_size=4, num_batches=3))) == 3
  padded = list(pipeline.make_iterator("clm", small, tok, seq_len=32, batch_size=4, train=False,
                                       num_batches=len(first) + 2))
  assert len(padded) == len(first) + 2 and not padded[-1]["segment_ids"].any()


@hypothesis.given(st.lists(st.integers(0, 70), min_size=1, max_size=12), st.integers(1, 40), st.integers(1, 3))
@hypothesis.settings(max_examples=60, deadline=None)
def test_lm_packing_property(lengths, seq_len, rows):
  class Tok:  # document i is tokens 10*i + (7, 8, ...); EOS = 6
    eos_id = 6

    def encode_batch(self, texts):
      return [[7 + int(t.split()[0]) * 1000 + k for k in range(int(t.split()[1]))] for t in texts]
  docs = [f"{i} {n}" for i, n in enumerate(lengths)]
  batches = list(pipeline.make_iterator("clm", docs, Tok(), seq_len=seq_len, batch_size=rows, train=False))
  for b in batches:
    check_lm_invariants(b, seq_len)
  expected = [t for d in Tok().encode_batch(docs) for t in d + [6]]
  assert token_stream(batches) == expected


# ------------------------------------------------------------------------------------------- BERT pairs


def test_bert_pairs(default_train, tok):
  it = pipeline.make_iterator("pairs", default_train, tok, seq_len=64, batch_size=16, seed=0, short_seq_prob=0.1)
  labels = []
  for _ in range(25):
    b = next(it)
    assert b["input_ids"].shape == b["token_type_ids"].shape == b["attention_mask"].shape == (16, 64)
    assert b["word_start"].dtype == bool and b["nsp_label"].shape == (16,)
    for ids, types, mask, starts in zip(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["word_start"]):
      n = mask.sum()
      assert (mask[:n] == 1).all() and (ids[n:] == tok.pad_id).all() and not starts[n:].any()
      assert ids[0] == tok.cls_id and ids[n - 1] == tok.sep_id
      seps = np.flatnonzero(ids == tok.sep_id)
      assert len(seps) == 2 and (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:n] == 1).all()
      assert (types[n:] == 0).all() and seps[0] >= 2 and seps[1] > seps[0] + 1
    labels += b["nsp_label"].tolist()
  assert 0.4 <= np.mean(labels) <= 0.6, np.mean(labels)


def pairs_and_documents(small, tok, kind):
  """([(segment A, segment B, label)] of 20 batches, each untruncated pair only; every document's
  token ids as bytes), to check a pair's text against the documents."""
  texts = [np.array([t for s in tok.encode_batch(pipeline.split_sentences(small[i])) for t in s], np.int32).tobytes()
           for i in range(len(small))]
  it = pipeline.make_iterator(kind, small, tok, seq_len=64, batch_size=8, seed=0, short_seq_prob=0.0)
  pairs, labels = [], []
  for _ in range(20):
    b = next(it)
    for ids, label in zip(b["input_ids"], b["nsp_label"]):
      labels.append(int(label))
      seps = np.flatnonzero(ids == tok.sep_id)
      if seps[1] < 64 - 3:   # else truncated: its ends may have been trimmed
        pairs.append((ids[1:seps[0]], ids[seps[0] + 1:seps[1]], int(label)))
  return pairs, labels, texts


def consecutive(first, second, texts) -> bool:
  joined = np.concatenate([first, second]).astype(np.int32).tobytes()
  return any(joined in t and t.index(joined) % 4 == 0 for t in texts)


def test_bert_next_sentences_are_consecutive(small, tok):
  pairs, _, texts = pairs_and_documents(small, tok, "pairs")
  for a, b, label in pairs:
    if label == 1:
      assert consecutive(a, b, texts)
  assert sum(label == 0 for *_, label in pairs) > 10 and sum(label == 1 for *_, label in pairs) > 10


def test_sentence_order_pairs_are_consecutive_and_swapped_half_the_time(small, tok):
  # ALBERT's SOP: both segments are consecutive text of one document; label 1 keeps the order,
  # label 0 swaps the two, in about half of the rows.
  pairs, labels, texts = pairs_and_documents(small, tok, "sop_pairs")
  for a, b, label in pairs:
    assert consecutive(a, b, texts) if label == 1 else consecutive(b, a, texts), "not consecutive"
  assert len(pairs) > 30 and 0.35 <= np.mean(labels) <= 0.65, (len(pairs), np.mean(labels))


# ------------------------------------------------------------------------------------------- resume, config


@pytest.mark.parametrize("kind", ["clm", "pairs", "sop_pairs"])
def test_resume_mid_epoch_reproduces_next_100_batches(default_train, tok, kind):
  make = lambda: pipeline.make_iterator(kind, default_train, tok, seq_len=32, batch_size=4, seed=5,
                                        shard_index=1, shard_count=2)
  it = make()
  for _ in range(37):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(100)]
  resumed = make()
  resumed.set_state(state)
  for a, b in zip(expected, [next(resumed) for _ in range(100)]):
    assert all((a[k] == b[k]).all() for k in a)
  other = pipeline.make_iterator(kind, default_train, tok, seq_len=32, batch_size=4, seed=6, shard_index=1,
                                 shard_count=2)
  with pytest.raises(UserError, match="different pipeline"):
    other.set_state(state)


def test_classification_rows(tok):
  examples = [{"text": "A fine film.", "label": 1}, {"text": "Dull " * 100, "label": 0},
              {"text": "Is it?", "text_pair": "Yes it is.", "label": 1}]
  b = next(pipeline.make_iterator("classification", examples, tok, seq_len=16, batch_size=3, train=False))
  assert b["input_ids"].shape == (3, 16) and b["label"].tolist() == [1, 0, 1]
  assert (b["input_ids"][:, 0] == tok.cls_id).all() and b["attention_mask"][1].all()
  assert tok.decode(b["input_ids"][0]) == "A fine film." and b["token_type_ids"][:2].sum() == 0
  ids, types = b["input_ids"][2], b["token_type_ids"][2]
  assert (ids == tok.sep_id).sum() == 2 and tok.decode(ids[types == 1]) == "Yes it is."


def test_iterator_from_config(data_dir, tok):
  cfg = gpt_tiny_config(data_dir, seq_len=32, batch_size=8)
  train = pipeline.iterator_from_config(cfg, tok, "train", kind="clm", process_index=1, process_count=2)
  assert next(train)["input_ids"].shape == (4, 32)
  evals = list(pipeline.iterator_from_config(cfg, tok, "eval", kind="pairs"))
  assert evals and set(evals[0]) == {"input_ids", "token_type_ids", "attention_mask", "nsp_label", "word_start"}
  cfg.data.batch_size = 7
  with pytest.raises(UserError, match="not divisible"):
    pipeline.iterator_from_config(cfg, tok, "train", kind="clm", process_count=2)


# ------------------------------------------------------------------------------------------- Shakespeare (char stream)


SHAKESPEARE = "tinyshakespeare/input.txt"


@pytest.fixture(scope="module")
def shakespeare(shared_data):
  """The file, and nanoGPT's prepare.py on it: chars = sorted(set(data)), 90/10 character split."""
  path = shared_data / SHAKESPEARE
  data = path.read_text(encoding="utf-8")
  chars = sorted(list(set(data)))
  n = len(data)
  return dict(path=str(path), data=data, stoi={ch: i for i, ch in enumerate(chars)},
              train=data[:int(n * 0.9)], val=data[int(n * 0.9):])


@pytest.fixture(scope="module")
def char_tok(shakespeare):
  return tokenizer.CharTokenizer.from_text([shakespeare["train"]])


def test_file_source_splits_as_nanogpt(shakespeare):
  train = sources.open_source("file", "train", path=shakespeare["path"])
  val = sources.open_source("file", "validation", path=shakespeare["path"])
  assert len(train) == len(val) == 1
  assert train[0] == shakespeare["train"] and val[0] == shakespeare["val"]
  assert (len(train[0]), len(val[0])) == (1_003_854, 111_540)   # prepare.py's printed counts
  assert sources.open_source("file", "train", path=shakespeare["path"], train_fraction=0.5)[0] == \
      shakespeare["data"][:len(shakespeare["data"]) // 2]
  with pytest.raises(UserError, match="splits 'train' and 'validation'"):
    sources.open_source("file", "test", path=shakespeare["path"])
  with pytest.raises(UserError, match="is not a file"):
    sources.open_source("file", "train", path=str(pathlib.Path(shakespeare["path"]).parent))


def test_char_tokenizer_is_nanogpts_and_round_trips(char_tok, shakespeare, tmp_path):
  assert char_tok.vocab_size == 65
  assert {c: char_tok.encode(c)[0] for c in char_tok.chars} == shakespeare["stoi"]   # the same ids as nanoGPT's
  assert char_tok.encode(shakespeare["val"]) == [shakespeare["stoi"][c] for c in shakespeare["val"]]
  for text in (shakespeare["train"], shakespeare["val"], "", "\n\n  O Romeo, Romeo!\n"):
    assert char_tok.decode(char_tok.encode(text)) == text
  assert [char_tok.decode(i) for i in char_tok.encode_batch(["ab", "c\n"])] == ["ab", "c\n"]
  assert char_tok.id_to_piece(0) == "\n" and char_tok.id_to_piece(1) == " "
  assert char_tok.special_ids == () and char_tok.pad_id is None and char_tok.eos_id is None
  with pytest.raises(UserError, match="'é'"):
    char_tok.encode("café")
  starts = char_tok.word_starts(char_tok.encode("To be,\nor"))
  assert starts.tolist() == [True, False, True, True, False, False, True, True, False]
  char_tok.save(str(tmp_path / tokenizer.CHAR_FILE))
  loaded = tokenizer.load_tokenizer(str(tmp_path))
  assert tokenizer.has_tokenizer(str(tmp_path)) and loaded.chars == char_tok.chars


def shakespeare_config(path, **data):
  spec = importlib.util.spec_from_file_location(
      "shakespeare_char", pathlib.Path(__file__).parent.parent / "experiments/shakespeare_char.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  cfg.data.path = path
  cfg.data.update(data)
  return cfg


def test_char_tokenizer_from_config(shakespeare, tmp_path, capsys):
  cfg = shakespeare_config(shakespeare["path"])
  tok = tokenizer.train_from_config(cfg, str(tmp_path))
  assert tok.chars == sorted(set(shakespeare["train"]))
  assert (tmp_path / tokenizer.CHAR_FILE).is_file() and "reusing" not in capsys.readouterr().out
  tokenizer.train_from_config(cfg, str(tmp_path))
  assert "reusing" in capsys.readouterr().out
  cfg.tokenizer.vocab_size = 64
  with pytest.raises(UserError, match="has 65 distinct characters.*set tokenizer.vocab_size and model.vocab_size to 65"):
    tokenizer.train_from_config(cfg, str(tmp_path / "other"))


def stream(split_text, tok, **kw):
  args = dict(seq_len=64, batch_size=12, seed=3)
  args.update(kw)
  return pipeline.make_iterator("stream", [split_text], tok, **args)


def test_stream_windows_are_contiguous_slices_with_next_char_targets(char_tok, shakespeare):
  text = shakespeare["train"]
  batches = [next(it) for it in [stream(text, char_tok)] for _ in range(5)]
  starts = set()
  for b in batches:
    assert set(b) == {"input_ids", "labels", "segment_ids"} and b["input_ids"].shape == (12, 64)
    assert (b["segment_ids"] == 1).all()   # every position is a target
    for ids, labels in zip(b["input_ids"], b["labels"]):
      window = char_tok.decode(ids) + char_tok.decode(labels[-1:])
      i = text.find(window)
      assert i >= 0 and 0 <= i < len(text) - 64   # a contiguous slice, offset as torch.randint(len - block)
      assert char_tok.decode(labels) == text[i + 1:i + 65]   # targets: the same window shifted by one
      starts.add(i)
  assert len(starts) == 60   # random offsets: no two windows alike in 60


def test_stream_is_deterministic_and_resumes_exactly(char_tok, shakespeare):
  text = shakespeare["train"]
  a, b = stream(text, char_tok), stream(text, char_tok)
  for _ in range(7):
    x, y = next(a), next(b)
    assert all((x[k] == y[k]).all() for k in x)
  assert not (next(stream(text, char_tok, seed=4))["input_ids"] == next(stream(text, char_tok))["input_ids"]).all()
  state = json.loads(json.dumps(a.get_state()))
  expected = [next(a) for _ in range(20)]
  resumed = stream(text, char_tok)
  resumed.set_state(state)
  for x, y in zip(expected, [next(resumed) for _ in range(20)]):
    assert all((x[k] == y[k]).all() for k in x)
  with pytest.raises(UserError, match="different pipeline"):
    stream(text[:-1], char_tok).set_state(state)   # another text: another token count


def test_stream_global_batch_is_the_same_for_any_process_count(char_tok, shakespeare):
  text = shakespeare["train"]
  one = stream(text, char_tok)
  halves = [stream(text, char_tok, shard_index=i, shard_count=2) for i in range(2)]
  for _ in range(3):
    whole, parts = next(one), [next(h) for h in halves]
    np.testing.assert_array_equal(whole["input_ids"], np.concatenate([p["input_ids"] for p in parts]))
  # A checkpoint written by 2 processes resumes on 1 at the next global batch, and back.
  states = [h.get_state() for h in halves]
  resumed = stream(text, char_tok)
  resumed.set_state(pipeline.reshard_state(states, 0, 1))
  np.testing.assert_array_equal(next(resumed)["input_ids"], next(one)["input_ids"])


def test_stream_evaluation(char_tok, shakespeare):
  val = shakespeare["val"]
  # nanoGPT's estimate_loss: eval_iters batches of random windows, the same ones at every evaluation.
  first, again = (list(stream(val, char_tok, train=False, num_batches=20)) for _ in range(2))
  assert len(first) == 20 and all((x["input_ids"] == y["input_ids"]).all() for x, y in zip(first, again))
  train_batch = next(stream(val, char_tok))
  assert not (train_batch["input_ids"] == first[0]["input_ids"]).all()   # not the training draw of that text
  # Without num_batches, one ordered pass: each character after the first is a target exactly once.
  passes = list(stream(val, char_tok, train=False))
  real = np.concatenate([b["segment_ids"].reshape(-1) for b in passes]) > 0
  targets = np.concatenate([b["labels"].reshape(-1) for b in passes])[real]
  inputs = np.concatenate([b["input_ids"].reshape(-1) for b in passes])[real]
  assert char_tok.decode(targets) == val[1:] and char_tok.decode(inputs) == val[:-1]


def test_stream_loss_scores_every_position(char_tok, shakespeare):
  """The clm objective on stream rows: nanoGPT's F.cross_entropy over all B x L positions, the last included."""
  import jax
  from lmjax import objectives
  batch = next(stream(shakespeare["train"], char_tok, batch_size=2, seq_len=8))
  inputs, targets = objectives.OBJECTIVES["clm"].prepare(batch, None, None)
  np.testing.assert_array_equal(targets["labels"], batch["labels"])
  assert float(targets["weights"]["lm"].sum()) == 16
  logits = np.random.default_rng(0).normal(size=(2, 8, 65)).astype(np.float32)
  outputs = type("Out", (), {"logits": jax.numpy.asarray(logits)})
  settings = objectives.Settings()
  sums = objectives.OBJECTIVES["clm"].loss(outputs, targets, settings)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.take_along_axis(log_p, batch["labels"][..., None], -1).mean()
  np.testing.assert_allclose(float(sums["lm"]["loss"]) / 16, expected, rtol=1e-5)


def test_stream_layout_from_config(char_tok, shakespeare):
  cfg = shakespeare_config(shakespeare["path"])
  train = pipeline.iterator_from_config(cfg, char_tok, "train", kind="clm")
  assert next(train)["labels"].shape == (12, 64) and train.get_state()["tokens"] == 1_003_854
  evals = pipeline.iterator_from_config(cfg, char_tok, "eval", kind="clm", num_batches=20)
  assert evals.get_state()["tokens"] == 111_540 and len(list(evals)) == 20
  with pytest.raises(UserError, match="data.layout='stream' makes rows for .* not 'pairs' rows"):
    pipeline.iterator_from_config(cfg, char_tok, "train", kind="pairs")


@pytest.mark.slow   # three short trainings: 12 s on 2 quiet cores, ~40 s on busy ones
def test_tiny_shakespeare_run_trains_and_resumes_bit_exactly(shakespeare, tmp_path):
  """experiments/shakespeare_char.py, shrunk: 8 steps straight, and 8 steps with a crash after
  checkpoint 4 then the same command again, give the same losses and params, bit for bit."""
  import jax
  from lmjax import checkpoint
  from lmjax.config import load_config
  from lmjax.training import loop
  tiny = ["--config.model.hidden=32", "--config.model.num_heads=2", "--config.model.mlp_dim=64",
          "--config.model.num_layers=2", "--config.train.steps=8", "--config.optim.warmup_steps=2",
          "--config.train.log_every=1", "--config.train.eval_every=4", "--config.train.eval_batches=2",
          "--config.train.checkpoint_every=4", "--config.train.keep=10", "--config.train.samples=0",
          f"--config.data.path={shakespeare['path']}"]
  cfg = lambda: load_config(str(pathlib.Path(__file__).parent.parent / "experiments/shakespeare_char.py"), tiny)

  def losses(workdir):
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"]) for r in rows]

  straight, crashed = tmp_path / "straight", tmp_path / "crashed"
  loop.train(cfg(), straight)
  loop.train(cfg(), crashed)
  shutil.rmtree(crashed / "checkpoints" / "8")   # what a crash right after checkpoint 4 leaves
  loop.train(cfg(), crashed)
  trajectory = losses(straight)
  assert trajectory == losses(crashed) and len(trajectory) == 10   # 8 train lines, 2 evals
  assert abs(trajectory[0][2] - np.log(65)) < 0.1 and trajectory[-2][2] < trajectory[0][2] - 0.1
  for a, b in zip(jax.tree.leaves(checkpoint.restore_params(straight)), jax.tree.leaves(checkpoint.restore_params(crashed))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (straight / tokenizer.CHAR_FILE).is_file()
