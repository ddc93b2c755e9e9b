"""Generation: cached decoding equals the recompute-everything reference, sampling is
seeded, EOS stops a row, one compile serves a prompt bucket, long prompts are cut."""
import itertools
import json

import jax
import numpy as np
import pytest

from lmjax.inference import generate as gen
from lmjax.models import TransformerConfig, build, init_params

# init_std 1.0: a default (0.02) random model predicts the same token forever, which
# would make equal-token checks pass trivially.
TINY = dict(vocab_size=64, hidden=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=48, causal=True,
            pre_ln=True, dropout_rate=0.0, attention_dropout_rate=0.0, init_std=1.0)
PROMPTS = [[5, 7, 9, 11, 13], [8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]


def tiny(**kw):
  cfg = TransformerConfig(**{**TINY, **kw})
  return build(cfg), init_params(cfg, jax.random.key(0))


@pytest.fixture(scope="module")
def sp_tokenizer_path(shared_data, tmp_path_factory):
  from lmjax.data.tokenizer import train
  text = (shared_data / "gutenberg" / "pg11.txt").read_text(errors="ignore")[:200_000]
  path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
  train([text], str(path), vocab_size=400)
  return path


@pytest.fixture(scope="module")
def model_params():
  return tiny()


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_greedy_equals_recompute(scan_layers):
  model, params = tiny(scan_layers=scan_layers)
  cached = gen.generate(model, params, PROMPTS, 12)
  reference = gen.generate(model, params, PROMPTS, 12, reference=True)
  assert cached == reference
  assert all(len(r) == 12 for r in cached)
  assert len({tuple(r) for r in cached}) > 1 and len(set(cached[0])) > 1  # not a degenerate model


def test_sampling_seeded_and_top_k_1_is_greedy(model_params):
  model, params = model_params
  kw = dict(temperature=0.8, top_p=0.9, top_k=20)
  a = gen.generate(model, params, PROMPTS, 12, seed=3, **kw)
  assert a == gen.generate(model, params, PROMPTS, 12, seed=3, **kw)
  assert a != gen.generate(model, params, PROMPTS, 12, seed=4, **kw)
  greedy = gen.generate(model, params, PROMPTS, 12)
  assert gen.generate(model, params, PROMPTS, 12, temperature=1.5, top_k=1, seed=7) == greedy
  # num_samples repeats each prompt; with sampling the repeats differ.
  rows = gen.generate(model, params, PROMPTS[:1], 12, num_samples=3, seed=1, temperature=1.0)
  assert len(rows) == 3 and len({tuple(r) for r in rows}) > 1


def test_eos_stops_a_row(model_params):
  model, params = model_params
  greedy = gen.generate(model, params, PROMPTS, 12)
  eos = greedy[0][3]  # row 0 emits it at step 3 (maybe earlier too)
  rows = gen.generate(model, params, PROMPTS, 12, eos_id=eos, pad_id=0)
  for g, r in zip(greedy, rows):
    cut = g.index(eos) + 1 if eos in g else len(g)
    assert r == g[:cut]
  assert len(rows[0]) <= 4
  # The raw buffer holds pad after EOS.
  (args, kwargs) = gen.decode_args(model, params, PROMPTS[:1], 12, 0.0, 0, 1.0, 0, 1, eos, 0)
  raw = jax.device_get(gen.decode(*args, **{**kwargs, "pad_id": 63}))[0].tolist()
  assert raw[len(rows[0]):] == [63] * (12 - len(rows[0]))


def test_one_compile_per_bucket(model_params):
  model, params = model_params
  gen.generate(model, params, [[1, 2, 3]], 8)  # may compile
  before = gen.decode._cache_size()
  gen.generate(model, params, [[4] * 14], 8, temperature=0.7, seed=1)  # same bucket of 16
  gen.generate(model, params, [[1, 2, 3, 4, 5, 6, 7]], 8, temperature=1.3, top_k=5, top_p=0.5, seed=2)
  assert gen.decode._cache_size() == before
  gen.generate(model, params, [[4] * 17], 8)  # next bucket
  assert gen.decode._cache_size() == before + 1


def test_long_prompt_is_truncated_from_the_left(model_params, capsys):
  model, params = model_params  # max_len 48
  long = list(range(1, 60))
  rows = gen.generate(model, params, [long], 8)
  assert "keeping its last 40" in capsys.readouterr().err
  assert rows == gen.generate(model, params, [long[-40:]], 8)
  with pytest.raises(gen.UserError, match="no room"):
    gen.generate(model, params, [long], 48)


def test_cli_prints_continuations(tmp_path, capsys, sp_tokenizer_path):
  import shutil
  from lmjax.__main__ import main
  from lmjax.checkpoint import save_params, write_config
  cfg = {**TINY, "vocab_size": 400}
  params = init_params(TransformerConfig(**cfg), jax.random.key(0))
  write_config(tmp_path, {"model": cfg})
  save_params(tmp_path, params, {"model": cfg})
  shutil.copy(sp_tokenizer_path, tmp_path / "tokenizer.model")
  main(["generate", "--workdir", str(tmp_path), "--prompt", "It was a", "--prompt", "The", "--max-new-tokens",
        "6", "--num-samples", "2", "--temperature", "0.9"])
  out = capsys.readouterr().out
  assert out.count("--- prompt") == 4 and "prompt 2, sample 2" in out
  assert "It was a" in out and "tokens/s" in out


def exhaustive(model, params, prompt, N, eos_id, length_penalty):
  """(best new tokens, score) over every sequence of up to N new tokens (ending at EOS or at N),
  each scored sum log p / length**length_penalty: the definition beam search approximates.
  One forward over all of them: each is padded to N, which a causal model's scores ignore."""
  V = model.cfg.vocab_size
  seqs = [list(s) for n in range(1, N + 1) for s in itertools.product(range(V), repeat=n)
          if eos_id not in s[:-1] and (n == N or s[-1] == eos_id)]
  ids_BxT = np.asarray([prompt + s + [0] * (N - len(s)) for s in seqs])
  logp_BxTxV = np.asarray(jax.nn.log_softmax(model.apply({"params": params}, ids_BxT).logits, -1))
  scored = sorted((sum(logp_BxTxV[b, len(prompt) - 1 + i, t] for i, t in enumerate(s)) / len(s) ** length_penalty, s)
                  for b, s in enumerate(seqs))
  assert scored[-2][0] < scored[-1][0] - 1e-4   # a unique best, so the comparison is sharp
  return scored[-1][1], float(scored[-1][0])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.5, -1.0])
def test_beam_search_equals_exhaustive_search(length_penalty):
  """V=5, 3 new tokens: with 80 beams (every live prefix's continuations rank within the beams at
  each step) beam search must return the exhaustive optimum, for any length penalty; with 2 beams
  it can only score lower."""
  model, params = tiny(vocab_size=5, max_len=16)
  eos = 4
  prompts = [[1, 2, 3], [0, 3]]
  rows, scores = gen.beam_search(model, params, prompts, 3, num_beams=80, length_penalty=length_penalty,
                                 eos_id=eos, pad_id=0)
  for prompt, row, score in zip(prompts, rows, scores):
    best, best_score = exhaustive(model, params, prompt, 3, eos, length_penalty)
    assert row == best and np.isclose(score, best_score, atol=1e-4), (row, best, score, best_score)
  rows2, scores2 = gen.beam_search(model, params, prompts, 3, num_beams=2, length_penalty=length_penalty,
                                   eos_id=eos, pad_id=0)
  assert all(s2 <= s + 1e-5 for s2, s in zip(scores2, scores))


def test_beam_search_matches_transformers(tmp_path, monkeypatch):
  """A random GPT-2 converted to lmjax: the same hypotheses and scores as transformers' beam search
  (early_stopping="never", whose stopping rule is exact), for several beam counts and penalties."""
  import torch
  import transformers
  from lmjax import load
  eos = 3
  config = transformers.GPT2Config(vocab_size=12, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                   bos_token_id=11, eos_token_id=eos, pad_token_id=0)
  torch.manual_seed(0)
  hf_model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for name, p in hf_model.named_parameters():
      norm_scale = "ln_" in name and name.endswith("weight")
      p.copy_(1 + 0.2 * torch.randn_like(p) if norm_scale else 0.15 * torch.randn_like(p))
  hf_model.save_pretrained(tmp_path / "hf")
  monkeypatch.setenv("LMJAX_CACHE", str(tmp_path / "cache"))
  model, params = load(tmp_path / "hf")   # a save_pretrained directory, converted into LMJAX_CACHE
  prompt = [5, 9, 1, 2]
  greedy = gen.generate(model, params, [prompt], 6, eos_id=eos)[0]
  found = []
  for num_beams, length_penalty in [(2, 1.0), (4, 0.0), (3, 2.0), (5, -0.5)]:
    with torch.no_grad():
      out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                              num_beams=num_beams, length_penalty=length_penalty, early_stopping="never",
                              max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    want = out.sequences[0, 4:].tolist()
    want = want[:want.index(eos) + 1] if eos in want else want
    rows, scores = gen.beam_search(model, params, [prompt], 6, num_beams=num_beams,
                                   length_penalty=length_penalty, eos_id=eos, pad_id=0)
    assert rows[0] == want, (num_beams, length_penalty, rows[0], want)
    assert np.isclose(scores[0], float(out.sequences_scores[0]), atol=1e-4)
    found.append(rows[0])
  # Not a degenerate check: beams beat greedy, some hypotheses end in EOS, the penalty matters.
  assert greedy not in found and [eos] in found and len({tuple(r) for r in found}) > 1


def test_cli_beam_search_prints_the_best_hypothesis(tmp_path, capsys, sp_tokenizer_path):
  import shutil
  from lmjax.__main__ import main
  from lmjax.checkpoint import save_params, write_config
  from lmjax.data.tokenizer import load_tokenizer
  cfg = {**TINY, "vocab_size": 400}
  params = init_params(TransformerConfig(**cfg), jax.random.key(0))
  write_config(tmp_path, {"model": cfg})
  save_params(tmp_path, params, {"model": cfg})
  shutil.copy(sp_tokenizer_path, tmp_path / "tokenizer.model")
  tok = load_tokenizer(str(tmp_path))
  rows, _ = gen.beam_search(build(TransformerConfig(**cfg)), params, [tok.encode("It was a")], 6, num_beams=3,
                            length_penalty=0.5, eos_id=tok.eos_id, pad_id=tok.pad_id)
  main(["generate", "--model", str(tmp_path), "--prompt", "It was a", "--max-new-tokens", "6", "--num-beams", "3",
        "--length-penalty", "0.5"])
  out = capsys.readouterr().out
  assert "It was a" + tok.decode(tok.encode("It was a") + rows[0])[len(tok.decode(tok.encode("It was a"))):] in out
  with pytest.raises(SystemExit):
    main(["generate", "--model", str(tmp_path), "--prompt", "x", "--num-beams", "3", "--num-samples", "2"])
  assert "takes no temperature" in capsys.readouterr().err


def test_bench_generate_vs_torch_times_every_case_and_refuses_one_beam(capsys):
  pytest.importorskip("transformers")
  from lmjax.__main__ import main
  tiny = ["--config.model.hidden=32", "--config.model.num_layers=1", "--config.model.num_heads=2",
          "--config.model.mlp_dim=64", "--config.model.vocab_size=64"]
  # Scanned layers and an untied LM head: the weights PyTorch gets go through convert's unstacking
  # and head naming (gpt2_small scans its layers).
  main(["bench", "generate", "--config", "experiments/gpt_tiny.py", "--new-tokens", "3", "--num-beams", "2",
        "--vs-torch", "--json", *tiny, "--config.model.scan_layers=True", "--config.model.tie_embeddings=False"])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for case in ("greedy_batch1", "greedy_batch32", "beam2_batch1"):
    assert result[f"lmjax_over_torch_{case}"] == pytest.approx(
        result[f"lmjax_tokens_per_s_{case}"] / result[f"torch_tokens_per_s_{case}"], rel=0.02)
    # Both sides decode lmjax's weights, so the timed work is the same: greedy and beam search
    # (early_stopping="never", length penalty 1) make the same tokens as HF's generate.
    assert result[f"same_tokens_{case}"] is True, case
  with pytest.raises(SystemExit) as exit_info:
    main(["bench", "generate", "--config", "experiments/gpt_tiny.py", "--num-beams", "1", *tiny])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert "--num-beams 1" in err and len(err.splitlines()) == 1
