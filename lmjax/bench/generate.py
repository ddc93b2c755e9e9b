"""`lmjax bench generate --config experiments/gpt_tiny.py [--new-tokens 256] [--num-beams 4] [--vs-torch
[--torch-threads N]] [--json]`

Decoding speed of the config's model (random weights; speed does not depend on them), in
new tokens/s from 16-token prompts: greedy with the KV cache at batch 1 and batch 32, beam
search at batch 1 (tokens of the best hypothesis), and at batch 1 the reference that
recomputes the full forward over the whole prompt + new-token buffer at every step. Each
program is compiled ahead of time and run once untimed, so the figures time decoding alone;
then ROUNDS runs of each, taken in turn, and tokens/s = all tokens / all seconds (the slow
recompute reference runs once). No EOS: every row makes all new tokens.

--vs-torch also builds the same model in Hugging Face PyTorch (`GPT2LMHeadModel` holding lmjax's
weights, float32, eval, inference mode, --torch-threads threads, default as many as cores) and runs
`model.generate(..., do_sample=False, use_cache=True)` for the same cases (beam search with
early_stopping="never", the stopping rule lmjax implements, and length_penalty 1.0), each
torch run right after lmjax's run of the same case, so machine noise hits both alike; and it reports,
per case, whether both made the same new tokens (`same_tokens_*`: the same work was timed). The
load average is printed with the figures:
PyTorch's OpenMP threads collapse when other jobs hold the cores (gpt_tiny, batch 1, load ~9
on 2 cores: 7 tokens/s with 2 threads, 130 with 1), XLA's thread pool does not; there
`--torch-threads 1` is the fairer comparison. Measured figures: README "Speed".
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import UserError
from lmjax.inference.generate import beam_decode, decode, decode_reference
from lmjax.models import build, init_params, model_config

PROMPT_LEN = 16
BATCHES = (1, 32)
ROUNDS = 3   # timed runs of each program (and, with --vs-torch, of each torch case), alternating


def prompts(vocab_size: int, batch: int) -> np.ndarray:
  return np.random.default_rng(0).integers(0, vocab_size, (batch, PROMPT_LEN)).astype(np.int32)


class LmjaxSide:
  """lmjax's compiled decoding programs, one per case; run(case) times one call."""

  def __init__(self, model, params, new_tokens: int, num_beams: int):
    self.cases, self.tokens = {}, {}
    for name, batch, beams in cases(num_beams):
      ids_BxP = jnp.asarray(prompts(model.cfg.vocab_size, batch))
      head = (model, params, ids_BxP, jnp.ones_like(ids_BxP))
      if beams > 1:
        args = head + (jnp.float32(1.0),)
        fn = beam_decode.lower(*args, max_new_tokens=new_tokens, num_beams=beams, eos_id=None, pad_id=0)
      else:
        args = head + (jax.random.key(0), jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
        fn = decode.lower(*args, max_new_tokens=new_tokens, eos_id=None, pad_id=0)
      self.cases[name] = (fn.compile(), args[1:])
      if name == "greedy_batch1":
        fn = decode_reference.lower(*args, max_new_tokens=new_tokens, eos_id=None, pad_id=0)
        self.cases["recompute_batch1"] = (fn.compile(), args[1:])

  def run(self, name: str) -> float:
    compiled, args = self.cases[name]
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    seconds = time.perf_counter() - t0
    self.tokens[name] = np.asarray(out[0] if isinstance(out, tuple) else out)   # beam search: (tokens, scores)
    return seconds


class TorchSide:
  """The same model in Hugging Face PyTorch; run(case) times one `generate` call."""

  def __init__(self, model_cfg, params, new_tokens: int, num_beams: int, threads: int):
    import torch  # a dev extra: only this path needs it
    import transformers
    from lmjax.convert import hf
    torch.set_num_threads(threads)
    self.torch = torch
    # lmjax's weights under transformers' names (as `convert --to-hf` writes them), so both sides
    # decode the same model and their tokens can be compared.
    hf_cfg, weights = hf.hf_state(model_cfg, jax.device_get(params))
    config = {k: v for k, v in hf_cfg.items() if k not in ("architectures", "model_type")}
    # No BOS/EOS, as on lmjax's side: every row makes all new tokens.
    config.update(bos_token_id=None, eos_token_id=None)
    self.model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).float().eval()
    missing, unexpected = self.model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()},
                                                     strict=False)
    # Left unset may be only HF's causal-mask buffers and, tied, lm_head (it is the embedding).
    unset = [k for k in missing
             if not (k.endswith(".attn.bias") or (k == "lm_head.weight" and model_cfg.tie_embeddings))]
    if unset or unexpected:
      raise RuntimeError(f"lmjax's weights left {unset} of GPT2LMHeadModel unset and {unexpected} unused: "
                         "convert/hf.py's GPT-2 table no longer matches this transformers; update the table")
    self.new_tokens = new_tokens
    self.cases, self.tokens = {}, {}
    for name, batch, beams in cases(num_beams):
      ids = torch.from_numpy(prompts(model_cfg.vocab_size, batch)).long()
      beam = dict(num_beams=beams, early_stopping="never", length_penalty=1.0) if beams > 1 else {}
      self.cases[name] = dict(inputs=ids, attention_mask=torch.ones_like(ids), **beam)

  def run(self, name: str) -> float:
    N = self.new_tokens
    t0 = time.perf_counter()
    with self.torch.inference_mode():
      out = self.model.generate(**self.cases[name], max_new_tokens=N, min_new_tokens=N, do_sample=False,
                                use_cache=True, pad_token_id=0)
    seconds = time.perf_counter() - t0
    if out.shape[1] != PROMPT_LEN + N:
      raise RuntimeError(f"torch generated {out.shape[1] - PROMPT_LEN} new tokens, not {N}")
    self.tokens[name] = out[:, PROMPT_LEN:].numpy()
    return seconds


def cases(num_beams: int) -> list[tuple[str, int, int]]:
  """(name, batch, beams) of each timed case."""
  return [(f"greedy_batch{b}", b, 1) for b in BATCHES] + [(f"beam{num_beams}_batch1", 1, num_beams)]


def batch_of(name: str) -> int:
  return int(name.rsplit("batch", 1)[1])


def main(cfg, args) -> dict:
  N, K = args.new_tokens, args.num_beams
  if N < 1:
    raise UserError(f"--new-tokens {N}; ask for at least 1")
  if args.torch_threads is not None and (args.torch_threads < 1 or not args.vs_torch):
    raise UserError(f"--torch-threads {args.torch_threads}: give at least 1, with --vs-torch")
  if K < 2:
    raise UserError(f"--num-beams {K}; beam search needs at least 2 beams (1 is greedy, timed anyway)")
  mcfg = model_config(cfg.model)
  if not mcfg.causal:
    raise UserError("bench generate needs a decoder config (model.causal=True), e.g. experiments/gpt_tiny.py")
  note = ""
  if mcfg.max_len < PROMPT_LEN + N:
    # Only the learned position table depends on max_len; widen it so N new tokens fit.
    note = f"model.max_len {mcfg.max_len} widened to {PROMPT_LEN + N} to fit {N} new tokens"
    mcfg = dataclasses.replace(mcfg, max_len=PROMPT_LEN + N)
  params = init_params(mcfg, jax.random.key(0))
  lm = LmjaxSide(build(mcfg), params, N, K)
  threads = args.torch_threads or os.cpu_count()
  torch_side = TorchSide(mcfg, params, N, K, threads) if args.vs_torch else None
  sides = {"lmjax": lm} if torch_side is None else {"lmjax": lm, "torch": torch_side}
  names = [name for name, _, _ in cases(K)]
  for side in sides.values():   # warm-up: first calls allocate and fill caches
    for name in names:
      side.run(name)
  seconds = {(s, name): 0.0 for s in sides for name in names}
  for _ in range(ROUNDS):
    for name in names:
      for s, side in sides.items():
        seconds[(s, name)] += side.run(name)
  rate = {key: batch_of(key[1]) * N * ROUNDS / t for key, t in seconds.items()}
  recompute = N / lm.run("recompute_batch1")

  result = {"new_tokens": N, "prompt_len": PROMPT_LEN, "num_beams": K, "device": jax.devices()[0].device_kind,
            "rounds": ROUNDS,
            **{f"lmjax_tokens_per_s_{name}": round(rate[("lmjax", name)], 1) for name in names},
            "recompute_tokens_per_s_batch1": round(recompute, 1),
            "cached_vs_recompute_batch1": round(rate[("lmjax", "greedy_batch1")] / recompute, 2),
            # Other jobs on the cores slow both sides, and PyTorch's OpenMP threads collapse under them.
            "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()]}
  if torch_side is not None:
    result.update({"torch_threads": torch_side.torch.get_num_threads(),
                   # The same weights on both sides: the timed work is the same decoding.
                   **{f"same_tokens_{name}": bool(np.array_equal(lm.tokens[name], torch_side.tokens[name]))
                      for name in names},
                   **{f"torch_tokens_per_s_{name}": round(rate[("torch", name)], 1) for name in names},
                   **{f"lmjax_over_torch_{name}": round(rate[("lmjax", name)] / rate[("torch", name)], 2)
                      for name in names}})
  if args.json:
    print(json.dumps(result))
    return result
  if note:
    print(f"note: {note}")
  print(f"decoding, {PROMPT_LEN}-token prompts, {N} new tokens, on {result['device']}; new tokens/s "
        f"over {ROUNDS} runs each{', taken in turn with torch' if torch_side else ''}")
  labels = {names[0]: "greedy, batch  1", names[1]: "greedy, batch 32", names[2]: f"beam {K}, batch  1"}
  header = "  lmjax KV cache" + ("      torch  lmjax/torch" if torch_side else "")
  print(f"{'':18}{header}")
  for name in names:
    line = f"  {labels[name]:16}{rate[('lmjax', name)]:14,.1f}"
    if torch_side:
      line += f" {rate[('torch', name)]:10,.1f} {rate[('lmjax', name)] / rate[('torch', name)]:11.2f}x"
    print(line)
  print(f"  recompute, batch  1: {recompute:,.1f} tokens/s; KV cache / recompute {result['cached_vs_recompute_batch1']:.2f}x")
  if torch_side:
    print(f"  torch: {type(torch_side.model).__name__}.generate with lmjax's weights, float32, "
          f"{result['torch_threads']} threads")
    print("  the same new tokens as lmjax: " + ", ".join(
        f"{name} {'yes' if result[f'same_tokens_{name}'] else 'NO'}" for name in names))
  print(f"  load average (1, 5, 15 min): {', '.join(map(str, result['load_average_1_5_15min']))} "
        f"on {os.cpu_count()} cores")
  return result
