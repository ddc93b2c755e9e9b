"""Model properties on tiny configs: parameter counts, causality by gradients, packing,
the KV cache, scan/loop and remat equivalence, mixed precision, options, padding."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.models import PRESETS, TransformerConfig, build, init_params, model_config, param_count
from lmjax.models.config import REMAT
from lmjax.models.decoder import init_cache
from lmjax.models.layers import QUERY_BLOCK, stack_layers
from lmjax.models.xla_cpu import argmax, dense_dot_general, materialize_grad

TINY = dict(vocab_size=61, hidden=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32,
            dropout_rate=0.0, attention_dropout_rate=0.0, init_std=0.2)
GPT = dict(TINY, causal=True, pre_ln=True, activation="gelu_tanh", norm_eps=1e-5)
BERT = dict(TINY, type_vocab_size=2, heads=("mlm", "nsp"))

PARAM_COUNTS = {"bert-tiny": 4_433_468, "bert-mini": 11_267_900, "bert-base": 110_106_428,
                "bert-large": 336_226_108, "gpt-tiny": 5_387_776, "gpt2-small": 124_439_808,
                "gpt2-medium": 354_823_168}


def setup(**fields):
  """(cfg, apply, params); apply(params, ids, **kwargs) is jitted, since eager Flax
  dispatches op by op and would dominate the runtime."""
  cfg = TransformerConfig(**fields)
  return cfg, jitted(cfg), jax.jit(lambda: init_params(cfg, jax.random.key(0)))()


def jitted(cfg):
  model = build(cfg)
  return jax.jit(lambda params, ids, **kwargs: model.apply({"params": params}, ids, **kwargs))


def random_ids(shape, seed=0, vocab=TINY["vocab_size"]):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_param_count(preset):
  assert set(PRESETS) == set(PARAM_COUNTS)
  assert param_count(TransformerConfig(**PRESETS[preset])) == PARAM_COUNTS[preset]


def test_param_counts_equal_transformers():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  with torch.device("meta"):  # shapes only: no memory, no init time
    bert = transformers.BertForPreTraining(transformers.BertConfig())
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config())
  assert sum(p.numel() for p in bert.parameters()) == PARAM_COUNTS["bert-base"]
  assert sum(p.numel() for p in gpt2.parameters()) == PARAM_COUNTS["gpt2-small"]


def test_nanogpts_bias_false_is_use_bias_and_norm_bias_false():
  """nanoGPT's model.py with bias=False at shakespeare_char's CPU flags (4 x 128, 65 chars, block 64)
  has 804,096 parameters (wte 8,320 + wpe 8,192 + 4 x 196,864 + ln_f 128). The config keeps
  lmjax's LayerNorm biases (9 x 128 more, README "Reproducing nanoGPT's Shakespeare")."""
  from lmjax.config import load_config
  cfg = model_config(load_config("experiments/shakespeare_char.py").model)
  assert not cfg.use_bias and param_count(dataclasses.replace(cfg, norm_bias=False)) == 804_096
  assert param_count(cfg) == 804_096 + 9 * 128
  with_biases = 4 * (3 * 128 + 128 + 512 + 128)   # q, k, v, out; wi, wo
  assert param_count(dataclasses.replace(cfg, use_bias=True)) == 804_096 + 9 * 128 + with_biases


@pytest.mark.parametrize("scan", [False, True])
def test_scale_residual_init_is_gpt2s(scan):
  """GPT-2's init (nanoGPT's, HF's): the kernels of attention's out and the MLP's wo, which add
  into the residual stream, at init_std / sqrt(2 N); every other kernel and embedding at init_std."""
  fields = dict(GPT, hidden=128, mlp_dim=512, num_layers=8, init_std=0.02, scan_layers=scan)
  for scaled in (False, True):
    params = init_params(TransformerConfig(**fields, scale_residual_init=scaled), jax.random.key(0))
    stds = {jax.tree_util.keystr(path): float(np.std(x)) for path, x in jax.tree_util.tree_leaves_with_path(params)
            if x.ndim >= 2 and float(np.std(x)) > 0}   # kernels and embeddings (a stacked bias is 2-D but 0)
    residual = {k: v for k, v in stds.items() if re.search(r"'(out|wo)'", k)}
    assert len(residual) == (2 if scan else 2 * 8) and len(stds) > len(residual)
    want = 0.02 / 4 if scaled else 0.02   # sqrt(2 x 8 layers) = 4
    for k, v in stds.items():
      assert v == pytest.approx(want if k in residual else 0.02, rel=0.05), k


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
def test_decoder_is_causal_by_gradients(position):
  """d logits[t] / d x[s] is exactly zero for every s > t: a perturbation added to the
  input embeddings (through the token table, with distinct tokens) cannot flow back.
  Untied, so the table is not also the output projection."""
  cfg, model, params = setup(**GPT, position=position, tie_embeddings=False)
  L, t = 10, 4
  ids_1xL = jnp.arange(L)[None] + 3  # distinct tokens: row s of the table feeds position s only

  def logits_at_t(table_VxD):
    p = {**params, "embed": {**params["embed"], "token": {"embedding": table_VxD}}}
    return model(p, ids_1xL).logits[0, t].sum()

  grad_VxD = jax.jit(jax.grad(logits_at_t))(params["embed"]["token"]["embedding"])
  grad_LxD = grad_VxD[ids_1xL[0]]
  assert np.all(np.asarray(grad_LxD[t + 1:]) == 0)
  assert np.all(np.abs(np.asarray(grad_LxD[:t + 1])).sum(-1) > 0)  # the past does flow


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_packed_documents_match_running_alone(kind):
  cfg, model, params = setup(**(GPT if kind == "decoder" else BERT))
  a, b = random_ids((1, 5), 1), random_ids((1, 4), 2)
  pad = jnp.zeros((1, 3), jnp.int32)
  ids_1xL = jnp.concatenate([a, b, pad], 1)
  segments_1xL = jnp.array([[1] * 5 + [2] * 4 + [0] * 3])
  positions_1xL = jnp.array([list(range(5)) + list(range(4)) + [0] * 3])
  packed = model(params, ids_1xL, attention_mask=segments_1xL > 0,
                       segment_ids=segments_1xL, positions=positions_1xL)
  alone_a = model(params, a)
  alone_b = model(params, b)
  field = "logits"
  np.testing.assert_allclose(getattr(packed, field)[:, :5], getattr(alone_a, field), atol=2e-5)
  np.testing.assert_allclose(getattr(packed, field)[:, 5:9], getattr(alone_b, field), atol=2e-5)


def test_einsum_attention_with_causal_query_blocks_equals_jax_nn():
  # seq 512 splits the queries into blocks that skip keys past their last row; packed
  # documents with padding, values and gradients against jax.nn.dot_product_attention.
  L = 512
  assert L % QUERY_BLOCK == 0 and L // QUERY_BLOCK >= 2
  segments_1xL = jnp.array([[1] * 200 + [2] * 250 + [0] * (L - 450)])
  positions_1xL = jnp.array([list(range(200)) + list(range(250)) + [0] * (L - 450)])
  ids_1xL = random_ids((1, L)) * (segments_1xL > 0)
  valid = np.asarray(segments_1xL[0] > 0)
  results = []
  for attention in ("einsum", "xla"):
    cfg = TransformerConfig(**dict(GPT, max_len=L, attention=attention))
    model, params = build(cfg), init_params(cfg, jax.random.key(0))

    def loss(p, model=model):
      logits = model.apply({"params": p}, ids_1xL, segment_ids=segments_1xL, positions=positions_1xL).logits
      return jnp.sum(jnp.where(segments_1xL[..., None] > 0, logits, 0.0) ** 2), logits
    results.append(jax.jit(jax.value_and_grad(loss, has_aux=True))(params))
  (_, einsum_logits), einsum_grads = results[0]
  (_, xla_logits), xla_grads = results[1]
  np.testing.assert_allclose(einsum_logits[0, valid], xla_logits[0, valid], atol=2e-5)
  # One tolerance for all: key-bias gradients are zero in exact arithmetic, float noise here.
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(xla_grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * scale), einsum_grads, xla_grads)


IMPLEMENTATIONS = ["xla"] + (["cudnn"] if jax.default_backend() == "gpu" else [])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", ["encoder_padding", "encoder_packed", "decoder", "decoder_packed_padding"])
def test_every_attention_implementation_gives_the_same_outputs_and_gradients(implementation, case):
  # Every implementation this platform has (einsum, jax.nn's XLA one, and cuDNN's on a GPU)
  # against the einsum one, in float32: with and without padding, packed segments, the causal mask.
  L = 128
  causal = case.startswith("decoder")
  segments_1xL = jnp.array([[1] * 50 + [2] * 60 + [0] * (L - 110)])
  kwargs = {}
  if case.endswith("packed") or case.endswith("packed_padding"):
    kwargs = dict(segment_ids=segments_1xL, positions=jnp.array([list(range(50)) + list(range(60)) + [0] * (L - 110)]))
  elif case.endswith("padding"):
    kwargs = dict(attention_mask=segments_1xL > 0)
  real_1xL = (segments_1xL > 0) if kwargs else jnp.ones((1, L), bool)
  ids_1xL = random_ids((1, L)) * real_1xL
  outputs = {}
  for attention in ("einsum", implementation):
    fields = dict(GPT if causal else dict(BERT, heads=("mlm",)), max_len=L, attention=attention)
    cfg = TransformerConfig(**fields)
    model, params = build(cfg), init_params(cfg, jax.random.key(0))

    def loss(p, model=model):
      logits = model.apply({"params": p}, ids_1xL, **kwargs).logits
      return jnp.sum(jnp.where(real_1xL[..., None], logits, 0.0) ** 2), logits
    outputs[attention] = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  (_, want_logits), want_grads = outputs["einsum"]
  (_, got_logits), got_grads = outputs[implementation]
  real = np.asarray(real_1xL[0])
  np.testing.assert_allclose(got_logits[0, real], want_logits[0, real], atol=2e-5, rtol=1e-5)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want_grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * scale), got_grads, want_grads)


def decode(model, params, cfg, ids_BxL, mask_BxL, prompt_len, max_len=16):
  """Prompt in one chunk, then the rest one token at a time; logits B x L x V."""
  cache = init_cache(cfg, ids_BxL.shape[0], max_len)
  out = model(params, ids_BxL[:, :prompt_len], attention_mask=mask_BxL[:, :prompt_len], cache=cache)
  logits = [out.logits]
  for t in range(prompt_len, ids_BxL.shape[1]):
    out = model(params, ids_BxL[:, t:t + 1], attention_mask=mask_BxL[:, t:t + 1], cache=out.cache)
    logits.append(out.logits)
  return jnp.concatenate(logits, 1)


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_decoding_equals_full_forward(scan):
  cfg, model, params = setup(**GPT)
  if scan:
    params = stack_layers(params, cfg.num_layers)
    cfg = dataclasses.replace(cfg, scan_layers=True)
    model = jitted(cfg)
  ids_BxL = random_ids((2, 9))
  mask_BxL = jnp.ones_like(ids_BxL)
  full = model(params, ids_BxL).logits
  np.testing.assert_allclose(decode(model, params, cfg, ids_BxL, mask_BxL, prompt_len=5), full, atol=2e-5)


def test_kv_cache_left_padded_prompts_equal_each_prompt_alone():
  cfg, model, params = setup(**GPT)
  long, short, new = random_ids((1, 6), 1), random_ids((1, 3), 2), random_ids((2, 4), 3)
  prompts_BxP = jnp.concatenate([long, jnp.concatenate([jnp.zeros((1, 3), jnp.int32), short], 1)])
  ids_BxL = jnp.concatenate([prompts_BxP, new], 1)
  mask_BxL = jnp.ones_like(ids_BxL).at[1, :3].set(0)  # row 1's prompt is left-padded by 3
  got_BxLxV = decode(model, params, cfg, ids_BxL, mask_BxL, prompt_len=6)
  for row, prompt in enumerate([long, short]):
    alone = model(params, jnp.concatenate([prompt, new[row:row + 1]], 1)).logits[0]
    np.testing.assert_allclose(got_BxLxV[row, -alone.shape[0]:], alone, atol=2e-5)


@pytest.mark.parametrize("fields", [GPT, BERT], ids=["decoder", "encoder"])
def test_scan_and_loop_layers_give_identical_outputs(fields):
  cfg, model, params = setup(**fields)
  ids_BxL = random_ids((2, 7))
  loop = model(params, ids_BxL).logits
  scan_cfg = dataclasses.replace(cfg, scan_layers=True)
  scan = jitted(scan_cfg)(stack_layers(params, cfg.num_layers), ids_BxL).logits
  np.testing.assert_allclose(scan, loop, atol=1e-5)
  # Initializing with scan_layers gives the stacked layout directly.
  shapes = jax.eval_shape(lambda: init_params(scan_cfg, jax.random.key(0)))
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, stack_layers(params, cfg.num_layers))


@pytest.mark.parametrize("scan,policies", [(False, REMAT), (True, ("none", "dots"))])
def test_remat_policies_give_identical_outputs_and_gradients(scan, policies):
  ids_BxL = random_ids((2, 7))
  results = []
  for remat in policies:
    cfg, model, params = setup(**GPT, remat=remat, scan_layers=scan)

    def loss(p, model=model):
      return jnp.mean(model(p, ids_BxL).logits ** 2)
    results.append(jax.jit(jax.value_and_grad(loss))(params))
  for value, grads in results[1:]:
    np.testing.assert_allclose(value, results[0][0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, results[0][1])


def test_materialize_grad_is_the_identity_and_survives_compilation():
  # Bit-identical values and gradients (NaN, inf and -0 included), and the conditional that
  # keeps XLA:CPU from re-fusing the gradient is still in the optimised program.
  x_N = jnp.array([1.5, -0.0, jnp.inf, jnp.nan, -3.0])
  w_N = jnp.array([2.0, -1.0, 0.5, 1.0, jnp.nan])

  def f(x, barrier):
    return jnp.sum(w_N * jnp.tanh(materialize_grad(x) if barrier else x))
  for x in (x_N, x_N[::-1]):   # the predicate reads element 0: finite first, NaN first
    got, want = jax.jit(jax.grad(f), static_argnums=1)(x, True), jax.grad(f)(x, False)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32))
    np.testing.assert_array_equal(np.asarray(materialize_grad(x)).view(np.uint32), np.asarray(x).view(np.uint32))
  hlo = jax.jit(jax.grad(f), static_argnums=1).lower(x_N, True).compile().as_text()
  assert ("conditional(" in hlo) == (jax.default_backend() == "cpu")


def test_argmax_is_jnp_argmax_ties_nan_and_inf_included():
  x_BxV = jax.random.normal(jax.random.key(0), (6, 4096))
  x_BxV = x_BxV.at[1, [7, 9]].set(jnp.nan)                 # the first NaN wins
  x_BxV = x_BxV.at[2].set(-jnp.inf)                        # all equal: index 0
  x_BxV = x_BxV.at[3, [50, 100]].set(10.0)                 # a tie: the first
  x_BxV = x_BxV.at[4, 4095].set(jnp.inf)
  np.testing.assert_array_equal(jax.jit(argmax)(x_BxV), jnp.argmax(x_BxV, -1))
  np.testing.assert_array_equal(jax.jit(argmax)(x_BxV[:1]), jnp.argmax(x_BxV[:1], -1))


@pytest.mark.parametrize("x_shape, w_shape, contract", [
    ((4, 16, 32), (32, 48), ((2,), (0,))),            # Dense
    ((4, 16, 32), (32, 4, 8), ((2,), (0,))),          # DenseGeneral to heads (q, k, v)
    ((4, 16, 4, 8), (4, 8, 32), ((2, 3), (0, 1))),    # DenseGeneral from heads (out)
    ((16, 32), (48, 32), ((1,), (1,))),               # another form: lax.dot_general as is
], ids=["dense", "to_heads", "from_heads", "other"])
def test_dense_dot_general_is_lax_dot_general_with_weight_gradients_on_the_fast_path(x_shape, w_shape,
                                                                                    contract):
  x = jax.random.normal(jax.random.key(0), x_shape)
  w = jax.random.normal(jax.random.key(1), w_shape)
  dims = (contract, ((), ()))

  def loss(dot):
    return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.tanh(dot(x, w, dims))), argnums=(0, 1)))
  got, want = loss(dense_dot_general)(x, w), loss(jax.lax.dot_general)(x, w)
  for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
  # The point of it: on CPU no matmul is left that contracts its lhs's major axis (XLA:CPU's
  # slow path); the form it passes through keeps one, which shows the check can see it.
  hlo = loss(dense_dot_general).lower(x, w).compile().as_text()
  major = any("0" in dims.split(",") for dims in re.findall(r"lhs_contracting_dims=\{([0-9,]*)\}", hlo))
  if jax.default_backend() == "cpu":
    assert major == (contract[1][0] != 0)


@pytest.mark.parametrize("fields", [GPT, BERT], ids=["decoder", "encoder"])
def test_bf16_compute_keeps_fp32_params(fields):
  cfg, model, params = setup(**fields, dtype="bfloat16")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  ids_BxL = random_ids((2, 7))
  grads = jax.jit(jax.grad(lambda p: jnp.mean(model(p, ids_BxL).logits)))(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  out = model(params, ids_BxL)
  assert out.logits.dtype == jnp.float32 and out.hidden.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(out.logits)).all()
  fp32 = jitted(dataclasses.replace(cfg, dtype="float32"))(params, ids_BxL).logits
  assert np.abs(np.asarray(out.logits - fp32)).max() < 0.1 * np.abs(np.asarray(fp32)).max()


OPTIONS = [dict(position="rotary"), dict(position="sinusoidal"), dict(activation="swiglu"),
           dict(norm="rmsnorm"), dict(tie_embeddings=False), dict(activation="relu", use_bias=False),
           dict(position="rotary", norm="rmsnorm", activation="swiglu", use_bias=False)]


@pytest.mark.parametrize("fields", [GPT, BERT], ids=["decoder", "encoder"])
@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_options_run(fields, option):
  cfg, model, params = setup(**{**fields, **option})
  out = model(params, random_ids((2, 7)))
  assert out.logits.shape == (2, 7, cfg.vocab_size)
  assert np.isfinite(np.asarray(out.logits)).all()
  if not cfg.tie_embeddings:
    assert "lm_head" in params or "decoder" in params["mlm_head"]


def test_rotary_is_position_sensitive_and_shift_invariant():
  """Without a position table, only rotary tells positions apart: an encoder's output
  on permuted tokens is not the permuted output. Rotary sees relative offsets only,
  so shifting every position by the same amount changes nothing."""
  cfg, model, params = setup(**BERT, position="rotary")
  ids_1xL = random_ids((1, 8))
  perm = jnp.array([3, 1, 7, 0, 2, 6, 5, 4])
  out = model(params, ids_1xL).hidden
  permuted = model(params, ids_1xL[:, perm]).hidden
  assert np.abs(np.asarray(permuted - out[:, perm])).max() > 1e-3
  shifted = model(params, ids_1xL, positions=jnp.arange(8)[None] + 5).hidden
  np.testing.assert_allclose(shifted, out, atol=1e-4)


def test_encoder_ignores_tokens_at_padded_positions():
  cfg, model, params = setup(**BERT)
  ids_BxL = random_ids((2, 9))
  mask_BxL = jnp.ones_like(ids_BxL).at[0, 6:].set(0).at[1, 3:].set(0)
  other_BxL = jnp.where(mask_BxL == 1, ids_BxL, random_ids((2, 9), 7))
  assert (other_BxL != ids_BxL).any()
  a = model(params, ids_BxL, attention_mask=mask_BxL)
  b = model(params, other_BxL, attention_mask=mask_BxL)
  valid = np.asarray(mask_BxL, bool)
  np.testing.assert_allclose(np.asarray(a.hidden)[valid], np.asarray(b.hidden)[valid], atol=1e-6)
  np.testing.assert_allclose(a.nsp_logits, b.nsp_logits, atol=1e-6)


@pytest.mark.parametrize("section", [
    dict(preset="bert-huge"), dict(preset="gpt-tiny", norm="batchnorm"),
    dict(preset="gpt-tiny", position="alibi"), dict(preset="gpt-tiny", activation="tanh"),
    dict(preset="gpt-tiny", num_heads=3), dict(preset="bert-tiny", heads=("mlm", "qa")),
    dict(preset="gpt-tiny", heads=("nsp",)), dict(preset="gpt-tiny", position="rotary", hidden=36, num_heads=4),
])
def test_model_config_rejects_bad_choices(section):
  with pytest.raises(ValueError):
    model_config(section)


def test_decoder_classifier_reads_the_last_real_token():
  # GPT-1's head: class logits from the last real token's state, which has read the whole row;
  # padding after it changes nothing, the last real token does.
  cfg, model, params = setup(**GPT, heads=("classify",), num_labels=3)
  ids_2xL = random_ids((2, 10))
  mask_2xL = jnp.array([[1] * 10, [1] * 6 + [0] * 4])
  out = model(params, ids_2xL, attention_mask=mask_2xL)
  assert out.class_logits.shape == (2, 3)
  repadded = ids_2xL.at[1, 6:].set(7)
  np.testing.assert_array_equal(model(params, repadded, attention_mask=mask_2xL).class_logits, out.class_logits)
  changed = ids_2xL.at[1, 5].set((ids_2xL[1, 5] + 1) % 61)
  assert not np.allclose(model(params, changed, attention_mask=mask_2xL).class_logits[1], out.class_logits[1])
  alone = model(params, ids_2xL[1:, :6]).class_logits
  np.testing.assert_allclose(alone[0], out.class_logits[1], atol=1e-5)
