"""Text corpora as TFDS datasets: one example = one document, feature `text`.

Three kinds of source, all read the same way, through a TFDS random-access data source:
  * "default": an offline English corpus taken from this Python installation (the `help()` topics
    of pydoc_data plus the docstrings of the standard library), no network needed;
  * "local": a directory, file or glob of .txt / .jsonl / .zip-of-.txt files;
  * any TFDS name ("wikipedia/20230601.en", "lm1b", ...), already prepared in data_dir (a local
    directory or a gs:// URL, passed to TFDS as given).
The first two are built once by the `LmjaxText` builder into array_record files under data_dir, in
a builder config named after the corpus identity (paths, sizes, mtimes, options): a changed corpus
gets a new config and is rebuilt, an unchanged one is reused.

Prepared TFDS datasets come in several file formats. ArrayRecord and Parquet are read as they are;
TFRecord (TFDS's default, and the format of most prepared corpora) has no random access, so it is
converted once, shard by shard with TFDS's own file adapters, into ArrayRecord under lmjax's data
directory (LMJAX_DATA_DIR, default ~/.cache/lmjax/tfds) and reused after. Record i of a split is the
same record in both formats, so the order (and every resume) does not depend on which was read.

A dataset without the eval split (Wikipedia has only `train`) gets one carved out of the train split
by document hash, as local corpora do (`held_out_split`); the run records the share it carved in
config.json (data.held_out_per_mille) so that training, resuming and `lmjax eval` read the same
documents. Split expressions (`train[:99%]`) work wherever a split name does.
The text may sit in any field, nested ones as a path ("a/b"): data.text_field.

Document boundaries (they matter for NSP and for the EOS between documents):
  * .txt: one document per file, or with txt_docs="paragraph" one per blank-line-separated block
    (use that for single files holding many documents, e.g. wikitext; the shared gutenberg books
    and speeches are one document per file);
  * .zip: each .txt member is a file as above (NLTK corpora ship like this);
  * .jsonl: one document per line, text in `text_field`.
Bad input is counted, not fatal: bytes that are not UTF-8 are replaced by U+FFFD, empty documents
are skipped, lines over MAX_LINE_CHARS are cut into chunks on separate lines. The counts are
printed once when the corpus is built and kept in the dataset's metadata (`corpus_stats`).
"""
import contextlib
import dataclasses
import glob
import hashlib
import importlib
import inspect
import io
import json
import os
import pkgutil
import re
import sys
import time
import warnings
import zipfile
from concurrent import futures

import numpy as np
import tensorflow_datasets as tfds

from lmjax import paths
from lmjax.errors import UserError

DEFAULT_DATA_DIR = os.path.expanduser(os.environ.get("LMJAX_DATA_DIR", "~/.cache/lmjax/tfds"))
BUILDER_NAME = "lmjax_text"
VALIDATION_PER_MILLE = 50      # documents hashed into validation: ~5%, at least one
MAX_LINE_CHARS = 100_000       # longer lines are cut; sentence splitting and tokenizer training need bounded lines
FORMAT_VERSION = 1             # bump when the way documents are read changes, so old builds are not reused


@dataclasses.dataclass(eq=False)
class LocalTextConfig(tfds.core.BuilderConfig):
  files: tuple[str, ...] = ()
  text_field: str = "text"
  txt_docs: str = "file"       # "file" or "paragraph"


class LmjaxText(tfds.core.GeneratorBasedBuilder):
  """Local text files as a TFDS dataset with train/validation splits, split by document hash."""
  VERSION = tfds.core.Version("1.0.0")

  # Nothing is downloaded, so there are no checksums to find next to this file; and tfds's own lookup
  # of that file needs `importlib_resources`, which its pip package does not require.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        metadata=tfds.core.MetadataDict(),
        description="Local text documents, one example per document.")

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    docs, stats = read_documents(cfg.files, text_field=cfg.text_field, txt_docs=cfg.txt_docs)
    train, validation = split_documents(docs, source=", ".join(cfg.files[:3]))
    stats.update(train_docs=len(train), validation_docs=len(validation))
    self.info.metadata["corpus_stats"] = stats
    return {"train": self._generate_examples(train), "validation": self._generate_examples(validation)}

  def _generate_examples(self, docs):
    for i, doc in enumerate(docs):
      yield i, {"text": doc}


def format_stats(stats: dict) -> str:
  return ", ".join(f"{k}={v}" for k, v in stats.items())


# ---------------------------------------------------------------------------------------------
# Reading files into documents


def resolve_files(path: str) -> list[str]:
  """A directory (searched recursively), a file, or a glob, or several of them separated by commas
  -> sorted .txt/.jsonl/.zip files."""
  if not path:
    raise UserError("data.path is empty; set it to a directory, file or glob of .txt/.jsonl/.zip files")
  if "," in path:
    return sorted({f for part in path.split(",") if part.strip() for f in resolve_files(part.strip())})
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    found = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
  elif os.path.isfile(path):
    found = [path]
  else:
    found = glob.glob(path, recursive=True)
    if not found:
      raise UserError(f"corpus path {path} does not exist (no file, directory or glob match)")
  files = sorted(os.path.abspath(f) for f in found if f.endswith((".txt", ".jsonl", ".zip")))
  if not files:
    raise UserError(f"no .txt, .jsonl or .zip files at {path}")
  return files


def _decode(data: bytes, stats: dict) -> str:
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError:
    text = data.decode("utf-8", errors="replace")
    stats["non_utf8_files"] += 1
    stats["replaced_chars"] += text.count("\ufffd") - data.count("\ufffd".encode())
  return text.removeprefix("\ufeff")  # a BOM is an encoding mark, not text


def _cut_long_lines(doc: str, stats: dict) -> str:
  if len(doc) <= MAX_LINE_CHARS or max(map(len, doc.split("\n"))) <= MAX_LINE_CHARS:
    return doc
  lines = []
  for line in doc.split("\n"):
    while len(line) > MAX_LINE_CHARS:
      cut = line.rfind(" ", MAX_LINE_CHARS * 9 // 10, MAX_LINE_CHARS)  # at a space if there is one near the end
      cut = cut + 1 if cut > 0 else MAX_LINE_CHARS
      lines.append(line[:cut])
      line = line[cut:]
      stats["long_line_cuts"] += 1
    lines.append(line)
  return "\n".join(lines)


def _txt_docs(text: str, txt_docs: str) -> list[str]:
  return re.split(r"\n[ \t\r]*\n", text) if txt_docs == "paragraph" else [text]


def read_documents(files, *, text_field="text", txt_docs="file") -> tuple[list[str], dict]:
  """All documents of the files, in file order, and counts of what was skipped or repaired."""
  if txt_docs not in ("file", "paragraph"):
    raise UserError(f"data.txt_docs={txt_docs!r}; use 'file' (one document per file) or 'paragraph'")
  stats = dict(files=len(files), documents=0, chars=0, empty_docs=0, non_utf8_files=0, replaced_chars=0,
               long_line_cuts=0)
  raw = []
  for f in files:
    if f.endswith(".jsonl"):
      with open(f, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
          if not line.strip():
            continue
          try:
            row = json.loads(_decode(line, stats))
          except json.JSONDecodeError as e:
            raise UserError(f"{f}:{lineno}: not valid JSON ({e.msg})") from None
          if not isinstance(row, dict) or text_field not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise UserError(f"{f}:{lineno}: no field '{text_field}' (has {keys}); set data.text_field")
          if not isinstance(row[text_field], str):
            raise UserError(f"{f}:{lineno}: field '{text_field}' is {type(row[text_field]).__name__}, not text")
          raw.append(row[text_field])
    elif f.endswith(".zip"):
      with zipfile.ZipFile(f) as z:
        for member in sorted(n for n in z.namelist() if n.endswith(".txt")):
          raw.extend(_txt_docs(_decode(z.read(member), stats), txt_docs))
    else:
      with open(f, "rb") as fh:
        raw.extend(_txt_docs(_decode(fh.read(), stats), txt_docs))
  docs = []
  for doc in raw:
    doc = doc.strip()
    if not doc:
      stats["empty_docs"] += 1
      continue
    docs.append(_cut_long_lines(doc, stats))
  stats["documents"] = len(docs)
  stats["chars"] = sum(map(len, docs))
  return docs, stats


def _doc_hash(doc: str) -> int:
  return int.from_bytes(hashlib.sha1(doc.encode("utf-8", "surrogatepass")).digest()[:8], "little")


def held_out_mask(hashes, per_mille: int) -> np.ndarray:
  """True for the documents whose hash puts them in the held-out part: hash % 1000 < per_mille, and
  at least one document on each side."""
  hashes = np.asarray(hashes, np.uint64)
  mask = hashes % 1000 < per_mille
  if not mask.any():
    mask[np.argmin(hashes)] = True
  if mask.all():
    mask[np.argmax(hashes)] = False
  return mask


def split_documents(docs: list[str], source: str = "corpus") -> tuple[list[str], list[str]]:
  """(train, validation) by a hash of each document's text: deterministic, and duplicates never straddle."""
  if not docs:
    raise UserError(f"{source}: no non-empty documents; the corpus is empty")
  if len(docs) < 2:
    raise UserError(f"{source}: only 1 document; need at least 2 (one goes to validation). "
                    "For one big .txt file set data.txt_docs='paragraph'")
  is_val = held_out_mask([_doc_hash(d) for d in docs], VALIDATION_PER_MILLE)
  train = [d for d, v in zip(docs, is_val) if not v]
  validation = [d for d, v in zip(docs, is_val) if v]
  return train, validation


# ---------------------------------------------------------------------------------------------
# Building and naming


def prepare_local(path: str, *, data_dir: str = "", text_field: str = "text", txt_docs: str = "file") -> str:
  """Builds the corpus at `path` (once) and returns its TFDS name, e.g. 'lmjax_text/c0123456789ab'."""
  files = resolve_files(path)
  identity = [FORMAT_VERSION, text_field, txt_docs, MAX_LINE_CHARS, VALIDATION_PER_MILLE]
  for f in files:
    st = os.stat(f)
    identity.append((f, st.st_size, st.st_mtime_ns))
  digest = hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:12]
  config = LocalTextConfig(name=f"c{digest}", description=f"{len(files)} files: {', '.join(files[:3])}",
                           files=tuple(files), text_field=text_field, txt_docs=txt_docs)
  root = paths.path(data_dir or DEFAULT_DATA_DIR)
  if not (root / BUILDER_NAME / config.name / str(LmjaxText.VERSION) / "dataset_info.json").exists():
    tfds.disable_progress_bar()  # a few seconds of work; the corpus summary line says what was built
    start = time.perf_counter()
    builder = LmjaxText(config=config, data_dir=os.fspath(root), file_format="array_record")
    with contextlib.redirect_stdout(io.StringIO()):   # TFDS prints "Downloading and preparing..." here
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    print(f"corpus: built {BUILDER_NAME}/{config.name} from {len(files)} file(s) in {time.perf_counter() - start:.1f} s: "
          f"{format_stats(builder.info.metadata['corpus_stats'])}", file=sys.stderr)
  return f"{BUILDER_NAME}/{config.name}"


def corpus_stats(name: str, data_dir: str = "") -> dict:
  """The counts kept when a local/default corpus was built (empty for other TFDS datasets)."""
  builder = tfds.builder(name, data_dir=os.fspath(paths.path(data_dir or DEFAULT_DATA_DIR)))
  return dict((builder.info.metadata or {}).get("corpus_stats", {}))


# Standard-library packages left out of the default corpus: GUI, demos, tests, printing on import.
_SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip", "lib2to3",
                 "pydoc_data", "msilib", "test", "tests"}
_MIN_DOC_CHARS = 80


def _stdlib_modules():
  """Importable standard-library modules and their submodules, in a sorted (deterministic) order."""
  names = []
  for name in sorted(sys.stdlib_module_names):
    if name in _SKIP_MODULES or name.startswith("_"):
      continue
    try:
      mod = importlib.import_module(name)
    except Exception:  # platform-specific modules (winreg, ...) are simply absent
      continue
    names.append(name)
    for info in pkgutil.walk_packages(getattr(mod, "__path__", []), name + "."):
      parts = info.name.split(".")
      if not any(p in _SKIP_MODULES or p.startswith("_") for p in parts):
        names.append(info.name)
  for name in names:
    try:
      yield importlib.import_module(name)
    except Exception:
      continue


def default_documents() -> list[str]:
  """CPython's own English prose: each `help()` topic, then per module its docstring with those of its
  functions, and per class its docstring with those of its methods."""
  from pydoc_data.topics import topics
  docs = [topics[k] for k in sorted(topics)]
  with warnings.catch_warnings(), io.StringIO() as sink:
    warnings.simplefilter("ignore")
    stdout, sys.stdout = sys.stdout, sink  # a few modules print on import
    try:
      for mod in _stdlib_modules():
        parts = [inspect.getdoc(mod) or ""]
        for key, obj in sorted(vars(mod).items()):
          if key.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
          if inspect.isroutine(obj):
            parts.append(inspect.getdoc(obj) or "")
          elif inspect.isclass(obj):
            members = [inspect.getdoc(obj) or ""]
            for k, v in sorted(vars(obj).items()):
              doc = getattr(v, "__doc__", None) if (k == "__init__" or not k.startswith("_")) else None
              if isinstance(doc, str) and inspect.isroutine(v):
                members.append(inspect.cleandoc(doc))
            docs.append("\n\n".join(m for m in members if len(m) >= _MIN_DOC_CHARS))
        docs.append("\n\n".join(p for p in parts if len(p) >= _MIN_DOC_CHARS))
    finally:
      sys.stdout = stdout
  seen = set()  # re-exported classes would otherwise appear twice
  return [d for d in docs if len(d) >= _MIN_DOC_CHARS and not (d in seen or seen.add(d))]


def prepare_default(*, data_dir: str = "", max_chars: int = 0) -> str:
  """Builds the offline default corpus (once; max_chars > 0 keeps only its first documents, for tests)."""
  data_dir = data_dir or DEFAULT_DATA_DIR
  version = f"py{sys.version_info.major}{sys.version_info.minor}"
  # Read back as a local corpus, so written to a local directory even when data_dir is a bucket.
  local = next(d for d in (data_dir, DEFAULT_DATA_DIR, os.path.expanduser("~/.cache/lmjax/tfds"))
               if not paths.is_url(d))
  path = os.path.join(local, "downloads", f"lmjax_default_{version}_{max_chars or 'all'}.jsonl")
  if not os.path.exists(path):  # written once: its mtime is part of the corpus identity
    docs, total = [], 0
    for doc in default_documents():
      if max_chars and total >= max_chars:
        break
      docs.append(doc)
      total += len(doc)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      for doc in docs:
        f.write(json.dumps({"text": doc}) + "\n")
    os.replace(path + ".tmp", path)
  return prepare_local(path, data_dir=data_dir)


# ---------------------------------------------------------------------------------------------
# Prepared TFDS datasets: file formats


READ_FORMATS = ("array_record", "parquet")   # random access: read as they are
CONVERTED_FORMATS = ("tfrecord",)            # sequential only: converted once into array_record


def _builder(name: str, data_dir: str = ""):
  """The prepared dataset `name` in data_dir (a path or gs:// URL, given to TFDS as it is)."""
  where = f"data_dir={data_dir or 'TFDS default'}"
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # unknown name or config: say which, in one line
    raise UserError(f"cannot open TFDS dataset '{name}' ({where}): "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  if not builder.is_prepared():
    raise UserError(f"cannot open TFDS dataset '{name}': not prepared in {where}; prepare it first "
                    f"(`tfds build {name} --data_dir=DIR`) or point data.data_dir at where it is")
  return builder


def _readable(builder, name: str):
  """`builder` itself when its files allow random access, else its ArrayRecord copy (made once)."""
  formats = sorted(f.value for f in builder.info.available_file_formats())
  if set(formats) & set(READ_FORMATS):
    return builder
  if set(formats) & set(CONVERTED_FORMATS):
    return tfds.builder_from_directory(os.fspath(convert_to_array_record(builder, name)))
  raise UserError(f"TFDS dataset '{name}' is stored as {', '.join(formats) or 'an unknown format'}; lmjax reads "
                  f"{' or '.join(READ_FORMATS)} and converts {', '.join(CONVERTED_FORMATS)}: prepare it in one of "
                  "those (`tfds build --file_format=array_record`)")


def _convert_shard(job) -> int:
  from tensorflow_datasets.core import file_adapters
  src, dst = job
  records = file_adapters.TfRecordFileAdapter.make_tf_data(src)
  file_adapters.ArrayRecordFileAdapter.write_examples(dst, ((i, r.numpy()) for i, r in enumerate(records)))
  return dst.stat().length


def convert_to_array_record(builder, name: str):
  """The dataset's TFRecord shards rewritten as ArrayRecord shards (the same records, in the same
  order), with its metadata, under LMJAX_DATA_DIR/array_record/; made once, reused after. The
  directory is named after the source's location and metadata, so a re-prepared dataset is redone."""
  src = paths.path(builder.data_dir)
  info = json.loads((src / "dataset_info.json").read_text())
  key = hashlib.sha1(json.dumps([os.fspath(src), info], sort_keys=True).encode()).hexdigest()[:12]
  out = paths.path(DEFAULT_DATA_DIR) / "array_record" / key / builder.info.full_name
  if (out / "dataset_info.json").exists():
    return out
  start = time.perf_counter()
  tmp = out.parent / f"{out.name}.incomplete-{os.getpid()}"   # renamed into place when complete
  tmp.mkdir(parents=True, exist_ok=True)
  jobs = [(f, tmp / f.name.replace(".tfrecord-", ".array_record-"))
          for split in builder.info.splits.values() for f in split.filepaths]
  # tf.data reads and the ArrayRecord writer both run outside the GIL: shards convert in parallel threads.
  with futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
    size = sum(pool.map(_convert_shard, jobs))
  for f in src.glob("*.json"):
    if f.name != "dataset_info.json":
      (tmp / f.name).write_bytes(f.read_bytes())
  (tmp / "dataset_info.json").write_text(json.dumps({**info, "fileFormat": "array_record"}, indent=2))
  try:
    tmp.rename(out)
  except OSError:   # another process converted it first: keep theirs
    if not (out / "dataset_info.json").exists():
      raise
    tmp.rmtree()
  documents = sum(s.num_examples for s in builder.info.splits.values())
  print(f"corpus: converted {name} ({documents:,} documents in {len(jobs)} TFRecord shards) to ArrayRecord "
        f"for random access: {size / 1e6:,.1f} MB in {time.perf_counter() - start:.1f} s at {out}; "
        "reused from now on", file=sys.stderr)
  return out


def split_names(expression: str) -> list[str]:
  """The split names a TFDS split expression reads: 'train[:99%]+validation' -> ['train', 'validation']."""
  return re.findall(r"(?:^|\+)\s*([\w-]+)", expression)


# ---------------------------------------------------------------------------------------------
# Reading


def _fields(record, prefix="") -> list[str]:
  """Every field of a (nested) record as a path: ['meta/url', 'text', 'title']."""
  out = []
  for k, v in sorted(record.items()):
    out += _fields(v, f"{prefix}{k}/") if isinstance(v, dict) else [f"{prefix}{k}"]
  return out


def _get(record, path: str):
  for part in path.split("/"):
    record = record[part]
  return record


def _as_text(value) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, str):
    return value
  return "\n\n".join(map(_as_text, value))   # a sequence of texts (paragraphs): one document


def _is_text(value) -> bool:
  if isinstance(value, (bytes, str)):
    return True
  return isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(v, (bytes, str)) for v in value)


class TextSource:
  """Random access to the documents of one split as str: len(src), src[i]. grain reads it directly.
  `indices` (optional) restricts it to those records of the split, in that order."""

  def __init__(self, name: str, split: str, *, data_dir: str = "", text_field: str = "text"):
    self.name, self.split, self.text_field, self.indices = name, split, text_field, None
    builder = _readable(_builder(name, data_dir), name)
    splits = sorted(builder.info.splits)
    missing = [s for s in split_names(split) if s not in splits]
    if missing:
      raise UserError(f"TFDS dataset '{name}' has no split '{missing[0]}' (has {splits}); set data.eval_split / "
                      "data.train_split to one of them or a split expression (train[99%:]); a missing eval split "
                      "is carved out of the train split when data.held_out_per_mille=-1")
    self.identity = [os.fspath(builder.data_dir), split]
    try:
      self._records = builder.as_data_source(split=split)
    except Exception as e:  # a malformed split expression: say which, in one line
      if "can not be of 0 length" in str(e):  # what array_record says for a split with no examples
        raise UserError(f"split '{split}' of '{name}' is empty; choose another split or a bigger corpus") from None
      raise UserError(f"cannot open split '{split}' of TFDS dataset '{name}' (data_dir={data_dir or 'default'}): "
                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if len(self._records) == 0:
      raise UserError(f"split '{split}' of '{name}' is empty; choose another split or a bigger corpus")
    first = self._records[0]
    try:
      value = _get(first, text_field)
    except (KeyError, TypeError):
      raise UserError(f"'{name}' has no field '{text_field}' (has {_fields(first)}); set data.text_field "
                      "(a nested field as a path: 'a/b')") from None
    if not _is_text(value):
      texts = [f for f in _fields(first) if _is_text(_get(first, f))]
      raise UserError(f"field '{text_field}' of '{name}' holds {type(value).__name__}, not text; fields with "
                      f"text: {texts}; set data.text_field")

  def __len__(self) -> int:
    return len(self._records) if self.indices is None else len(self.indices)

  def __getitem__(self, i: int) -> str:
    record = self._records[int(i) if self.indices is None else int(self.indices[i])]
    return _as_text(_get(record, self.text_field))

  def subset(self, indices, what: str) -> "TextSource":
    part = object.__new__(TextSource)
    part.__dict__.update(self.__dict__, indices=np.asarray(indices, np.int64), split=f"{self.split} ({what})")
    return part

  def __repr__(self):
    return f"TextSource({self.name!r}, {self.split!r}, {len(self)} documents)"


class TextFileSplit:
  """One split of one text file as a single document: "train" is its first `train_fraction` of
  characters, "validation" the rest (nanoGPT's prepare.py: data[:int(n * 0.9)], data[int(n * 0.9):]).
  The file is read as bytes and decoded as UTF-8, so its text is kept exactly (no newline translation)."""

  def __init__(self, path: str, split: str, train_fraction: float = 0.9):
    if split not in ("train", "validation"):
      raise UserError(f"data.source='file' has the splits 'train' and 'validation', not {split!r}")
    if not 0 < train_fraction < 1:
      raise UserError(f"data.train_fraction={train_fraction} must lie strictly between 0 and 1")
    if not os.path.isfile(os.path.expanduser(path)):
      raise UserError(f"data.path={path!r} is not a file; data.source='file' reads one text file")
    with open(os.path.expanduser(path), "rb") as f:
      text = _decode(f.read(), dict(non_utf8_files=0, replaced_chars=0))
    cut = int(len(text) * train_fraction)
    self.path, self.split = path, split
    self.text = text[:cut] if split == "train" else text[cut:]
    if not self.text:
      raise UserError(f"split {split!r} of {path} is empty; change data.train_fraction or use a longer file")

  def __len__(self) -> int:
    return 1

  def __getitem__(self, i: int) -> str:
    if i != 0:
      raise IndexError(i)
    return self.text

  def __repr__(self):
    return f"TextFileSplit({self.path!r}, {self.split!r}, {len(self.text)} characters)"


def held_out_split(source: TextSource, per_mille: int, held_out: bool) -> TextSource:
  """The documents of `source` whose text hashes into the held-out part (`held_out`), or all the
  others: about per_mille in 1000, at least one on each side, the same rule as local corpora.
  Hashing reads every document once; the result is kept under LMJAX_DATA_DIR/held_out/."""
  assert source.indices is None, "held out from a whole split"
  key = hashlib.sha1(json.dumps([source.identity, source.text_field, len(source._records), per_mille,
                                 FORMAT_VERSION]).encode()).hexdigest()[:16]
  cached = paths.path(DEFAULT_DATA_DIR) / "held_out" / f"{key}.npy"
  if cached.exists():
    mask = np.load(io.BytesIO(cached.read_bytes()))
  else:
    start = time.perf_counter()
    n = len(source._records)
    mask = held_out_mask(np.fromiter((_doc_hash(source[i]) for i in range(n)), np.uint64, n), per_mille)
    cached.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, mask)
    tmp = cached.parent / f"{cached.name}.{os.getpid()}.tmp"
    tmp.write_bytes(buf.getvalue())
    tmp.rename(cached)
    print(f"corpus: held out {int(mask.sum()):,} of {len(mask):,} documents of {source.name} {source.split} by "
          f"document hash ({per_mille / 10:g}%) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
  if len(mask) < 2:
    raise UserError(f"{source}: only {len(mask)} document; need at least 2 to hold one out for evaluation")
  what = f"{per_mille / 10:g}% held out by document hash" if held_out else "without the held-out documents"
  return source.subset(np.flatnonzero(mask if held_out else ~mask), what)


def _dataset(data) -> tuple[str, str, str]:
  """(TFDS name, data_dir, text field) of `data` (the config's data section), building a default
  or local corpus first."""
  source, data_dir = data["source"], data.get("data_dir", "")
  if source == "default":
    data_dir = data_dir or DEFAULT_DATA_DIR
    return prepare_default(data_dir=data_dir, max_chars=data.get("max_chars", 0)), data_dir, "text"
  if source == "local":
    data_dir = data_dir or DEFAULT_DATA_DIR
    name = prepare_local(data.get("path", ""), data_dir=data_dir, text_field=data.get("text_field", "text"),
                         txt_docs=data.get("txt_docs", "file"))
    return name, data_dir, "text"  # built with the field renamed to `text`
  return source, data_dir, data.get("text_field", "text")


def open_source(source: str, split: str, *, path: str = "", text_field: str = "text", data_dir: str = "",
                txt_docs: str = "file", max_chars: int = 0, train_fraction: float = 0.9):
  """One split of the "default" corpus, a "local" one at `path`, one text "file" at `path`, or a
  TFDS dataset by name."""
  if source == "file":
    return TextFileSplit(path, split, train_fraction)
  data = dict(source=source, path=path, text_field=text_field, data_dir=data_dir, txt_docs=txt_docs,
              max_chars=max_chars)
  name, data_dir, text_field = _dataset(data)
  return TextSource(name, split, data_dir=data_dir, text_field=text_field)


def resolve_held_out(data) -> int:
  """data.held_out_per_mille made definite, and set in `data` so that config.json records it:
  -1 (the default) becomes VALIDATION_PER_MILLE when the dataset lacks a split that data.eval_split
  names, else 0 (the eval split is read as it is)."""
  per_mille = data.get("held_out_per_mille", -1)
  if per_mille < 0 and data["source"] == "file":   # one text file: cut into its own train and validation
    per_mille = data.held_out_per_mille = 0
  if per_mille < 0:
    name, data_dir, _ = _dataset(data)
    splits = _readable(_builder(name, data_dir), name).info.splits
    per_mille = 0 if all(s in splits for s in split_names(data.eval_split)) else VALIDATION_PER_MILLE
    data.held_out_per_mille = per_mille
  return per_mille


def describe_held_out(data) -> str:
  """One line for the run header, '' when the eval split is the dataset's own."""
  per_mille = data.get("held_out_per_mille", 0)
  if per_mille <= 0:
    return ""
  return (f"eval split '{data.eval_split}' = {per_mille / 10:g}% of '{data.train_split}' held out by "
          "document hash (data.held_out_per_mille); training reads the rest")


def source_from_config(data, split: str):
  """`data` is the experiment's `c.data` section; `split` a split's name or expression. With a
  held-out eval split, data.eval_split names the held-out documents and data.train_split the rest."""
  if data["source"] == "file":
    return TextFileSplit(data.get("path", ""), split, data.get("train_fraction", 0.9))
  name, data_dir, text_field = _dataset(data)
  per_mille = resolve_held_out(data)
  if per_mille > 0 and split in (data.eval_split, data.train_split):
    train = TextSource(name, data.train_split, data_dir=data_dir, text_field=text_field)
    return held_out_split(train, per_mille, held_out=split == data.eval_split)
  return TextSource(name, split, data_dir=data_dir, text_field=text_field)
