"""lmjax train --config experiments/shakespeare_char_gpu.py --workdir runs/shakespeare_gpu

nanoGPT's "baby GPT" on character-level Shakespeare (`train.py config/train_shakespeare_char.py`;
its README: best validation loss 1.4697 on one A100 in about 3 minutes): 6 layers, 6 heads, 384
wide, 256 characters of context, batch 64, dropout 0.2, 5,000 steps, lr 1e-3 warmed up over 100
steps and cosine-decayed to 1e-4, AdamW beta2 0.99, weight decay 0.1, clipping at 1.0, evaluation
every 250 steps over 200 batches of random validation windows; bfloat16 compute (nanoGPT's
autocast on an A100), float32 params. Everything else as experiments/shakespeare_char.py, the CPU
version, says.

Not measured yet: no GPU was lent to the task that added it (target: nanoGPT's 1.4697).
"""
from lmjax.config import base_config, model_section

SHAKESPEARE = "../shared/data/tinyshakespeare/input.txt"


def get_config():
  c = base_config()
  c.seed = 1337
  c.model = model_section("gpt-tiny", vocab_size=65, max_len=256, hidden=384, num_layers=6, num_heads=6,
                          mlp_dim=1536, activation="gelu", use_bias=False, dropout_rate=0.2,
                          attention_dropout_rate=0.2, dtype="bfloat16")
  c.tokenizer.update(model_type="char", vocab_size=65)
  c.data.update(source="file", path=SHAKESPEARE, train_fraction=0.9, layout="stream", seq_len=256, batch_size=64)
  c.optim.update(name="adamw", lr=1e-3, schedule="cosine", warmup_steps=100, end_lr_ratio=0.1, weight_decay=0.1,
                 b1=0.9, b2=0.99, eps=1e-8, clip_norm=1.0)
  c.train.update(steps=5000, log_every=100, eval_every=250, eval_batches=200, checkpoint_every=250, samples=1)
  return c
