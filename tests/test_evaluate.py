"""Held-out figures mean what their names say: bits per byte scores every token of a file once,
against a decoder whose probabilities are known by hand; encoders are refused."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax import models
from lmjax.errors import UserError
from lmjax.training.evaluate import bits_per_byte

V, D = 40, 16


class ByteTokenizer:
  """Token i+1 for byte i (mod V-1), EOS 0: enough to check the arithmetic of scoring a file."""
  eos_id, bos_id = 0, None

  def encode(self, text):
    return [1 + b % (V - 1) for b in text.encode("utf-8")]


def unigram_decoder(seed=0):
  """A GPT whose next-token distribution is softmax(E b) whatever the context: every weight is
  zero but the token table E and the final norm's bias b (its scale is zero, so it outputs b)."""
  cfg = models.TransformerConfig(vocab_size=V, hidden=D, num_layers=2, num_heads=2, mlp_dim=32, max_len=64,
                                 causal=True, pre_ln=True, dropout_rate=0.0, attention_dropout_rate=0.0)
  params = jax.tree.map(jnp.zeros_like, models.init_params(cfg, jax.random.key(seed)))
  k1, k2 = jax.random.split(jax.random.key(seed + 1))
  params["embed"]["token"]["embedding"] = jax.random.normal(k1, (V, D))
  params["final_norm"]["bias"] = jax.random.normal(k2, (D,))
  log_p_V = np.asarray(jax.nn.log_softmax(params["embed"]["token"]["embedding"] @ params["final_norm"]["bias"]))
  return models.build(cfg), params, log_p_V


@pytest.mark.parametrize("window, stride", [(64, 32), (16, 5), (7, 7)])
def test_bits_per_byte_scores_every_token_once_with_known_probabilities(window, stride):
  model, params, log_p_V = unigram_decoder()
  text = "Every token of the file is scored, the first one too: é, ü and ß are two bytes each. " * 3
  tok = ByteTokenizer()
  out = bits_per_byte(model, params, tok, text, window=window, stride=stride, batch_size=4)
  ids = tok.encode(text)
  want_nll = -sum(log_p_V[i] for i in ids)
  assert out["tokens"] == len(ids) and out["bytes"] == len(text.encode("utf-8"))
  np.testing.assert_allclose(out["bits_per_byte"], want_nll / math.log(2) / out["bytes"], rtol=1e-5)
  np.testing.assert_allclose(out["perplexity"], math.exp(want_nll / len(ids)), rtol=1e-5)


def test_each_token_is_scored_with_the_context_its_window_gives():
  # Against a brute-force reference: with stride 1, token t is predicted from the `window` tokens
  # before it (fewer at the start), one model call per token.
  cfg = models.TransformerConfig(vocab_size=V, hidden=D, num_layers=1, num_heads=2, mlp_dim=32, max_len=64,
                                 causal=True, pre_ln=True, dropout_rate=0.0, attention_dropout_rate=0.0)
  model, params = models.build(cfg), models.init_params(cfg, jax.random.key(3))
  params = jax.tree.map(lambda x: x * 20 if x.ndim == 2 else x, params)   # sharp, context-dependent
  tok, text, window = ByteTokenizer(), "abcabdabcabeabcabfabcabgabc", 8
  seq = [tok.eos_id] + tok.encode(text)
  want = 0.0
  for t in range(1, len(seq)):
    context = jnp.asarray([seq[max(0, t - window):t]])
    log_p = jax.nn.log_softmax(model.apply({"params": params}, context).logits[0, -1])
    want -= float(log_p[seq[t]])
  got = bits_per_byte(model, params, tok, text, window=window, stride=1)
  np.testing.assert_allclose(got["bits_per_byte"], want / math.log(2) / len(text.encode()), rtol=1e-5)
  short = bits_per_byte(model, params, tok, text, window=2, stride=2)   # 0-1 tokens of context
  assert abs(short["bits_per_byte"] - got["bits_per_byte"]) > 1e-2


def test_encoders_and_tokenizers_without_a_start_token_are_refused():
  cfg = models.TransformerConfig(vocab_size=V, hidden=D, num_layers=1, num_heads=2, mlp_dim=32, max_len=64,
                                 heads=("mlm",))
  encoder, params = models.build(cfg), models.init_params(cfg, jax.random.key(0))
  with pytest.raises(UserError, match="bits per byte needs a decoder") as e:
    bits_per_byte(encoder, params, ByteTokenizer(), "text", window=8, stride=4)
  assert "\n" not in str(e.value)
  model, params, _ = unigram_decoder()
  no_start = ByteTokenizer()
  no_start.eos_id = None
  with pytest.raises(UserError, match="needs an EOS or BOS token"):
    bits_per_byte(model, params, no_start, "text", window=8, stride=4)
