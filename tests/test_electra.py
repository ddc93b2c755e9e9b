"""ELECTRA (Clark et al. 2020) against the paper's definition: the discriminator reads the generator's
samples at the masked positions and the originals elsewhere; a token is "replaced" only where it
differs from the original; every real token and no padding carries the discriminator's loss; the
loss minimised is MLM + lambda x RTD, with no gradient through the sample; samples follow the
generator's softmax. Equality across jit/pmap/mesh is in test_parallel.py, FLOPs in test_flops.py,
export in test_convert.py."""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax import models, objectives
from lmjax.errors import UserError
from lmjax.models import electra as electra_model
from lmjax.objectives import Settings, electra
from lmjax.training import state as train_state

V, L, B = 64, 16, 8
SPECIALS = (0, 1, 2, 3, 4, 5, 6)
FORCED = 9   # the token the patched generator always samples


def tiny(**kw):
  return models.TransformerConfig(**{**dict(vocab_size=V, hidden=32, num_layers=2, num_heads=4, mlp_dim=64,
                                            max_len=L, type_vocab_size=2, heads=("rtd",), dropout_rate=0.0,
                                            attention_dropout_rate=0.0), **kw})


def batch():
  """Rows of [CLS] w.. [SEP] then padding; about a third of the words are FORCED, so some samples
  equal their originals."""
  r = np.random.RandomState(0)
  ids = np.where(r.rand(B, L) < 0.35, FORCED, r.randint(7, V, (B, L)))
  length = r.randint(8, L + 1, (B, 1))
  ids[:, 0] = 2
  ids = np.where(np.arange(L) == length - 1, 3, np.where(np.arange(L) < length, ids, 0)).astype(np.int32)
  return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray((ids != 0).astype(np.int32)),
          "token_type_ids": jnp.zeros((B, L), jnp.int32)}


def settings(max_predictions, weight=50.0):
  return Settings(name="electra", vocab_size=V, special_ids=SPECIALS, mask_rate=0.4,
                  max_predictions=max_predictions, electra_weight=weight)


def forced_params(cfg):
  """Params whose generator puts (all but e^-1000 of) its mass on FORCED."""
  params = models.init_params(cfg, jax.random.key(0))
  bias_V = jnp.zeros(V).at[FORCED].set(1000.0)
  head = {**params["generator"]["mlm_head"], "bias": bias_V}
  return {**params, "generator": {**params["generator"], "mlm_head": head}}


@pytest.mark.parametrize("max_predictions", [0, 5])
def test_discriminator_reads_samples_at_masked_positions_and_labels_by_the_original(max_predictions):
  cfg, s, b = tiny(), settings(max_predictions), batch()
  inputs, targets = electra.prepare(b, jax.random.split(jax.random.key(3), B), s)
  out = models.build(cfg).apply({"params": forced_params(cfg)}, **inputs)
  original, real = np.asarray(b["input_ids"]), np.asarray(b["attention_mask"]).astype(bool)
  replace = np.asarray(inputs["replace_mask"])
  disc_ids = np.asarray(out.rtd_input_ids)
  assert replace.any(-1).all() and not (replace & ~real).any()
  # Masked positions hold the sample; every other position the original (not [MASK], not a random token).
  np.testing.assert_array_equal(disc_ids, np.where(replace, FORCED, original))
  # The generator's input was masked there; the discriminator's is not.
  assert (np.asarray(inputs["input_ids"])[replace] == s.mask_id).any()
  # MLM weights: the selected positions only, as many as slots filled.
  w_mlm = np.asarray(targets["weights"]["mlm"])
  if max_predictions:
    pos = np.asarray(inputs["mlm_positions"])
    assert w_mlm.sum() == replace.sum() and (w_mlm.sum(-1) <= max_predictions).all()
    for r in range(B):
      np.testing.assert_array_equal(np.sort(pos[r][w_mlm[r] > 0]), np.flatnonzero(replace[r]))
  else:
    np.testing.assert_array_equal(w_mlm > 0, replace)
  # RTD weights: every real token, no padding.
  np.testing.assert_array_equal(np.asarray(targets["weights"]["rtd"]), real)
  # Labels: replaced = a sample that differs from the original; FORCED where FORCED stood is original.
  kept = replace & (original == FORCED)
  assert kept.any() and (replace & (original != FORCED)).any()
  logits = jnp.where(jnp.asarray(replace & (original != FORCED)), 3.0, -3.0)   # a perfect discriminator
  perfect = types.SimpleNamespace(**{**vars(out), "rtd_logits": logits})
  sums = electra.loss(perfect, targets, s)
  assert float(sums["rtd"]["correct"]) == real.sum()
  assert float(sums["rtd"]["replaced"]) == (replace & (original != FORCED)).sum()


def test_rtd_sums_by_hand():
  logits_1x3 = jnp.array([[0.0, -2.0, 1.0]])
  replaced_1x3 = jnp.array([[True, False, True]])
  weights_1x3 = jnp.array([[1.0, 1.0, 0.0]])   # the last is padding
  sums = electra.rtd_sums(logits_1x3, replaced_1x3, weights_1x3, 50.0)
  bce = np.log(2.0) + np.log1p(np.exp(-2.0))    # -log sigmoid(0) - log(1 - sigmoid(-2))
  np.testing.assert_allclose(float(sums["bce"]), bce, rtol=1e-6)
  np.testing.assert_allclose(float(sums["loss"]), 50.0 * bce, rtol=1e-6)
  assert float(sums["correct"]) == 1.0 and float(sums["replaced"]) == 1.0   # logit 0 says "original"


def test_loss_is_mlm_plus_lambda_rtd_and_no_gradient_flows_through_the_sample():
  cfg, b = tiny(), batch()
  model, params = models.build(cfg), models.init_params(cfg, jax.random.key(0))
  inputs, targets = electra.prepare(b, jax.random.split(jax.random.key(3), B), settings(5))

  def loss_fn(params, weight):   # what steps.train_step differentiates
    s = settings(5, weight)
    sums = electra.loss(model.apply({"params": params}, **inputs), targets, s)
    means = {t: {k: v / jnp.sum(targets["weights"][t]) for k, v in term.items()} for t, term in sums.items()}
    return sum(term["loss"] for term in means.values()), electra.report(means)

  grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (l0, m0), g0 = grad(params, 0.0)
  (l1, m1), _ = grad(params, 1.0)
  (l50, m50), g50 = grad(params, 50.0)
  # Linear in lambda, with the MLM mean as intercept and the unweighted RTD mean as slope.
  np.testing.assert_allclose(float(l0), float(m0["mlm_loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(l1) - float(l0), float(m0["rtd_loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(l50), float(m50["mlm_loss"]) + 50 * float(m50["rtd_loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(m50["loss"]), float(l50), rtol=1e-6)
  assert float(m0["rtd_loss"]) == float(m50["rtd_loss"]) > 0.1
  # The generator learns from its MLM loss alone: lambda does not reach it (the sample is data)...
  jax.tree.map(np.testing.assert_array_equal, g0["generator"], g50["generator"])
  assert any(np.abs(x).max() > 0 for x in jax.tree.leaves(g0["generator"]))
  # ...while the shared embeddings and the discriminator do get the RTD gradient.
  for path in (("rtd_head", "out", "kernel"), ("stack", "layer_0", "mlp", "wi", "kernel"),
               ("embed", "token", "embedding")):
    a, z = functools.reduce(dict.get, path, g50), functools.reduce(dict.get, path, g0)
    assert np.abs(a - z).max() > 1e-4, path


def test_samples_follow_the_softmax_row_by_row():
  p_V = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
  rows, M = 200, 100
  logits_BxMxV = jnp.broadcast_to(jnp.log(jnp.asarray(p_V, jnp.float32)) + 3.0, (rows, M, 5))  # a shift: same softmax
  keys_Bx2 = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(jax.random.key(0), i)))(jnp.arange(rows))
  draws = np.asarray(electra_model.sample(keys_Bx2, logits_BxMxV))
  n = draws.size
  freq = np.bincount(draws.ravel(), minlength=5) / n
  # 5 binomial standard deviations (n = 20,000): a bias of 1 point on the first token fails.
  assert (np.abs(freq - p_V) <= 5 * np.sqrt(p_V * (1 - p_V) / n)).all(), freq
  # A row's draw is a function of its key alone, not of where the row sits.
  flipped = np.asarray(electra_model.sample(keys_Bx2[::-1], logits_BxMxV))
  np.testing.assert_array_equal(flipped, draws[::-1])


def test_electra_needs_an_encoder_with_the_rtd_head():
  with pytest.raises(UserError, match="lacks \\['rtd'\\]"):
    objectives.get("electra", tiny(heads=("mlm",)))
  with pytest.raises(ValueError, match="cannot have heads"):
    tiny(heads=("rtd",), causal=True, type_vocab_size=0)
  with pytest.raises(UserError, match="needs an encoder"):
    objectives.get("electra", tiny(heads=(), causal=True, type_vocab_size=0))
  with pytest.raises(ValueError, match="generator_fraction"):
    tiny(generator_fraction=0.0)
  with pytest.raises(ValueError, match="drop mlm"):
    tiny(heads=("rtd", "mlm"))


def test_generator_is_narrow_shares_embeddings_and_finetuning_takes_the_discriminator():
  cfg = tiny(generator_fraction=0.5)
  params = models.init_params(cfg, jax.random.key(0))
  gen = electra_model.generator_config(cfg)
  assert (gen.hidden, gen.num_heads, gen.mlp_dim, gen.num_layers) == (16, 2, 32, 2)
  assert params["generator"]["embed_project"]["kernel"].shape == (32, 16)
  assert params["generator"]["mlm_head"]["transform"]["kernel"].shape == (16, 32)   # back to the table's width
  assert "embed" not in params["generator"]            # one token/position/segment table, the discriminator's
  # Fine-tuning (lmjax finetune --init) grafts by path: the discriminator's body, nothing else.
  task = models.init_params(tiny(heads=("classify",)), jax.random.key(1))
  grafted = train_state.graft(task, params)
  assert set(grafted) == set(task) and "generator" not in grafted and "rtd_head" not in grafted
  for name in ("embed", "embed_norm", "stack"):
    jax.tree.map(np.testing.assert_array_equal, grafted[name], jax.tree.map(np.asarray, params[name]))
