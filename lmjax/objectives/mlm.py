"""Masked LM as in BERT (Devlin et al. 2019), with the masking done inside the step.

Batch: input_ids, attention_mask (1 = real), token_type_ids, and word_start (first
piece of each word) for whole-word and span masking. Each row draws from its own key, so
a row's mask depends on (seed, step, row) only, never on how rows sit on devices.

Per row: select round(mask_rate * n) of the n real, non-special tokens (at least one,
at most max_predictions), as `masking` says: "token" (BERT), "whole_word" (BERT's
whole-word masking) or "span" (SpanBERT's spans of whole words); of the selected, 80%
become [MASK], 10% a random non-special token, 10% stay. Only selected positions carry
loss weight.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lmjax.errors import UserError
from lmjax.objectives.common import Objective, cross_entropy_sums


def random_tokens(key, shape, vocab_size: int, special_ids) -> jax.Array:
  """Uniform over the vocabulary minus the specials: draw an index among the allowed
  ids, then step over each special at or below it (in increasing order)."""
  specials = sorted(set(special_ids))
  ids = jax.random.randint(key, shape, 0, vocab_size - len(specials))
  for special in specials:
    ids = ids + (ids >= special)
  return ids


def select_tokens(candidate_L, n_select, key):
  """`n_select` candidates chosen uniformly without replacement."""
  score_L = jnp.where(candidate_L, jax.random.uniform(key, candidate_L.shape), jnp.inf)
  rank_L = jnp.argsort(jnp.argsort(score_L))
  return candidate_L & (rank_L < n_select)


def select_words(candidate_L, word_start_L, n_select, key):
  """Whole words, as BERT's create_pretraining_data.py picks them: in a random order, each word
  whose pieces still fit the budget n_select is selected whole; one that no longer fits is
  skipped and the next ones are still tried. If no word fits at all (every candidate word is
  longer than the budget), the first word in the order is selected cut to the budget, so a row
  with candidates always gets a prediction."""
  L = candidate_L.shape[0]
  # A word also starts at and after every non-candidate, so specials and padding never join one.
  after_other_L = jnp.pad(~candidate_L[:-1], (1, 0), constant_values=True)
  starts_L = word_start_L | ~candidate_L | after_other_L
  word_L = jnp.cumsum(starts_L) - 1  # word index of each token; at most L words
  pieces_W = jax.ops.segment_sum(candidate_L.astype(jnp.int32), word_L, num_segments=L)
  score_W = jnp.where(pieces_W > 0, jax.random.uniform(key, (L,)), jnp.inf)
  order_W = jnp.argsort(score_W)

  def take(count, w):   # one word of the random order: in if it fits what is left of the budget
    fits = (pieces_W[w] > 0) & (count + pieces_W[w] <= n_select)
    return count + jnp.where(fits, pieces_W[w], 0), fits
  count, fits_W = jax.lax.scan(take, jnp.zeros((), jnp.int32), order_W)
  chosen_W = jnp.zeros(L, bool).at[order_W].set(fits_W)
  selected_L = candidate_L & chosen_W[word_L]
  # No word fit: the first word of the order, its first n_select pieces.
  first_L = candidate_L & (word_L == order_W[0]) & (jnp.cumsum(word_L == order_W[0]) <= n_select)
  return jnp.where(count > 0, selected_L, first_L)


SPAN_P, SPAN_MAX_WORDS = 0.2, 10   # SpanBERT: span lengths ~ Geometric(0.2), clipped at 10 words
MASKINGS = ("token", "whole_word", "span")


def span_lengths(key, shape):
  """Span lengths in words, drawn from Geometric(SPAN_P) clipped (renormalised) to 1..SPAN_MAX_WORDS,
  as SpanBERT's masking.py draws them (mean 3.8 words)."""
  lengths = jnp.arange(1, SPAN_MAX_WORDS + 1)
  log_p = jnp.log(SPAN_P) + (lengths - 1) * jnp.log(1 - SPAN_P)
  return lengths[jax.random.categorical(key, log_p, shape=shape)]


def select_spans(candidate_L, word_start_L, n_select, key):
  """SpanBERT (Joshi et al. 2020): until n_select tokens are selected, draw a span length in words
  and an anchor among the unselected candidates, and select that many whole words from the
  anchor's word on; the last span stops where the budget does (as masking.py does)."""
  L = candidate_L.shape[0]
  after_other_L = jnp.pad(~candidate_L[:-1], (1, 0), constant_values=True)
  word_L = jnp.cumsum(word_start_L | ~candidate_L | after_other_L) - 1
  n_select = jnp.minimum(n_select, jnp.sum(candidate_L))

  def add_span(state):
    selected_L, key = state
    key, k_len, k_anchor = jax.random.split(key, 3)
    free_L = candidate_L & ~selected_L
    anchor = jax.random.categorical(k_anchor, jnp.where(free_L, 0.0, -jnp.inf))
    first_word = word_L[anchor]
    # Words first_word .. first_word + length - 1 (word indices count specials as words of their own).
    in_span_L = free_L & (word_L >= first_word) & (word_L < first_word + span_lengths(k_len, ()))
    room = n_select - jnp.sum(selected_L)
    return selected_L | (in_span_L & (jnp.cumsum(in_span_L) <= room)), key

  selected_L, _ = jax.lax.while_loop(lambda state: jnp.sum(state[0]) < n_select, add_span,
                                     (jnp.zeros(L, bool), key))
  return selected_L


def mask_row(ids_L, real_L, word_start_L, key, s):
  """One row -> (masked ids L, selected L)."""
  k_select, k_action, k_random = jax.random.split(key, 3)
  candidate_L = real_L & ~jnp.isin(ids_L, jnp.asarray(s.special_ids, ids_L.dtype))
  n_candidates = jnp.sum(candidate_L)
  n_select = jnp.maximum(1, jnp.round(n_candidates * s.mask_rate)).astype(jnp.int32)
  if s.max_predictions:
    n_select = jnp.minimum(n_select, s.max_predictions)
  if s.masking == "whole_word":
    selected_L = select_words(candidate_L, word_start_L, n_select, k_select)
  elif s.masking == "span":
    selected_L = select_spans(candidate_L, word_start_L, n_select, k_select)
  else:
    selected_L = select_tokens(candidate_L, n_select, k_select)
  action_L = jax.random.uniform(k_action, ids_L.shape)
  random_L = random_tokens(k_random, ids_L.shape, s.vocab_size, s.special_ids).astype(ids_L.dtype)
  masked_L = jnp.where(action_L < 0.8, s.mask_id, jnp.where(action_L < 0.9, random_L, ids_L))
  return jnp.where(selected_L, masked_L, ids_L), selected_L


def prepare(batch, rng_B, s):
  ids_BxL = batch["input_ids"]
  real_BxL = batch["attention_mask"].astype(bool) if "attention_mask" in batch else jnp.ones(ids_BxL.shape, bool)
  if s.masking not in MASKINGS:
    raise UserError(f"objective.masking={s.masking!r} is not one of {list(MASKINGS)}")
  by_words = s.masking in ("whole_word", "span")
  if by_words and "word_start" not in batch:
    raise UserError(f"objective.masking={s.masking} needs batch['word_start'] from the data pipeline "
                    "(BERT pairs have it); use objective.masking=token or produce word starts")
  word_start_BxL = batch["word_start"].astype(bool) if by_words else real_BxL
  masked_BxL, selected_BxL = jax.vmap(mask_row, (0, 0, 0, 0, None))(
      ids_BxL, real_BxL, word_start_BxL, rng_B, s)

  inputs = {"input_ids": masked_BxL, "attention_mask": real_BxL.astype(jnp.int32)}
  for key in ("token_type_ids", "segment_ids", "positions"):
    if key in batch:
      inputs[key] = batch[key]
  if not s.max_predictions:
    return inputs, {"labels": ids_BxL, "weights": {"mlm": selected_BxL.astype(jnp.float32)}}
  # M fixed slots per row, selected positions first (in order), the rest point at
  # position 0 with weight 0; the model's MLM head runs on these M positions only.
  M = s.max_predictions
  positions_BxM = jax.vmap(lambda sel_L: jnp.nonzero(sel_L, size=M, fill_value=0)[0])(selected_BxL)
  positions_BxM = positions_BxM.astype(jnp.int32)
  weights_BxM = jnp.arange(M) < jnp.sum(selected_BxL, -1, keepdims=True)
  labels_BxM = jnp.take_along_axis(ids_BxL, positions_BxM, 1)
  inputs["mlm_positions"] = positions_BxM
  return inputs, {"labels": labels_BxM, "weights": {"mlm": weights_BxM.astype(jnp.float32)}}


def loss(outputs, targets, s):
  return {"mlm": cross_entropy_sums(outputs.logits, targets["labels"], targets["weights"]["mlm"],
                                    s.z_loss, s.label_smoothing)}


def report(means):
  mlm = means["mlm"]
  return {"loss": mlm["loss"], "accuracy": mlm["correct"], "z_loss": mlm["z_loss"]}


OBJECTIVE = Objective(prepare=prepare, loss=loss, report=report, causal=False, batch="pairs", heads=("mlm",))
