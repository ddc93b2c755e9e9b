"""Hugging Face BERT and GPT-2 checkpoints <-> lmjax workdirs.

    lmjax convert --from-hf HF_DIR --workdir OUT    # config.json + model.safetensors -> OUT
    lmjax convert --to-hf --workdir OUT --out HF_DIR

One table per architecture names each HF tensor, the lmjax param it becomes, and
the layout change between them. The table runs both ways: export applies it to
params, and import checks every HF tensor against the shape that export would
give for the config, so a config.json that disagrees with its weights fails by
name before anything is written.

Nothing is dropped on import: every tensor lands in the lmjax params, or the import names it
and why (config.json's source.left_out, and the summary line): buffers (position ids, GPT-2's
causal mask) and tied copies (an LM head equal to the embeddings) carry no weights of their own.
A bare BertModel's pooler (all-MiniLM-L6-v2 ships one) is kept as params["pooler"] although the
model has no head that reads it yet: `lmjax finetune` grafts it into the classify head's pooler,
`lmjax.load` returns it (flax ignores params a model does not use), and export writes it back.
An ELECTRA model ("rtd" head) exports its discriminator as a BERT encoder; the generator and the
rtd head (pretraining only) are left out, and the summary line names them.
Hub layouts: BertModel, BertForMaskedLM, BertForPreTraining, GPT2Model, GPT2LMHeadModel, with or
without the "bert."/"transformer." prefix, and the old LayerNorm names gamma/beta.
tests/test_convert.py pins logit parity with transformers both ways.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from lmjax.checkpoint import read_config, restore_params, save_params, write_config
from lmjax.errors import UserError
from lmjax.models import init_params, model_config, model_fields
from lmjax.models.layers import unstack_layers

SUPPORTED = ("bert (BertModel, BertForPreTraining, BertForMaskedLM, BertForNextSentencePrediction) "
             "and gpt2 (GPT2Model, GPT2LMHeadModel)")
ARCHITECTURES = {"bert": ("BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction"),
                 "gpt2": ("GPT2Model", "GPT2LMHeadModel")}
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "merges.txt", "vocab.json")
BERT_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}

# (HF name without the "bert."/"transformer." prefix, lmjax param path(s), layout).
# "{i}" runs over layers. An entry applies when the model's params hold its path.
BERT = [
    ("embeddings.word_embeddings.weight", "embed/token/embedding", "same"),
    ("embeddings.position_embeddings.weight", "embed/position/embedding", "same"),
    ("embeddings.token_type_embeddings.weight", "embed/segment/embedding", "same"),
    ("embeddings.LayerNorm.weight", "embed_norm/scale", "same"),
    ("embeddings.LayerNorm.bias", "embed_norm/bias", "same"),
    ("encoder.layer.{i}.attention.self.query.weight", "stack/layer_{i}/attn/query/kernel", "qkv"),
    ("encoder.layer.{i}.attention.self.query.bias", "stack/layer_{i}/attn/query/bias", "qkv_bias"),
    ("encoder.layer.{i}.attention.self.key.weight", "stack/layer_{i}/attn/key/kernel", "qkv"),
    ("encoder.layer.{i}.attention.self.key.bias", "stack/layer_{i}/attn/key/bias", "qkv_bias"),
    ("encoder.layer.{i}.attention.self.value.weight", "stack/layer_{i}/attn/value/kernel", "qkv"),
    ("encoder.layer.{i}.attention.self.value.bias", "stack/layer_{i}/attn/value/bias", "qkv_bias"),
    ("encoder.layer.{i}.attention.output.dense.weight", "stack/layer_{i}/attn/out/kernel", "attn_out"),
    ("encoder.layer.{i}.attention.output.dense.bias", "stack/layer_{i}/attn/out/bias", "same"),
    ("encoder.layer.{i}.attention.output.LayerNorm.weight", "stack/layer_{i}/attn_norm/scale", "same"),
    ("encoder.layer.{i}.attention.output.LayerNorm.bias", "stack/layer_{i}/attn_norm/bias", "same"),
    ("encoder.layer.{i}.intermediate.dense.weight", "stack/layer_{i}/mlp/wi/kernel", "linear"),
    ("encoder.layer.{i}.intermediate.dense.bias", "stack/layer_{i}/mlp/wi/bias", "same"),
    ("encoder.layer.{i}.output.dense.weight", "stack/layer_{i}/mlp/wo/kernel", "linear"),
    ("encoder.layer.{i}.output.dense.bias", "stack/layer_{i}/mlp/wo/bias", "same"),
    ("encoder.layer.{i}.output.LayerNorm.weight", "stack/layer_{i}/mlp_norm/scale", "same"),
    ("encoder.layer.{i}.output.LayerNorm.bias", "stack/layer_{i}/mlp_norm/bias", "same"),
    ("pooler.dense.weight", "pooler/kernel", "linear"),
    ("pooler.dense.bias", "pooler/bias", "same"),
    ("cls.seq_relationship.weight", "nsp_head/kernel", "linear"),
    ("cls.seq_relationship.bias", "nsp_head/bias", "same"),
    ("cls.predictions.transform.dense.weight", "mlm_head/transform/kernel", "linear"),
    ("cls.predictions.transform.dense.bias", "mlm_head/transform/bias", "same"),
    ("cls.predictions.transform.LayerNorm.weight", "mlm_head/norm/scale", "same"),
    ("cls.predictions.transform.LayerNorm.bias", "mlm_head/norm/bias", "same"),
    ("cls.predictions.bias", "mlm_head/bias", "same"),
    ("cls.predictions.decoder.weight", "mlm_head/decoder/kernel", "linear"),  # untied only
]
GPT2 = [
    ("wte.weight", "embed/token/embedding", "same"),
    ("wpe.weight", "embed/position/embedding", "same"),
    ("h.{i}.ln_1.weight", "stack/layer_{i}/attn_norm/scale", "same"),
    ("h.{i}.ln_1.bias", "stack/layer_{i}/attn_norm/bias", "same"),
    ("h.{i}.attn.c_attn.weight", ("stack/layer_{i}/attn/query/kernel", "stack/layer_{i}/attn/key/kernel",
                                  "stack/layer_{i}/attn/value/kernel"), "conv_qkv"),
    ("h.{i}.attn.c_attn.bias", ("stack/layer_{i}/attn/query/bias", "stack/layer_{i}/attn/key/bias",
                                "stack/layer_{i}/attn/value/bias"), "conv_qkv_bias"),
    ("h.{i}.attn.c_proj.weight", "stack/layer_{i}/attn/out/kernel", "conv_attn_out"),
    ("h.{i}.attn.c_proj.bias", "stack/layer_{i}/attn/out/bias", "same"),
    ("h.{i}.ln_2.weight", "stack/layer_{i}/mlp_norm/scale", "same"),
    ("h.{i}.ln_2.bias", "stack/layer_{i}/mlp_norm/bias", "same"),
    ("h.{i}.mlp.c_fc.weight", "stack/layer_{i}/mlp/wi/kernel", "same"),  # Conv1D weights are in x out
    ("h.{i}.mlp.c_fc.bias", "stack/layer_{i}/mlp/wi/bias", "same"),
    ("h.{i}.mlp.c_proj.weight", "stack/layer_{i}/mlp/wo/kernel", "same"),
    ("h.{i}.mlp.c_proj.bias", "stack/layer_{i}/mlp/wo/bias", "same"),
    ("ln_f.weight", "final_norm/scale", "same"),
    ("ln_f.bias", "final_norm/bias", "same"),
    ("lm_head.weight", "lm_head/kernel", "linear"),  # untied only
]
TABLES = {"bert": BERT, "gpt2": GPT2}
HEAD_NAMES = {"bert": ("cls.",), "gpt2": ("lm_head.",)}  # names outside the base model's prefix
PREFIXES = {"bert": "bert.", "gpt2": "transformer."}
# Buffers that carry no parameters, and why each is left out of the params.
BUFFERS = {"position_ids": "buffer: the position ids 0..max_len-1, not a parameter",
           "attn.bias": "buffer: GPT-2's causal mask, not a parameter",
           "attn.masked_bias": "buffer: GPT-2's masked-score constant, not a parameter"}
SAFETENSORS_ONLY = ("lmjax reads safetensors only (a pickle can run code when loaded): pick a revision with "
                    "model.safetensors, or re-save it with model.save_pretrained(dir, safe_serialization=True)")


def layouts(D: int, H: int, K: int):
  """layout -> (HF tensor -> lmjax arrays, lmjax arrays -> HF tensor). torch Linear
  weights are out x in; GPT-2's Conv1D weights are in x out, q/k/v fused on the out axis."""
  return {
      "same": (lambda w: [w], lambda w: w),
      "linear": (lambda w: [w.T], lambda w: w.T),
      "qkv": (lambda w: [w.T.reshape(D, H, K)], lambda w_DxHxK: w_DxHxK.reshape(D, H * K).T),
      "qkv_bias": (lambda b: [b.reshape(H, K)], lambda b_HxK: b_HxK.reshape(H * K)),
      "attn_out": (lambda w: [w.T.reshape(H, K, D)], lambda w_HxKxD: w_HxKxD.reshape(H * K, D).T),
      "conv_qkv": (lambda w_Dx3D: [x.reshape(D, H, K) for x in np.split(w_Dx3D, 3, axis=1)],
                   lambda *w_DxHxK: jnp.concatenate([w.reshape(D, H * K) for w in w_DxHxK], axis=1)),
      "conv_qkv_bias": (lambda b_3D: [x.reshape(H, K) for x in np.split(b_3D, 3)],
                        lambda *b_HxK: jnp.concatenate([b.reshape(H * K) for b in b_HxK])),
      "conv_attn_out": (lambda w: [w.reshape(H, K, D)], lambda w_HxKxD: w_HxKxD.reshape(H * K, D)),
  }


def entries(model_type: str, cfg, param_paths: set[str]):
  """The table's rows for this model: layers expanded, rows for absent params left out."""
  rows = []
  for hf_name, paths, layout in TABLES[model_type]:
    for i in range(cfg.num_layers) if "{i}" in hf_name else [None]:
      fill = (lambda s, i=i: s.format(i=i)) if i is not None else (lambda s: s)
      names = tuple(fill(p) for p in ((paths,) if isinstance(paths, str) else paths))
      if all(n in param_paths for n in names):
        rows.append((fill(hf_name), names, layout))
  return rows


def flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def unflatten(flat):
  tree = {}
  for path, v in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def to_hf_weights(model_type: str, cfg, flat_params) -> dict:
  """lmjax params (flat, '/'-joined paths) -> HF tensors named without the base-model prefix."""
  lay = layouts(cfg.hidden, cfg.num_heads, cfg.head_dim)
  rows = entries(model_type, cfg, set(flat_params))
  covered = {n for _, names, _ in rows for n in names}
  if covered != set(flat_params):
    raise AssertionError(f"convert/hf.py tables miss lmjax params {sorted(set(flat_params) - covered)}")
  return {hf: lay[layout][1](*(flat_params[n] for n in names)) for hf, names, layout in rows}


# ---------------------------------------------------------------- import


def import_hf(hf_dir, workdir, source: dict | None = None) -> str:
  """Convert a save_pretrained directory into an lmjax workdir; validates all before writing.
  `source` adds to config.json's record of where the weights came from (a hub id and commit).
  Returns a one-line summary, which names the tensors left out of the params and why."""
  hf_dir, workdir = pathlib.Path(hf_dir), pathlib.Path(workdir)
  if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
    raise UserError(f"--workdir {workdir} already exists and is not empty; choose a new directory")
  hf_cfg = read_hf_config(hf_dir)
  model_type = hf_cfg["model_type"]
  weights = hf_names(model_type, read_safetensors(hf_dir))
  try:
    fields = (bert_fields if model_type == "bert" else gpt2_fields)(hf_cfg, weights)
  except KeyError as e:
    raise UserError(f"{hf_dir / 'config.json'} has no {e.args[0]!r}, which a {model_type} config needs; "
                    "re-save it with save_pretrained") from None
  try:
    cfg = model_config(dict(fields))
  except (ValueError, TypeError) as e:
    raise UserError(f"{hf_dir / 'config.json'}: {e}") from None

  # The shapes export would give for this config are the shapes import must find.
  expected = flatten(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
  if model_type == "bert" and "pooler.dense.weight" in weights and "pooler/kernel" not in expected:
    # A BertModel's pooler without a head that reads it: kept for fine-tuning (module docstring).
    expected["pooler/kernel"] = jax.ShapeDtypeStruct((cfg.hidden, cfg.hidden), jnp.float32)
    expected["pooler/bias"] = jax.ShapeDtypeStruct((cfg.hidden,), jnp.float32)
  hf_shapes = jax.eval_shape(lambda: to_hf_weights(model_type, cfg, expected_zeros(expected)))
  rows = entries(model_type, cfg, set(expected))
  check_weights(hf_dir, cfg, weights, {hf: hf_shapes[hf] for hf, _, _ in rows})  # in table order
  left_out = unplaced(hf_dir, cfg, weights, {hf for hf, _, _ in rows})

  lay = layouts(cfg.hidden, cfg.num_heads, cfg.head_dim)
  flat = {}
  for hf, names, layout in rows:
    flat.update(zip(names, lay[layout][0](np.asarray(weights[hf], np.float32))))
  params = unflatten({k: np.ascontiguousarray(v) for k, v in flat.items()})

  config = {"model": model_fields("", **fields),
            "source": {"hf_dir": str(hf_dir.resolve()), "model_type": model_type,
                       "architectures": hf_cfg.get("architectures") or [], "left_out": left_out,
                       **(source or {})}}
  created = not workdir.exists()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(workdir, config)
    save_params(workdir, params, config)
    tokenizer_files = [hf_dir / f for f in TOKENIZER_FILES if (hf_dir / f).is_file()]
    if tokenizer_files:
      (workdir / "tokenizer").mkdir()
      for f in tokenizer_files:
        shutil.copy2(f, workdir / "tokenizer" / f.name)
  except BaseException:
    # Leave no half-written workdir: a later `lmjax load` would trust it.
    if created:
      shutil.rmtree(workdir, ignore_errors=True)
    else:
      for child in workdir.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    raise
  reasons = {}
  for name, why in left_out.items():
    reasons.setdefault(why.split(":")[0], []).append(name)
  dropped = "; ".join(f"{len(v)} {k} ({', '.join(v[:2])}{', ...' if len(v) > 2 else ''})"
                      for k, v in reasons.items())
  return (f"{model_type} ({cfg.num_layers} layers, D={cfg.hidden}, heads {cfg.heads or '()'}"
          f"{', pooler kept' if 'pooler' in params and not {'nsp', 'classify'} & set(cfg.heads) else ''}) "
          f"from {hf_dir} -> {workdir}: {len(rows)} tensors placed"
          + (f", left out {dropped}" if dropped else ", none left out"))


def hf_names(model_type: str, weights: dict) -> dict:
  """Weight names as the tables write them: without the base model's prefix ("bert.",
  "transformer."), and LayerNorm's gamma/beta (older checkpoints, bert-base-uncased) as weight/bias."""
  prefix = PREFIXES[model_type]
  out = {}
  for k, v in weights.items():
    k = k[len(prefix):] if k.startswith(prefix) else k
    if "LayerNorm." in k and k.endswith((".gamma", ".beta")):
      k = k.rsplit(".", 1)[0] + (".weight" if k.endswith(".gamma") else ".bias")
    out[k] = v
  return out


def expected_zeros(flat_shapes):
  return {k: jnp.zeros(s.shape, s.dtype) for k, s in flat_shapes.items()}


def read_hf_config(hf_dir: pathlib.Path) -> dict:
  if not hf_dir.is_dir():
    raise UserError(f"--from-hf {hf_dir}: no such directory; point it at a save_pretrained directory")
  path = hf_dir / "config.json"
  if not path.is_file():
    raise UserError(f"{hf_dir} has no config.json; is it a Hugging Face save_pretrained directory?")
  try:
    hf_cfg = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e})") from None
  model_type = hf_cfg.get("model_type")
  if model_type not in ARCHITECTURES:
    raise UserError(f"{path}: model_type {model_type!r} is not supported; lmjax converts {SUPPORTED}")
  bad = [a for a in hf_cfg.get("architectures") or [] if a not in ARCHITECTURES[model_type]]
  if bad:
    raise UserError(f"{path}: architecture {bad[0]} is not supported; lmjax converts {SUPPORTED}")
  return hf_cfg


def read_safetensors(hf_dir: pathlib.Path) -> dict[str, np.ndarray]:
  index = hf_dir / "model.safetensors.index.json"
  if index.is_file():
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
  elif (hf_dir / "model.safetensors").is_file():
    files = ["model.safetensors"]
  else:
    pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth") for p in hf_dir.glob(pattern))
    found = f"only pickle weights ({', '.join(pickles)})" if pickles else "no model.safetensors"
    raise UserError(f"{hf_dir} has {found}; {SAFETENSORS_ONLY}")
  weights = {}
  for f in files:
    try:
      weights.update(load_file(str(hf_dir / f)))
    except Exception as e:  # noqa: BLE001 -- safetensors raises several types for a bad file
      raise UserError(f"cannot read {hf_dir / f}: {str(e).splitlines()[0]}") from None
  return weights


def need(hf_cfg: dict, key: str, want, default=None):
  """Refuse a config option whose effect lmjax does not implement."""
  got = hf_cfg.get(key, default)
  if got != want:
    raise UserError(f"config.json sets {key}={got!r}; lmjax converts only {key}={want!r}")


def bert_fields(hf_cfg: dict, weights: dict) -> dict:
  need(hf_cfg, "position_embedding_type", "absolute", "absolute")
  need(hf_cfg, "is_decoder", False, False)
  need(hf_cfg, "add_cross_attention", False, False)
  act = hf_cfg.get("hidden_act", "gelu")
  if act not in BERT_ACTIVATIONS:
    raise UserError(f"config.json sets hidden_act={act!r}; lmjax converts BERT with {sorted(BERT_ACTIVATIONS)}")
  heads = tuple(h for h, prefix in (("mlm", "cls.predictions."), ("nsp", "cls.seq_relationship."))
                if any(k.startswith(prefix) for k in weights))
  return dict(vocab_size=hf_cfg["vocab_size"], hidden=hf_cfg["hidden_size"],
              num_layers=hf_cfg["num_hidden_layers"], num_heads=hf_cfg["num_attention_heads"],
              mlp_dim=hf_cfg["intermediate_size"], max_len=hf_cfg["max_position_embeddings"],
              type_vocab_size=hf_cfg["type_vocab_size"], causal=False, pre_ln=False, norm="layernorm",
              norm_eps=hf_cfg.get("layer_norm_eps", 1e-12), position="learned",
              activation=BERT_ACTIVATIONS[act], use_bias=True,
              tie_embeddings=hf_cfg.get("tie_word_embeddings", True), heads=heads,
              dropout_rate=hf_cfg.get("hidden_dropout_prob", 0.1),
              attention_dropout_rate=hf_cfg.get("attention_probs_dropout_prob", 0.1),
              init_std=hf_cfg.get("initializer_range", 0.02))


def gpt2_fields(hf_cfg: dict, weights: dict) -> dict:
  need(hf_cfg, "scale_attn_weights", True, True)
  need(hf_cfg, "scale_attn_by_inverse_layer_idx", False, False)
  need(hf_cfg, "add_cross_attention", False, False)
  act = hf_cfg.get("activation_function", "gelu_new")
  if act not in GPT2_ACTIVATIONS:
    raise UserError(f"config.json sets activation_function={act!r}; lmjax converts GPT-2 with "
                    f"{sorted(GPT2_ACTIVATIONS)}")
  D = hf_cfg["n_embd"]
  return dict(vocab_size=hf_cfg["vocab_size"], hidden=D, num_layers=hf_cfg["n_layer"],
              num_heads=hf_cfg["n_head"], mlp_dim=hf_cfg.get("n_inner") or 4 * D,
              max_len=hf_cfg["n_positions"], type_vocab_size=0, causal=True, pre_ln=True,
              norm="layernorm", norm_eps=hf_cfg.get("layer_norm_epsilon", 1e-5), position="learned",
              activation=GPT2_ACTIVATIONS[act], use_bias=True,
              tie_embeddings=hf_cfg.get("tie_word_embeddings", True), heads=(),
              dropout_rate=hf_cfg.get("resid_pdrop", 0.1), attention_dropout_rate=hf_cfg.get("attn_pdrop", 0.1),
              init_std=hf_cfg.get("initializer_range", 0.02))


def check_weights(hf_dir, cfg, weights: dict, hf_expected: dict) -> None:
  for name, want in hf_expected.items():
    if name not in weights:
      raise UserError(f"{hf_dir}: weight {name} is missing from model.safetensors "
                      f"(config.json implies shape {tuple(want.shape)})")
    if tuple(weights[name].shape) != tuple(want.shape):
      raise UserError(f"{hf_dir}: weight {name} has shape {tuple(weights[name].shape)} but config.json "
                      f"implies {tuple(want.shape)}; the config does not describe these weights")


def unplaced(hf_dir, cfg, weights: dict, placed: set) -> dict[str, str]:
  """{name: why} for every tensor that is not placed in the params; a tensor with no reason to be
  left out is an error that names it."""
  why = {}
  for name in sorted(set(weights) - placed):
    buffer = next((r for suffix, r in BUFFERS.items() if name.endswith(suffix)), None)
    if buffer:
      why[name] = buffer
    elif cfg.tie_embeddings and name in ("cls.predictions.decoder.weight", "lm_head.weight"):
      why[name] = "tied copy: the output layer is the word embeddings (tie_word_embeddings), as in transformers"
    elif name == "cls.predictions.decoder.bias" and "cls.predictions.bias" in weights:
      why[name] = "tied copy: transformers ties it to cls.predictions.bias, which is placed"
  unknown = [n for n in sorted(set(weights) - placed) if n not in why]
  if unknown:
    more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
    raise UserError(f"{hf_dir}: model.safetensors has weights lmjax cannot place ({', '.join(unknown[:3])}{more}); "
                    f"lmjax converts {SUPPORTED}")
  return why


# ---------------------------------------------------------------- export

# lmjax encoder heads -> the transformers class that holds exactly those weights.
BERT_EXPORT = {(): "BertModel", ("mlm",): "BertForMaskedLM", ("nsp",): "BertForNextSentencePrediction",
               ("mlm", "nsp"): "BertForPreTraining"}
BERT_ACT_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
GPT2_ACT_NAMES = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


def hf_state(cfg, params) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json, float32 tensors under transformers' full names) of an lmjax BERT or GPT-2:
  what `lmjax convert --to-hf` writes, and what `bench generate --vs-torch` loads into PyTorch."""
  model_type = "gpt2" if cfg.causal else "bert"
  hf_cfg = (gpt2_config if cfg.causal else bert_config)(cfg)
  if "layers" in params["stack"]:
    params = unstack_layers(params, cfg.num_layers)
  flat = flatten(jax.tree.map(np.asarray, params))
  # safetensors.numpy has no bfloat16; transformers casts on load if asked.
  weights = {k: np.ascontiguousarray(v, np.float32)
             for k, v in to_hf_weights(model_type, cfg, flat).items()}
  if model_type == "bert" and not cfg.type_vocab_size:
    # HF BERT always adds a token-type row; an all-zero one leaves outputs unchanged.
    weights["embeddings.token_type_embeddings.weight"] = np.zeros((1, cfg.hidden), np.float32)
  if "mlm_head/decoder/kernel" in flat:
    # Untied, transformers may keep the decoder's bias apart from cls.predictions.bias.
    weights["cls.predictions.decoder.bias"] = weights["cls.predictions.bias"]
  if hf_cfg["architectures"][0] not in ("BertModel", "GPT2Model"):
    prefix = PREFIXES[model_type]
    weights = {k if k.startswith(HEAD_NAMES[model_type]) else prefix + k: v for k, v in weights.items()}
  return hf_cfg, weights


def export_hf(workdir, out) -> str:
  """Write OUT/config.json + OUT/model.safetensors (+ tokenizer files) that transformers loads.
  Returns a one-line summary."""
  workdir, out = pathlib.Path(workdir), pathlib.Path(out)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise UserError(f"--out {out} already exists and is not empty; choose a new directory")
  cfg = model_config(read_config(workdir)["model"])
  params = restore_params(workdir)
  left_out = ""
  if "rtd" in cfg.heads:
    # ELECTRA: the discriminator is the model to keep (the paper fine-tunes it); the generator and
    # the replaced-token head serve pretraining only, and BERT has no place for them.
    dropped = {k: len(jax.tree.leaves(params[k])) for k in ("generator", "rtd_head") if k in params}
    params = {k: v for k, v in params.items() if k not in dropped}
    cfg = dataclasses.replace(cfg, heads=tuple(h for h in cfg.heads if h != "rtd"))
    left_out = ", left out " + ", ".join(f"ELECTRA's {k} ({n} tensors)" for k, n in dropped.items())
  hf_cfg, weights = hf_state(cfg, params)

  created = not out.exists()
  try:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n")
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in TOKENIZER_FILES:
      if (workdir / "tokenizer" / f).is_file():
        shutil.copy2(workdir / "tokenizer" / f, out / f)
  except BaseException:
    if created:
      shutil.rmtree(out, ignore_errors=True)
    raise
  return f"{workdir} -> {out} ({hf_cfg['architectures'][0]}{left_out})"


def refuse(cfg, checks) -> None:
  for ok, what in checks:
    if not ok:
      raise UserError(f"this model has {what}, which Hugging Face "
                      f"{'GPT-2' if cfg.causal else 'BERT'} cannot express; it cannot be exported")


def bert_config(cfg) -> dict:
  refuse(cfg, [(cfg.norm == "layernorm", f"model.norm={cfg.norm!r}"),
               (cfg.position == "learned", f"model.position={cfg.position!r}"),
               (cfg.activation in BERT_ACT_NAMES, f"model.activation={cfg.activation!r}"),
               (not cfg.pre_ln, "model.pre_ln=True"), (cfg.use_bias, "model.use_bias=False"),
               (cfg.norm_bias, "model.norm_bias=False"),
               (tuple(sorted(cfg.heads)) in BERT_EXPORT, f"model.heads={tuple(cfg.heads)} "
                                                         f"(exportable: {list(BERT_EXPORT)})")])
  return {"architectures": [BERT_EXPORT[tuple(sorted(cfg.heads))]], "model_type": "bert",
          "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden, "num_hidden_layers": cfg.num_layers,
          "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.mlp_dim,
          "hidden_act": BERT_ACT_NAMES[cfg.activation], "max_position_embeddings": cfg.max_len,
          "type_vocab_size": max(cfg.type_vocab_size, 1), "layer_norm_eps": cfg.norm_eps,
          "position_embedding_type": "absolute", "tie_word_embeddings": cfg.tie_embeddings,
          "hidden_dropout_prob": cfg.dropout_rate, "attention_probs_dropout_prob": cfg.attention_dropout_rate,
          "initializer_range": cfg.init_std, "pad_token_id": 0}


def gpt2_config(cfg) -> dict:
  refuse(cfg, [(cfg.norm == "layernorm", f"model.norm={cfg.norm!r}"),
               (cfg.position == "learned", f"model.position={cfg.position!r}"),
               (cfg.activation in GPT2_ACT_NAMES, f"model.activation={cfg.activation!r}"),
               (cfg.pre_ln, "model.pre_ln=False"), (cfg.use_bias, "model.use_bias=False"),
               (cfg.norm_bias, "model.norm_bias=False"),
               (not cfg.type_vocab_size, f"model.type_vocab_size={cfg.type_vocab_size}")])
  return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
          "n_embd": cfg.hidden, "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": cfg.mlp_dim,
          "n_positions": cfg.max_len, "activation_function": GPT2_ACT_NAMES[cfg.activation],
          "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
          "resid_pdrop": cfg.dropout_rate, "embd_pdrop": cfg.dropout_rate,
          "attn_pdrop": cfg.attention_dropout_rate, "initializer_range": cfg.init_std}
