"""`lmjax bench generate --config experiments/gpt_tiny.py [--new-tokens 256] [--json]`

Greedy decoding speed of the config's model (random weights; speed does not depend on
them): tokens/s with the KV cache at batch 1 and batch 32, and at batch 1 the speed
ratio of cached decoding to the reference that recomputes the full forward over the
whole prompt + new-token buffer at every step. Each program is compiled ahead of
time, so the figures time decoding alone. No EOS: every row makes all new tokens.
"""
from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import UserError
from lmjax.inference.generate import decode, decode_reference
from lmjax.models import build, init_params, model_config

PROMPT_LEN = 16
BATCHES = (1, 32)


def tokens_per_s(fn, model, params, batch: int, new_tokens: int) -> float:
  ids_BxP = jnp.asarray(np.random.default_rng(0).integers(0, model.cfg.vocab_size, (batch, PROMPT_LEN)),
                        jnp.int32)
  args = (model, params, ids_BxP, jnp.ones_like(ids_BxP), jax.random.key(0), jnp.float32(0.0),
          jnp.int32(0), jnp.float32(1.0))
  compiled = fn.lower(*args, max_new_tokens=new_tokens, eos_id=None, pad_id=0).compile()
  t0 = time.perf_counter()
  jax.block_until_ready(compiled(*args[1:]))
  return batch * new_tokens / (time.perf_counter() - t0)


def main(cfg, args) -> None:
  N = args.new_tokens
  if N < 1:
    raise UserError(f"--new-tokens {N}; ask for at least 1")
  mcfg = model_config(cfg.model)
  if not mcfg.causal:
    raise UserError("bench generate needs a decoder config (model.causal=True), e.g. experiments/gpt_tiny.py")
  note = ""
  if mcfg.max_len < PROMPT_LEN + N:
    # Only the learned position table depends on max_len; widen it so N new tokens fit.
    note = f"model.max_len {mcfg.max_len} widened to {PROMPT_LEN + N} to fit {N} new tokens"
    mcfg = dataclasses.replace(mcfg, max_len=PROMPT_LEN + N)
  model = build(mcfg)
  params = init_params(mcfg, jax.random.key(0))
  cached = {b: tokens_per_s(decode, model, params, b, N) for b in BATCHES}
  recompute = tokens_per_s(decode_reference, model, params, 1, N)
  result = {
      "new_tokens": N, "prompt_len": PROMPT_LEN, "device": jax.devices()[0].device_kind,
      **{f"cached_tokens_per_s_batch{b}": round(v, 1) for b, v in cached.items()},
      "recompute_tokens_per_s_batch1": round(recompute, 1),
      "cached_vs_recompute_batch1": round(cached[1] / recompute, 2),
  }
  if args.json:
    print(json.dumps(result))
    return
  if note:
    print(f"note: {note}")
  print(f"greedy decoding, {PROMPT_LEN}-token prompts, {N} new tokens, on {result['device']}")
  for b, v in cached.items():
    print(f"  KV cache, batch {b:>2}: {v:10.1f} tokens/s")
  print(f"  recompute, batch  1: {recompute:10.1f} tokens/s")
  print(f"  cached / recompute:  {cached[1] / recompute:10.2f}x (target >= 5x)")
