"""Equality across parallelism, with dropout on (bert_tiny's 0.1 on the residuals and the attention
probabilities): three steps of every objective under pmap(8) and three mesh shapes give the
single-device jit run's losses, gradient norms and params; gradient accumulation equals one big
batch; steps compile once; bad layouts fail early."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lmjax import models, objectives
from lmjax.errors import UserError
from lmjax.objectives import Settings
from lmjax.training import optim, parallel, steps

V, L, B, STEPS = 64, 16, 8, 3
SPECIALS = (0, 1, 2, 3, 4, 5, 6)


def model_cfg(kind, dropout=0.1):
  base = dict(vocab_size=V, hidden=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=L,
              dropout_rate=dropout, attention_dropout_rate=dropout)
  if kind in ("clm", "prefix_lm"):
    return models.TransformerConfig(**base, causal=True, pre_ln=True)
  # The BERT models scan their layers, so the "layers" rule is exercised too.
  heads = {"mlm_nsp": ("mlm", "nsp"), "electra": ("rtd",)}.get(kind, ("mlm",))
  # ELECTRA's generator at half width: 16 wide, 2 heads, which the 2x2x2 mesh's fsdp and tensor axes divide.
  return models.TransformerConfig(**base, type_vocab_size=2, scan_layers=True, heads=heads, generator_fraction=0.5)


def batch(kind, step, rows=B):
  r = np.random.RandomState(step)
  ids = r.randint(7, V, (rows, L)).astype(np.int32)
  if kind in ("clm", "prefix_lm"):
    seg = np.where(np.arange(L) < r.randint(4, L, (rows, 1)), 1, 2).astype(np.int32)
    seg[:, -2:] = 0  # padding
    pos = np.where(seg == 2, np.arange(L) - np.argmax(seg == 2, 1)[:, None], np.arange(L))
    return {"input_ids": np.where(seg > 0, ids, 0), "segment_ids": seg, "positions": pos.astype(np.int32)}
  length = r.randint(8, L + 1, (rows, 1))
  ids[:, 0], ids[:, 5] = 2, 3
  ids = np.where(np.arange(L) == length - 1, 3, np.where(np.arange(L) < length, ids, 0)).astype(np.int32)
  return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32),
          "token_type_ids": (np.arange(L) > 5).astype(np.int32)[None].repeat(rows, 0),
          "nsp_label": r.randint(0, 2, rows).astype(np.int32)}


def setup(kind, grad_accum=1, dropout=0.1):
  cfg = model_cfg(kind, dropout)
  s = Settings(name=kind, vocab_size=V, special_ids=SPECIALS, mask_rate=0.3,
               max_predictions=4 if kind in ("mlm_nsp", "electra") else 0)
  # eps=1e-3: some gradients are zero in exact arithmetic (attention key biases: softmax
  # ignores a shift shared by all keys) and ~1e-10 noise in float32, which Adam's
  # g / (|g| + eps) would blow up to lr-sized steps of either sign.
  tx, _ = optim.make_optimizer("adamw", 1e-2, "linear", 1, 10, weight_decay=0.1, eps=1e-3, clip_norm=1.0)
  step_fn = functools.partial(steps.train_step, model=models.build(cfg), objective=objectives.get(kind, cfg),
                              settings=s, tx=tx, grad_accum=grad_accum)
  return cfg, tx, step_fn


class CompileCounter:
  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self)

  def __call__(self, event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      self.count += 1


COMPILES = CompileCounter()


def run(kind, mode, mesh_shape=None, grad_accum=1, rows=B, dropout=0.1):
  """-> (per-step metrics, final params on the host, compilations after the first step)."""
  cfg, tx, step_fn = setup(kind, grad_accum, dropout)
  mesh = parallel.make_mesh(*mesh_shape) if mode == "mesh" else None
  parallel.check_batch_size(rows, mode, mesh, grad_accum)
  state = parallel.create_state(mode, cfg, tx, jax.random.key(0), mesh)
  step = parallel.compile_train_step(step_fn, mode, state, mesh)
  rng, history = jax.random.key(1), []
  for i in range(STEPS):
    if i == 1:
      compiles = COMPILES.count
    state, metrics = step(state, parallel.put_batch(batch(kind, i, rows), mode, mesh), rng)
    history.append(jax.tree.map(np.asarray, metrics))
  recompiles = COMPILES.count - compiles
  params = jax.tree.map(np.asarray, parallel.host_state(state, mode).params)
  return history, params, recompiles


@pytest.fixture(scope="module", params=["clm", "prefix_lm", "mlm", "mlm_nsp", "electra"])
def reference(request):
  return request.param, run(request.param, "jit")


# One decoder and one (scanned) encoder go through every mesh shape; the other objectives change only
# what prepare and loss compute, checked under pmap and the 2x2x2 mesh (data, fsdp and tensor at once).
EVERY_LAYOUT = ("clm", "mlm")


def assert_same(got, want):
  (got_history, got_params, recompiles), (want_history, want_params, _) = got, want
  assert recompiles == 0, "the step compiled again after its first call"
  for g, w in zip(got_history, want_history):
    assert set(g) == set(w)
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=1e-5, err_msg=k)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5), got_params, want_params)


def test_jit_compiles_once(reference):
  _, (history, _, recompiles) = reference
  assert recompiles == 0
  assert all(np.isfinite(h["loss"]) and h["nonfinite"] == 0 for h in history)
  assert history[0]["loss"] != history[-1]["loss"]   # it trains


def test_dropout_is_on_in_these_comparisons(reference):
  # Without it the equalities below would not show that masks are independent of the layout.
  kind, (history, _, _) = reference
  if kind not in EVERY_LAYOUT:
    pytest.skip(f"{kind} builds its model as {EVERY_LAYOUT} do, with the same dropout_rate")
  no_dropout, _, _ = run(kind, "jit", dropout=0.0)
  assert abs(float(history[0]["loss"]) - float(no_dropout[0]["loss"])) > 1e-3


def test_pmap_matches_jit(reference):
  kind, want = reference
  assert_same(run(kind, "pmap"), want)


def test_mesh_2x2x2_matches_jit(reference):
  kind, want = reference
  assert_same(run(kind, "mesh", (2, 2, 2)), want)


@pytest.mark.slow
def test_mesh_data8_matches_jit(reference):
  kind, want = reference
  if kind not in EVERY_LAYOUT:
    pytest.skip(f"{kind}: its step differs from {EVERY_LAYOUT}'s only in prepare/loss; pmap and 2x2x2 cover it")
  assert_same(run(kind, "mesh", (8, 1, 1)), want)


@pytest.mark.slow
def test_mesh_fsdp8_matches_jit(reference):
  kind, want = reference
  if kind not in EVERY_LAYOUT:
    pytest.skip(f"{kind}: its step differs from {EVERY_LAYOUT}'s only in prepare/loss; pmap and 2x2x2 cover it")
  assert_same(run(kind, "mesh", (1, 8, 1)), want)


@pytest.mark.parametrize("mode", ["jit", "pmap", "mesh"])
def test_nonfinite_step_leaves_params_and_moments_untouched(mode):
  cfg, tx, step_fn = setup("clm")
  mesh = parallel.make_mesh(2, 2, 2) if mode == "mesh" else None
  state = parallel.create_state(mode, cfg, tx, jax.random.key(0), mesh)
  step = parallel.compile_train_step(step_fn, mode, state, mesh)
  rng = jax.random.key(1)
  state, _ = step(state, parallel.put_batch(batch("clm", 0), mode, mesh), rng)  # moments now nonzero
  before = jax.tree.map(np.asarray, parallel.host_state(state, mode))
  # A NaN in one embedding row poisons the loss of every row that reads it.
  poisoned = jax.tree.map(np.array, before.params)
  poisoned["embed"]["token"]["embedding"][10] = np.nan
  state = parallel.place_state(before.replace(params=poisoned), mode, mesh, cfg, tx)
  state, metrics = step(state, parallel.put_batch(batch("clm", 1), mode, mesh), rng)
  after = jax.tree.map(np.asarray, parallel.host_state(state, mode))
  assert int(np.asarray(metrics["nonfinite"]).ravel()[0]) == 1 and int(np.asarray(after.skipped).ravel()[0]) == 1
  bits = lambda a: np.atleast_1d(a).view(np.uint8)  # NaN == NaN, bit for bit
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(bits(a), bits(b)),
               (after.params, after.opt_state), (poisoned, before.opt_state))


def test_grad_accumulation_equals_one_big_batch():
  # mlm_nsp has two loss terms with different denominators (masked tokens, rows):
  # both must be normalised over all four micro-batches, not per micro-batch.
  big = run("mlm_nsp", "jit", rows=2 * B)
  accumulated = run("mlm_nsp", "jit", grad_accum=4, rows=2 * B)
  assert_same(accumulated, big)


@pytest.mark.slow
def test_grad_accumulation_on_a_mesh():
  # Micro-batches are strided row sets, so each device holds a share of every one.
  big = run("mlm_nsp", "jit", rows=2 * B)
  assert_same(run("mlm_nsp", "mesh", (2, 2, 2), grad_accum=2, rows=2 * B), big)


def test_params_and_moments_follow_the_rules():
  cfg, tx, _ = setup("clm")
  shardings = parallel.state_shardings(parallel.make_mesh(2, 2, 2), cfg, tx)
  token = shardings.params["embed"]["token"]["embedding"]
  assert token.spec == P("tensor", "fsdp")   # vocab -> tensor, embed -> fsdp
  query = shardings.params["stack"]["layer_0"]["attn"]["query"]["kernel"]
  assert query.spec == P("fsdp", "tensor", None)
  adam = shardings.opt_state[1][0]  # chain(clip, adamw): adam's moments follow their params
  assert adam.mu["embed"]["token"]["embedding"].spec == token.spec
  assert shardings.step.spec == P()


def test_layout_errors_are_user_errors():
  with pytest.raises(UserError, match="data.batch_size=12"):
    parallel.check_batch_size(12, "pmap")
  with pytest.raises(UserError, match="grad_accum=4"):
    parallel.check_batch_size(8, "mesh", parallel.make_mesh(2, 2, 2), grad_accum=4)
  parallel.check_batch_size(16, "mesh", parallel.make_mesh(2, 2, 2), grad_accum=4)
  with pytest.raises(UserError, match="12 devices, but there are 8"):
    parallel.make_mesh(3, 2, 2)
  with pytest.raises(UserError, match="does not divide the 8 devices"):
    parallel.make_mesh(-1, 3, 1)
  assert dict(parallel.make_mesh(-1, 2, 1).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  with pytest.raises(UserError, match="parallel.mode"):
    parallel.check_batch_size(8, "tpu")


def test_nonfinite_update_is_dropped():
  cfg, tx, step_fn = setup("clm")
  state = parallel.create_state("jit", cfg, tx, jax.random.key(0))
  poisoned = state.replace(params=jax.tree.map(lambda x: x.at[...].set(jnp.nan) if x.ndim == 1 else x,
                                               state.params))
  before = jax.tree.map(np.asarray, poisoned)
  after, metrics = jax.jit(step_fn)(poisoned, batch("clm", 0), jax.random.key(1))
  assert metrics["nonfinite"] == 1 and after.skipped == 1 and after.step == 1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), after.params, before.params)


@pytest.mark.parametrize("name", ["adafactor", "lion"])
def test_other_optimizers_shard(name):
  # Adafactor's factored statistics are not param-shaped: they must come out replicated.
  cfg = model_cfg("mlm")
  tx, _ = optim.make_optimizer(name, 1e-3, "cosine", 2, 10, weight_decay=0.1, clip_norm=1.0)
  mesh = parallel.make_mesh(2, 2, 2)
  shardings = parallel.state_shardings(mesh, cfg, tx)
  init = functools.partial(parallel.init_state, cfg, tx)
  jax.jit(init, out_shardings=shardings).lower(jax.random.key(0))  # raises on an indivisible layout


def test_eval_step_matches_across_modes():
  cfg, tx, step_fn = setup("mlm_nsp")
  eval_fn = functools.partial(steps.eval_step, **{k: step_fn.keywords[k] for k in ("model", "objective", "settings")})
  results = {}
  for mode, mesh in [("jit", None), ("pmap", None), ("mesh", parallel.make_mesh(2, 2, 2))]:
    state = parallel.create_state(mode, cfg, tx, jax.random.key(0), mesh)
    evaluate = parallel.compile_eval_step(eval_fn, mode, mesh)
    results[mode] = jax.tree.map(np.asarray, evaluate(state.params, parallel.put_batch(batch("mlm_nsp", 0), mode, mesh),
                                                      jax.random.key(2)))
  for mode in ("pmap", "mesh"):
    for k, want in results["jit"].items():
      np.testing.assert_allclose(results[mode][k], want, rtol=1e-5, atol=1e-6, err_msg=f"{mode} {k}")
  assert results["jit"]["nsp_weight"] == B
