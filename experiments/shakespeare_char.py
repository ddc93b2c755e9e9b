"""lmjax train --config experiments/shakespeare_char.py --workdir runs/shakespeare

nanoGPT's character-level Shakespeare on CPU (its README: `train.py config/train_shakespeare_char.py
--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12
--n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`,
validation loss 1.88 in about 3 minutes), with its recipe: the 65 characters of the text as the
vocabulary, the first 90% of tinyshakespeare to train on and the last 10% to validate, random
windows of 64 characters with every position scored, a pre-LN GPT without dense biases (exact
GELU, LayerNorm eps 1e-5, tied embeddings, learned positions), AdamW (beta2 0.99, weight decay 0.1
on matrices and embeddings), lr 1e-3 warmed up over 100 steps and cosine-decayed to 1e-4 at 2,000,
gradients clipped at 1.0, and the validation loss as the mean over 20 batches of random windows.
Two choices are lmjax's, each measured better here than nanoGPT's and each one flag from it: the
LayerNorms keep a bias (805,248 params against 804,096; nanoGPT's: --config.model.norm_bias=False)
and every kernel starts N(0, 0.02) (nanoGPT scales the residual projections by 1/sqrt(8):
--config.model.scale_residual_init=True). Also left as lmjax has them: warmup starts at lr 0
(nanoGPT: lr/101), evaluation scores the same windows each time.

Measured (2 CPU cores; README "Reproducing nanoGPT's Shakespeare"): validation loss 1.8839 at step
2,000 (1.8803 on every validation character, `lmjax eval`) in 94.4, 97.2, 100.0 and 98.0 s for the
whole command on a quiet machine, against nanoGPT's train.py run back to back with it: 1.8857 in
103.1, 115.0, 108.0 and 108.7 s. Five seeds (1337, 0, 1, 2, 3) on every validation character:
1.885 +- 0.005, against nanoGPT's own 1.902 +- 0.008 (both flags above: lmjax 1.902 +- 0.008,
nanoGPT's model exactly); on the 20-batch figure 1.900 (nanoGPT's 1.887, from other windows: that
figure's sd is 0.0155 for one model, so it compares seeds within one codebase only). So the 1.88
bar is not met on average.
The step: 35 ms against PyTorch's 38 ms. No sample at the end, as nanoGPT's train.py:
`lmjax generate --model runs/shakespeare --prompt "ROMEO:"` is its sample.py.
"""
from lmjax.config import base_config, model_section

SHAKESPEARE = "../shared/data/tinyshakespeare/input.txt"   # from the repo root, as every shared data path


def get_config():
  c = base_config()
  c.seed = 1337
  c.model = model_section("gpt-tiny", vocab_size=65, max_len=64, hidden=128, num_layers=4, num_heads=4,
                          mlp_dim=512, activation="gelu", use_bias=False,
                          dropout_rate=0.0, attention_dropout_rate=0.0)
  c.tokenizer.update(model_type="char", vocab_size=65)
  c.data.update(source="file", path=SHAKESPEARE, train_fraction=0.9, layout="stream", seq_len=64, batch_size=12)
  c.optim.update(name="adamw", lr=1e-3, schedule="cosine", warmup_steps=100, end_lr_ratio=0.1, weight_decay=0.1,
                 b1=0.9, b2=0.99, eps=1e-8, clip_norm=1.0)
  c.train.update(steps=2000, log_every=100, eval_every=250, eval_batches=20, checkpoint_every=250, samples=0)
  return c
