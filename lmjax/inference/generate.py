"""Text generation with the KV cache: greedy, sampled (temperature, top-k, top-p), or beam search.

    rows = generate(model, params, [[5, 17, 9], [5, 4]], max_new_tokens=32, eos_id=6, pad_id=0)

`decode` is one compiled program: prefill the left-padded prompt batch in one call,
then a `lax.while_loop` that feeds one token per row per iteration through the
cache and stops once every row has emitted EOS (finished rows emit pad).
Compiles: prompts are left-padded to a length bucket (the next power of two,
at least 16, at most the context left for the prompt), and temperature, top-k,
top-p and the seed are traced values, so one program serves every prompt batch
of the same size and bucket. `decode_reference` recomputes the full forward at
every step instead (no cache); tests and `lmjax bench generate` compare the two.
`beam_decode` is beam search in the same shape: one prefill, a while loop over B x num_beams rows
whose cache follows the beams; tests/test_generate.py checks it against an exhaustive search and
against transformers' beam search.
"""
from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmjax import checkpoint
from lmjax.data.tokenizer import load_tokenizer
from lmjax.errors import UserError
from lmjax.models import xla_cpu
from lmjax.models.decoder import init_cache

MIN_BUCKET = 16


def sample(logits_BxV, rng, temperature, top_k, top_p):
  """Next token per row. temperature 0 = greedy; top_k 0 and top_p 1 keep every token.

  All three are traced scalars. Top-p is applied after top-k, on the renormalised
  top-k distribution (as in Hugging Face's warpers).
  """
  def greedy():
    return xla_cpu.argmax(logits_BxV).astype(jnp.int32)

  def sampled():
    V = logits_BxV.shape[-1]
    logits_BxV_t = logits_BxV / temperature
    sorted_BxV = jnp.sort(logits_BxV_t, -1)[:, ::-1]
    rank_V = jnp.arange(V)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    sorted_BxV = jnp.where(rank_V < k, sorted_BxV, -jnp.inf)
    probs_BxV = jax.nn.softmax(sorted_BxV, -1)
    # Keep a token while the mass strictly before it is < p; the top token always stays.
    keep_BxV = (jnp.cumsum(probs_BxV, -1) - probs_BxV < top_p) & (rank_V < k)
    n_keep_Bx1 = jnp.sum(keep_BxV, -1, keepdims=True)
    threshold_Bx1 = jnp.take_along_axis(sorted_BxV, n_keep_Bx1 - 1, -1)
    logits_BxV_t = jnp.where(logits_BxV_t >= threshold_Bx1, logits_BxV_t, -jnp.inf)
    return jax.random.categorical(rng, logits_BxV_t, -1).astype(jnp.int32)

  return jax.lax.cond(temperature > 0, sampled, greedy)


def _pick(logits_BxV, rng, step, done_B, temperature, top_k, top_p, eos_id, pad_id):
  """Sample this step's tokens; rows already finished emit pad. Returns (tokens_B, done_B)."""
  tok_B = sample(logits_BxV, jax.random.fold_in(rng, step), temperature, top_k, top_p)
  tok_B = jnp.where(done_B, pad_id, tok_B)
  if eos_id is not None:
    done_B = done_B | (tok_B == eos_id)
  return tok_B, done_B


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id", "pad_id"))
def decode(model, params, ids_BxP, mask_BxP, rng, temperature, top_k, top_p, *,
           max_new_tokens: int, eos_id: int | None, pad_id: int):
  """New tokens B x N (N = max_new_tokens) for left-padded prompts; pad after each row's EOS."""
  B, P = ids_BxP.shape
  N = max_new_tokens
  pick = functools.partial(_pick, rng=rng, temperature=temperature, top_k=top_k, top_p=top_p,
                           eos_id=eos_id, pad_id=pad_id)
  out = model.apply({"params": params}, ids_BxP, attention_mask=mask_BxP,
                    cache=init_cache(model.cfg, B, P + N))
  tok_B, done_B = pick(out.logits[:, -1], step=0, done_B=jnp.zeros((B,), bool))
  tokens_BxN = jnp.full((B, N), pad_id, jnp.int32).at[:, 0].set(tok_B)

  def cond(state):
    step, _, _, done_B, _ = state
    return (step < N) & ~jnp.all(done_B)

  def body(state):
    step, tokens_BxN, tok_B, done_B, cache = state
    out = model.apply({"params": params}, tok_B[:, None], cache=cache)
    tok_B, done_B = pick(out.logits[:, -1], step=step, done_B=done_B)
    tokens_BxN = jax.lax.dynamic_update_slice(tokens_BxN, tok_B[:, None], (0, step))
    return step + 1, tokens_BxN, tok_B, done_B, out.cache

  state = (jnp.int32(1), tokens_BxN, tok_B, done_B, out.cache)
  return jax.lax.while_loop(cond, body, state)[1]


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id", "pad_id"))
def decode_reference(model, params, ids_BxP, mask_BxP, rng, temperature, top_k, top_p, *,
                     max_new_tokens: int, eos_id: int | None, pad_id: int):
  """Same contract as `decode`, without a cache: every step runs the full forward over a
  fixed P + N buffer (fixed, so it compiles once) and reads the logits at the cursor."""
  B, P = ids_BxP.shape
  N = max_new_tokens
  pick = functools.partial(_pick, rng=rng, temperature=temperature, top_k=top_k, top_p=top_p,
                           eos_id=eos_id, pad_id=pad_id)
  ids_BxT = jnp.concatenate([ids_BxP.astype(jnp.int32), jnp.full((B, N), pad_id, jnp.int32)], 1)
  valid_BxT = jnp.concatenate([mask_BxP.astype(bool), jnp.zeros((B, N), bool)], 1)

  def cond(state):
    step, _, _, done_B = state
    return (step < N) & ~jnp.all(done_B)

  def body(state):
    step, ids_BxT, valid_BxT, done_B = state
    # Position = number of real tokens before, as the cached decoder computes it.
    positions_BxT = jnp.cumsum(valid_BxT, -1) - valid_BxT
    logits_BxTxV = model.apply({"params": params}, ids_BxT, attention_mask=valid_BxT,
                               positions=positions_BxT.astype(jnp.int32)).logits
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, P + step - 1, 1, keepdims=False)
    tok_B, done_B = pick(logits_BxV, step=step, done_B=done_B)
    ids_BxT = jax.lax.dynamic_update_slice(ids_BxT, tok_B[:, None], (0, P + step))
    valid_BxT = jax.lax.dynamic_update_slice(valid_BxT, jnp.ones((B, 1), bool), (0, P + step))
    return step + 1, ids_BxT, valid_BxT, done_B

  state = jax.lax.while_loop(cond, body, (jnp.int32(0), ids_BxT, valid_BxT, jnp.zeros((B,), bool)))
  return state[1][:, P:]


NEG = -1.0e9   # the score of a beam that does not exist; finite, so sums never give inf - inf


def _beam_select(logits_BKxV, state, step, *, B, K, N, eos_id, length_penalty):
  """One step of beam search, as transformers' (generation/utils.py, _beam_search): the 2K best
  continuations of all K beams by summed log-probability; of those ranked below K, the ones that end
  (EOS, or the N-th token) join the finished hypotheses, scored sum / length**length_penalty (length
  counts the new tokens, EOS included), and the K best finished are kept; the K best that do not end
  run on. Returns the new state and, per running beam, the beam it extends (B x K)."""
  run_scores_BxK, run_BxKxN, fin_scores_BxK, fin_BxKxN, fin_done_BxK, alive_B, _ = state
  V = logits_BKxV.shape[-1]
  logp_BxKxV = jax.nn.log_softmax(logits_BKxV.reshape(B, K, V), -1) + run_scores_BxK[..., None]
  top_Bx2K, index_Bx2K = jax.lax.top_k(logp_BxKxV.reshape(B, K * V), 2 * K)
  src_Bx2K, tok_Bx2K = index_Bx2K // V, (index_Bx2K % V).astype(jnp.int32)
  seqs_Bx2KxN = jnp.take_along_axis(run_BxKxN, src_Bx2K[..., None], 1)
  seqs_Bx2KxN = jnp.where(jnp.arange(N) == step, tok_Bx2K[..., None], seqs_Bx2KxN)
  ends_Bx2K = jnp.broadcast_to(step + 1 == N, tok_Bx2K.shape)
  if eos_id is not None:
    ends_Bx2K = ends_Bx2K | (tok_Bx2K == eos_id)

  # The K best that go on.
  run_scores_BxK, pick_BxK = jax.lax.top_k(top_Bx2K + ends_Bx2K * NEG, K)
  run_BxKxN = jnp.take_along_axis(seqs_Bx2KxN, pick_BxK[..., None], 1)
  src_BxK = jnp.take_along_axis(src_Bx2K, pick_BxK, 1)

  # The K best finished so far; only the top K continuations may finish, as in transformers.
  finishing_Bx2K = ends_Bx2K & (jnp.arange(2 * K) < K)
  new_Bx2K = top_Bx2K / (step + 1.0) ** length_penalty + (~alive_B[:, None]) * NEG + (~finishing_Bx2K) * NEG
  merged_Bx3K = jnp.concatenate([fin_scores_BxK, new_Bx2K], 1)
  fin_scores_BxK, keep_BxK = jax.lax.top_k(merged_Bx3K, K)
  fin_BxKxN = jnp.take_along_axis(jnp.concatenate([fin_BxKxN, seqs_Bx2KxN], 1), keep_BxK[..., None], 1)
  fin_done_BxK = jnp.take_along_axis(jnp.concatenate([fin_done_BxK, finishing_Bx2K], 1), keep_BxK, 1)

  # Can a running beam still beat the worst finished one? Its sum only falls; with a positive
  # penalty its length can grow to N (transformers' early_stopping="never": exact, not a heuristic).
  best_length = jnp.where(length_penalty > 0, jnp.float32(N), step + 1.0)
  best_possible_B = run_scores_BxK[:, 0] / best_length ** length_penalty
  worst_BxK = jnp.where(fin_done_BxK, jnp.min(fin_scores_BxK, 1, keepdims=True), NEG)
  alive_B = alive_B & jnp.any(best_possible_B[:, None] > worst_BxK, -1)
  can_continue = ~jnp.all(ends_Bx2K)
  state = (run_scores_BxK, run_BxKxN, fin_scores_BxK, fin_BxKxN, fin_done_BxK, alive_B, can_continue)
  return state, src_BxK


def _by_row(f, cache):
  """f applied to each of the cache's arrays that have the batch first: all but the cursor."""
  rows = {name: cache[name] for name in ("k", "v", "valid")}
  return {**jax.tree.map(f, rows), "index": cache["index"]}


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "num_beams", "eos_id", "pad_id"))
def beam_decode(model, params, ids_BxP, mask_BxP, length_penalty, *, max_new_tokens: int, num_beams: int,
                eos_id: int | None, pad_id: int):
  """(tokens_BxN, scores_B): each prompt's best hypothesis by beam search (pad after its EOS) and its
  score, sum of log-probabilities / length**length_penalty. One compiled program: the prompts are
  prefilled once, their caches copied to K beams, then a while loop advances all B x K beams one
  token per iteration and reorders the cache to follow the beams they extend."""
  B, P = ids_BxP.shape
  N, K = max_new_tokens, num_beams
  select = functools.partial(_beam_select, B=B, K=K, N=N, eos_id=eos_id,
                             length_penalty=jnp.asarray(length_penalty, jnp.float32))
  out = model.apply({"params": params}, ids_BxP, attention_mask=mask_BxP, cache=init_cache(model.cfg, B, P + N))
  cache = _by_row(lambda x: jnp.repeat(x, K, 0), out.cache)
  # Only beam 0 exists at first, so the K copies of the prompt do not give K equal beams.
  run_scores_BxK = jnp.full((B, K), NEG, jnp.float32).at[:, 0].set(0.0)
  run_BxKxN = jnp.full((B, K, N), pad_id, jnp.int32)
  state = (run_scores_BxK, run_BxKxN, jnp.full((B, K), NEG, jnp.float32), run_BxKxN, jnp.zeros((B, K), bool),
           jnp.ones((B,), bool), jnp.bool_(True))
  state, _ = select(jnp.repeat(out.logits[:, -1], K, 0), state, 0)   # the copies need no reordering

  def cond(carry):
    step, state, _ = carry
    return (step < N) & jnp.any(state[5]) & state[6]

  def body(carry):
    step, state, cache = carry
    tok_BK = jax.lax.dynamic_index_in_dim(state[1], step - 1, 2, keepdims=False).reshape(B * K)
    out = model.apply({"params": params}, tok_BK[:, None], cache=cache)
    state, src_BxK = select(out.logits[:, -1], state, step)
    rows_BK = (jnp.arange(B)[:, None] * K + src_BxK).reshape(B * K)
    cache = _by_row(lambda x: jnp.take(x, rows_BK, 0), out.cache)
    return step + 1, state, cache

  _, state, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), state, cache))
  return state[3][:, 0], state[2][:, 0]


def beam_search(model, params, prompts: list[list[int]], max_new_tokens: int, *, num_beams: int,
                length_penalty: float = 1.0, eos_id: int | None = None,
                pad_id: int = 0) -> tuple[list[list[int]], list[float]]:
  """(each prompt's best new tokens up to EOS, its score sum log p / length**length_penalty)."""
  if num_beams < 1:
    raise UserError(f"num_beams={num_beams}; it must be at least 1")
  ids_BxP, mask_BxP = left_pad(prompts, model.cfg.max_len, max_new_tokens, pad_id)
  tokens_BxN, scores_B = beam_decode(model, params, jnp.asarray(ids_BxP), jnp.asarray(mask_BxP),
                                     jnp.float32(length_penalty), max_new_tokens=max_new_tokens,
                                     num_beams=num_beams, eos_id=eos_id, pad_id=pad_id)
  return trim(tokens_BxN, eos_id), [float(s) for s in np.asarray(scores_B)]


def bucket(n: int, limit: int) -> int:
  """Padded prompt length: the next power of two >= n (at least MIN_BUCKET), at most `limit`."""
  return min(max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length()), limit)


def prompt_limit(max_len: int, max_new_tokens: int) -> int:
  """Prompt tokens that fit in the model's context next to max_new_tokens new ones."""
  if max_new_tokens < 1:
    raise UserError(f"max_new_tokens={max_new_tokens}; ask for at least 1 new token")
  if max_new_tokens >= max_len:
    raise UserError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the model's "
                    f"context of {max_len} tokens (model.max_len); ask for fewer new tokens")
  return max_len - max_new_tokens


def left_pad(prompts: list[list[int]], max_len: int, max_new_tokens: int, pad_id: int):
  """(ids_BxP, mask_BxP) numpy, left-padded to the prompt bucket. A prompt longer than the
  context left for it keeps its last tokens, and stderr says so."""
  limit = prompt_limit(max_len, max_new_tokens)
  rows = []
  for i, p in enumerate(prompts):
    if not p:
      raise UserError(f"prompt {i + 1} is empty after tokenization; give at least one token")
    if len(p) > limit:
      print(f"lmjax generate: prompt {i + 1} has {len(p)} tokens; keeping its last {limit} "
            f"(model.max_len {max_len} - {max_new_tokens} new tokens)", file=sys.stderr)
      p = p[-limit:]
    rows.append(list(p))
  P = bucket(max(len(p) for p in rows), limit)
  ids_BxP = np.full((len(rows), P), pad_id, np.int32)
  mask_BxP = np.zeros((len(rows), P), np.int32)
  for b, p in enumerate(rows):
    ids_BxP[b, P - len(p):] = p
    mask_BxP[b, P - len(p):] = 1
  return ids_BxP, mask_BxP


def trim(tokens_BxN, eos_id: int | None) -> list[list[int]]:
  """Each row's new tokens up to and including its EOS."""
  rows = []
  for row in np.asarray(tokens_BxN).tolist():
    if eos_id is not None and eos_id in row:
      row = row[:row.index(eos_id) + 1]
    rows.append(row)
  return rows


def decode_args(model, params, prompts, max_new_tokens, temperature, top_k, top_p, seed, num_samples,
                eos_id, pad_id):
  """The positional and keyword arguments of `decode` for a list of token-id prompts."""
  if num_samples < 1:
    raise UserError(f"num_samples={num_samples}; it must be at least 1")
  if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
    raise UserError(f"temperature={temperature}, top_k={top_k}, top_p={top_p}: need temperature >= 0 "
                    f"(0 = greedy), top_k >= 0 (0 = off), 0 < top_p <= 1")
  ids_BxP, mask_BxP = left_pad(prompts, model.cfg.max_len, max_new_tokens, pad_id)
  ids_BxP, mask_BxP = np.repeat(ids_BxP, num_samples, 0), np.repeat(mask_BxP, num_samples, 0)
  args = (model, params, jnp.asarray(ids_BxP), jnp.asarray(mask_BxP), jax.random.key(seed),
          jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
  return args, dict(max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)


def generate(model, params, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, num_samples: int = 1,
             eos_id: int | None = None, pad_id: int = 0, reference: bool = False, num_beams: int = 1,
             length_penalty: float = 1.0) -> list[list[int]]:
  """New token ids for each prompt (each repeated num_samples times, in order), up to EOS;
  num_beams > 1: each prompt's best beam-search hypothesis."""
  if num_beams > 1:
    check_beams(num_beams, temperature, num_samples)
    return beam_search(model, params, prompts, max_new_tokens, num_beams=num_beams,
                       length_penalty=length_penalty, eos_id=eos_id, pad_id=pad_id)[0]
  args, kwargs = decode_args(model, params, prompts, max_new_tokens, temperature, top_k, top_p, seed,
                             num_samples, eos_id, pad_id)
  fn = decode_reference if reference else decode
  return trim(fn(*args, **kwargs), eos_id)


def check_beams(num_beams: int, temperature: float, num_samples: int) -> None:
  if temperature > 0 or num_samples > 1:
    raise UserError(f"num_beams={num_beams} is a search for the most likely text; it takes no "
                    f"temperature ({temperature}) or num_samples ({num_samples}): drop them, or use num_beams=1")


def generate_text(workdir, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
                  top_k: int = 0, top_p: float = 1.0, seed: int = 0, num_samples: int = 1, num_beams: int = 1,
                  length_penalty: float = 1.0) -> dict:
  """`lmjax generate`: each prompt's continuation from a decoder workdir, and the decoding speed.

  Returns {"samples": [{"prompt", "sample", "text", "new_tokens", "ended_by_eos"}], "tokens",
  "seconds", "compile_s", "batch", "prompt_bucket"}; `text` is the prompt and its continuation.
  """
  model, params = checkpoint.load_model(workdir)
  if not model.cfg.causal:
    raise UserError(f"{workdir} holds an encoder (model.causal=False), which cannot generate; "
                    f"use lmjax fill-mask, or a decoder (GPT) workdir")
  tok = load_tokenizer(str(workdir))
  prompt_ids = [tok.encode(text) for text in prompts]
  # An empty prompt starts from BOS where the tokenizer has one.
  prompt_ids = [p if p or tok.bos_id is None else [tok.bos_id] for p in prompt_ids]
  pad_id = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
  if num_beams < 1:
    raise UserError(f"num_beams={num_beams}; it must be at least 1")
  if num_beams > 1:
    check_beams(num_beams, temperature, num_samples)
  call_args, kwargs = decode_args(model, params, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed,
                                  num_samples, tok.eos_id, pad_id)
  program = decode
  if num_beams > 1:
    program = beam_decode
    call_args = call_args[:4] + (jnp.float32(length_penalty),)
    kwargs = dict(kwargs, num_beams=num_beams)
  # Compile ahead of time so the reported speed is decoding alone.
  t0 = time.perf_counter()
  compiled = program.lower(*call_args, **kwargs).compile()
  t1 = time.perf_counter()
  tokens_BxN = jax.block_until_ready(compiled(*call_args[1:]))
  if num_beams > 1:
    tokens_BxN = tokens_BxN[0]
  t2 = time.perf_counter()
  rows = trim(tokens_BxN, tok.eos_id)
  samples = []
  for b, new in enumerate(rows):
    ids = prompt_ids[b // num_samples]
    shown = [t for t in new if t != tok.eos_id]
    head, full = tok.decode(ids), tok.decode(ids + shown)
    continuation = full[len(head):] if full.startswith(head) else tok.decode(shown)
    samples.append({"prompt": b // num_samples, "sample": b % num_samples,
                    "text": prompts[b // num_samples] + continuation, "new_tokens": len(new),
                    "ended_by_eos": tok.eos_id in new})
  return {"samples": samples, "tokens": sum(len(r) for r in rows), "seconds": t2 - t1, "compile_s": t1 - t0,
          "batch": len(rows), "prompt_bucket": int(call_args[2].shape[1])}
