"""Fill-mask: the top-k tokens, with probabilities, for each [MASK] in each text.

    ids = encode_masked(tok, "The [MASK] sat on the mat.")
    [[(id, prob), ...]] = fill_mask(model, params, [ids], mask_id=tok.mask_id, pad_id=tok.pad_id)[0]

Texts are padded to a length bucket and their mask positions to a count bucket
(powers of two), so one compiled program serves many batches.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lmjax import checkpoint
from lmjax.data.tokenizer import SentencePieceTokenizer, load_tokenizer
from lmjax.errors import UserError

MASK = "[MASK]"


def encode_masked(tok, text: str) -> list[int]:
  """[CLS] text [SEP] with each literal "[MASK]" as tok.mask_id.

  The text is split at "[MASK]" and each piece encoded alone, since a sentencepiece
  model never produces control symbols like [MASK] from text. With sentencepiece,
  the space before a [MASK] goes with the mask (a masked word's piece carries its
  leading '▁'), and a piece's leading space after a [MASK] comes back as the
  model's dummy prefix.
  """
  if tok.mask_id is None:
    raise UserError("this tokenizer has no [MASK] token (GPT-2?); fill-mask needs a BERT-style tokenizer")
  parts = text.split(MASK)
  if len(parts) == 1:
    raise UserError(f"no {MASK} in text {text!r}; write {MASK} where a token should be predicted")
  sentencepiece = isinstance(tok, SentencePieceTokenizer)
  ids = [] if tok.cls_id is None else [tok.cls_id]
  for i, part in enumerate(parts):
    if sentencepiece:
      if i + 1 < len(parts) and part.endswith(" "):
        part = part[:-1]
      if i > 0 and part.startswith(" "):
        part = part[1:]
    if part:
      ids += tok.encode(part)
    if i + 1 < len(parts):
      ids.append(tok.mask_id)
  return ids + ([] if tok.sep_id is None else [tok.sep_id])


def check_model(model) -> None:
  cfg = model.cfg
  if cfg.causal or "mlm" not in cfg.heads:
    kind = "a decoder (GPT)" if cfg.causal else f"an encoder with heads {tuple(cfg.heads)}"
    raise UserError(f"fill-mask needs an encoder with the mlm head (model.heads includes 'mlm'); "
                    f"this model is {kind}")


@functools.partial(jax.jit, static_argnames=("model", "k"))
def top_k_at(model, params, ids_BxL, valid_BxL, positions_BxM, *, k: int):
  """(probs_BxMxk, ids_BxMxk): the k most likely tokens at each of M positions, in fp32."""
  logits_BxMxV = model.apply({"params": params}, ids_BxL, attention_mask=valid_BxL,
                             mlm_positions=positions_BxM).logits
  return jax.lax.top_k(jax.nn.softmax(logits_BxMxV, -1), k)


def _bucket(n: int, least: int) -> int:
  return max(least, 1 << max(n - 1, 0).bit_length())


def fill_mask(model, params, rows: list[list[int]], *, mask_id: int, pad_id: int,
              top_k: int = 5) -> list[list[list[tuple[int, float]]]]:
  """For each row, for each mask_id in it (left to right), the top_k (token id, probability)."""
  check_model(model)
  max_len = model.cfg.max_len
  if not 1 <= top_k <= model.cfg.vocab_size:
    raise UserError(f"top_k={top_k}; it must be between 1 and the vocabulary size {model.cfg.vocab_size}")
  for b, row in enumerate(rows):
    if mask_id not in row:
      raise UserError(f"text {b + 1} has no {MASK} token; write {MASK} where a token should be predicted")
    if len(row) > max_len:
      raise UserError(f"text {b + 1} has {len(row)} tokens, more than the model's {max_len} "
                      f"(model.max_len); shorten it")
  where = [[i for i, t in enumerate(row) if t == mask_id] for row in rows]
  L = min(_bucket(max(map(len, rows)), 16), max_len)
  M = _bucket(max(map(len, where)), 1)
  ids_BxL = np.full((len(rows), L), pad_id, np.int32)
  valid_BxL = np.zeros((len(rows), L), np.int32)
  positions_BxM = np.zeros((len(rows), M), np.int32)  # unused slots read position 0, then are dropped
  for b, row in enumerate(rows):
    ids_BxL[b, :len(row)] = row
    valid_BxL[b, :len(row)] = 1
    positions_BxM[b, :len(where[b])] = where[b]
  probs_BxMxk, ids_BxMxk = jax.device_get(top_k_at(model, params, ids_BxL, valid_BxL, positions_BxM,
                                                   k=top_k))
  return [[[(int(t), float(p)) for t, p in zip(ids_BxMxk[b, m], probs_BxMxk[b, m])]
           for m in range(len(where[b]))] for b in range(len(rows))]


def fill_mask_text(workdir, texts: list[str], top_k: int = 5) -> list[list[list[tuple[str, float]]]]:
  """`lmjax fill-mask`: for each text, for each [MASK] in it, the top_k (piece, probability) pairs."""
  model, params = checkpoint.load_model(workdir)
  check_model(model)
  tok = load_tokenizer(str(workdir))
  rows = [encode_masked(tok, text) for text in texts]
  results = fill_mask(model, params, rows, mask_id=tok.mask_id, pad_id=tok.pad_id or 0, top_k=top_k)
  return [[[(tok.id_to_piece(t), p) for t, p in candidates] for candidates in masks] for masks in results]
