"""Prepared TFDS corpora as researchers have them: built offline by a real GeneratorBasedBuilder from
WikiText-2's articles, once as TFRecord (TFDS's default) and once as ArrayRecord, with only a train
split and the fields of wikipedia/20230601.en (`text`, `title`); plus one with a validation split and
its text in a nested field. Each is read, trained on, resumed bit-exactly and evaluated by `lmjax eval`."""
import json
import pathlib
import re
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from test_train import assert_trees_equal, drop_checkpoints_after, losses, params_of, tiny

from lmjax.data import pipeline, sources, tokenizer
from lmjax.errors import UserError
from lmjax.training import loop


def wikitext_articles(shared_data) -> list[tuple[str, str]]:
  """(title, text) of each article of WikiText-2's validation file (` = Title = ` headings)."""
  text = (shared_data / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8")
  parts = re.split(r"^ = ([^=\n]+) = \n", text, flags=re.M)
  return [(title.strip(), body.strip()) for title, body in zip(parts[1::2], parts[2::2]) if body.strip()]


ARTICLES = []   # filled by the fixture; the builders read it when they are prepared


# skip_registration: like a user's prepared dataset whose code is not importable, TFDS reads it from its files.
class WikiStandIn(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shaped like wikipedia/20230601.en: one `train` split, features `text` and `title`."""
  name = "wiki_stand_in"
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "title": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(ARTICLES)}

  def _generate_examples(self, articles):
    for i, (title, text) in enumerate(articles):
      yield i, {"title": title, "text": text}


class NestedStandIn(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Train and validation splits; the text in a nested field, `article/body`."""
  name = "nested_stand_in"
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"article": {"body": tfds.features.Text(), "words": np.int32}, "id": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(ARTICLES[8:]), "validation": self._generate_examples(ARTICLES[:8])}

  def _generate_examples(self, articles):
    for i, (title, text) in enumerate(articles):
      yield i, {"article": {"body": text, "words": len(text.split())}, "id": title}


@pytest.fixture(scope="module")
def lmjax_dir(tmp_path_factory):
  """LMJAX_DATA_DIR for this module: where conversions and held-out indices go."""
  path = tmp_path_factory.mktemp("lmjax_data")
  mp = pytest.MonkeyPatch()
  mp.setattr(sources, "DEFAULT_DATA_DIR", str(path))
  mp.setenv("LMJAX_DATA_DIR", str(path))
  yield path
  mp.undo()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_data, lmjax_dir):
  """{format: data_dir} of the wiki stand-in, and the nested one (TFRecord) under 'nested'."""
  ARTICLES[:] = wikitext_articles(shared_data)
  tfds.disable_progress_bar()
  dirs = {}
  for fmt in ("tfrecord", "array_record"):
    dirs[fmt] = str(tmp_path_factory.mktemp(fmt))
    WikiStandIn(data_dir=dirs[fmt], file_format=fmt).download_and_prepare()
  dirs["nested"] = str(tmp_path_factory.mktemp("nested"))
  NestedStandIn(data_dir=dirs["nested"], file_format="tfrecord").download_and_prepare()
  return dirs


def texts(source) -> list[str]:
  return [source[i] for i in range(len(source))]


def test_tfrecord_is_converted_once_to_the_same_records(prepared, lmjax_dir, capfd):
  capfd.readouterr()
  converted = sources.TextSource("wiki_stand_in", "train", data_dir=prepared["tfrecord"])
  line = capfd.readouterr().err
  assert re.search(r"corpus: converted wiki_stand_in \(\d+ documents in 1 TFRecord shards\) to ArrayRecord "
                   r"for random access: [\d.]+ MB in [\d.]+ s", line), line
  native = sources.TextSource("wiki_stand_in", "train", data_dir=prepared["array_record"])
  assert len(converted) == len(ARTICLES) and texts(converted) == texts(native)   # record i is record i
  assert sorted(texts(native)) == sorted(t for _, t in ARTICLES)
  again = sources.TextSource("wiki_stand_in", "train[:25%]", data_dir=prepared["tfrecord"])
  assert "converted" not in capfd.readouterr().err and texts(again) == texts(converted)[:len(again)]
  assert 0 < len(again) < len(converted)


def test_a_format_without_random_access_or_conversion_is_one_line(prepared, tmp_path):
  src = pathlib.Path(prepared["tfrecord"]) / "wiki_stand_in"
  shutil.copytree(src, tmp_path / "wiki_stand_in")
  info = tmp_path / "wiki_stand_in" / "1.0.0" / "dataset_info.json"
  info.write_text(json.dumps({**json.loads(info.read_text()), "fileFormat": "riegeli"}))
  with pytest.raises(UserError, match=r"stored as riegeli; lmjax reads array_record or parquet and converts "
                                      r"tfrecord"):
    sources.TextSource("wiki_stand_in", "train", data_dir=str(tmp_path))


def test_text_fields_nested_and_errors_list_the_fields(prepared):
  nested = sources.TextSource("nested_stand_in", "validation", data_dir=prepared["nested"], text_field="article/body")
  assert texts(nested) and set(texts(nested)) <= {t for _, t in ARTICLES[:8]}
  with pytest.raises(UserError, match=r"no field 'text' \(has \['article/body', 'article/words', 'id'\]\)"):
    sources.TextSource("nested_stand_in", "train", data_dir=prepared["nested"])
  with pytest.raises(UserError, match=r"'article/words' .* holds int.*fields with text: \['article/body', 'id'\]"):
    sources.TextSource("nested_stand_in", "train", data_dir=prepared["nested"], text_field="article/words")
  with pytest.raises(UserError, match=r"has no split 'validation' \(has \['train'\]\)"):
    sources.TextSource("wiki_stand_in", "validation", data_dir=prepared["array_record"])
  with pytest.raises(UserError, match=r"cannot open TFDS dataset 'wiki_stand_in' \(data_dir=.*empty\): .*not found"):
    sources.TextSource("wiki_stand_in", "train", data_dir=str(pathlib.Path(prepared["nested"]) / "empty"))


def test_held_out_only_when_the_eval_split_is_missing(prepared):
  cfg = tiny(prepared["array_record"], "--config.data.source=wiki_stand_in").data
  assert cfg.held_out_per_mille == -1 and sources.resolve_held_out(cfg) == 50 and cfg.held_out_per_mille == 50
  train, held = sources.source_from_config(cfg, "train"), sources.source_from_config(cfg, "validation")
  # The same rule as local corpora: a document is held out iff its text's hash says so.
  docs = texts(sources.TextSource("wiki_stand_in", "train", data_dir=prepared["array_record"]))
  mask = sources.held_out_mask([sources._doc_hash(d) for d in docs], 50)
  assert texts(held) == [d for d, m in zip(docs, mask) if m] and texts(train) == [d for d, m in zip(docs, mask) if not m]
  nested = tiny(prepared["nested"], "--config.data.source=nested_stand_in", "--config.data.text_field=article/body").data
  assert sources.resolve_held_out(nested) == 0   # it has a validation split: read as it is
  expression = tiny(prepared["array_record"], "--config.data.source=wiki_stand_in",
                    "--config.data.train_split=train[:80%]", "--config.data.eval_split=train[80%:]").data
  assert sources.resolve_held_out(expression) == 0
  assert len(sources.source_from_config(expression, "train[80%:]")) == len(docs) - len(docs) * 4 // 5


def test_gs_data_dir_reaches_tfds_as_the_url(monkeypatch):
  seen = []

  def builder(name, data_dir=None):
    seen.append(data_dir)
    raise FileNotFoundError("no network here")
  monkeypatch.setattr(tfds, "builder", builder)
  with pytest.raises(UserError, match="cannot open TFDS dataset 'wikipedia/20230601.en'"):
    sources.TextSource("wikipedia/20230601.en", "train", data_dir="gs://bucket/tfds")
  assert seen == ["gs://bucket/tfds"]


@pytest.mark.slow
def test_workers_give_the_same_bert_pairs_and_resume(prepared, tmp_path):
  """BERT pairs made in 2 grain worker processes are the in-process pipeline's, bit for bit, and an
  iterator resumed with 1 worker continues with the same batches (LM rows: the training test below)."""
  source = sources.TextSource("wiki_stand_in", "train", data_dir=prepared["array_record"])
  tok = tokenizer.train(tokenizer.sample_documents(source, 300_000), str(tmp_path / "t.model"), vocab_size=400)
  make = lambda workers: pipeline.make_iterator("pairs", source, tok, seq_len=32, batch_size=4, seed=1,
                                                shard_index=1, shard_count=2, workers=workers)
  reference = make(0)
  expected = [next(reference) for _ in range(30)]
  with_workers = make(2)
  got = [next(with_workers) for _ in range(15)]
  state = json.loads(json.dumps(with_workers.get_state()))
  with_workers.close()
  resumed = make(1)
  resumed.set_state(state)
  got += [next(resumed) for _ in range(15)]
  resumed.close()
  for a, b in zip(expected, got, strict=True):
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.slow
def test_train_resume_and_eval_on_a_train_only_dataset_in_either_format(prepared, tmp_path, capsys):
  """Tiny GPT on the Wikipedia stand-in: the eval split is held out of train (said in the header,
  recorded in config.json). Trained straight on the ArrayRecord copy; on the TFRecord one, crashed
  after checkpoint 4 and rerun tokenizing in a grain worker: the same losses and params, bit for bit.
  `lmjax eval` on each reads the same held-out documents as training's last eval."""
  from lmjax.__main__ import main
  args = ["--config.data.source=wiki_stand_in", "--config.train.steps=8", "--config.train.eval_every=4",
          "--config.train.eval_batches=0", "--config.data.max_chars=0", "--config.tokenizer.sample_chars=300000"]
  straight, crashed = tmp_path / "straight", tmp_path / "crashed"
  metrics = loop.train(tiny(prepared["array_record"], *args), straight)
  header = capsys.readouterr().out
  assert "held out   eval split 'validation' = 5% of 'train' held out by document hash" in header
  assert json.loads((straight / "config.json").read_text())["data"]["held_out_per_mille"] == 50
  loop.train(tiny(prepared["tfrecord"], *args), crashed)
  drop_checkpoints_after(crashed, 4)
  loop.train(tiny(prepared["tfrecord"], *args, "--config.data.workers=1"), crashed)
  assert losses(crashed) == losses(straight)
  assert_trees_equal(params_of(crashed), params_of(straight))
  for workdir in (straight, crashed):
    capsys.readouterr()
    main(["eval", "--workdir", str(workdir)])
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Both read the whole held-out split (train.eval_batches=0): the same documents, the same loss.
    assert evaluated["loss"] == pytest.approx(metrics["loss"], rel=1e-5)


@pytest.mark.slow
def test_train_and_eval_with_a_nested_field_and_its_own_validation(prepared, tmp_path, capsys):
  from lmjax.__main__ import main
  args = ["--config.data.source=nested_stand_in", "--config.data.text_field=article/body", "--config.train.steps=4",
          "--config.train.eval_every=4", "--config.data.max_chars=0", "--config.tokenizer.sample_chars=300000"]
  metrics = loop.train(tiny(prepared["nested"], *args), tmp_path)
  assert "held out" not in capsys.readouterr().out
  assert json.loads((tmp_path / "config.json").read_text())["data"]["held_out_per_mille"] == 0
  main(["eval", "--workdir", str(tmp_path)])
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["loss"] > 0 and np.isfinite(metrics["loss"])
