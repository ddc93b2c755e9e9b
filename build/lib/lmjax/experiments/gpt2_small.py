"""lmjax train --config experiments/gpt2_small.py --workdir gs://BUCKET/gpt2_small \\
      --config.data.source=c4/en --config.data.data_dir=gs://BUCKET/tfds

GPT-2 small (Radford et al. 2019; 124M parameters, 12 layers, 768 wide, seq 1024)
trained as nanoGPT's reproduction does: AdamW lr 6e-4, betas (0.9, 0.95), weight
decay 0.1, warmup 2k steps, cosine to 10%, 0.5M tokens per step (batch 512 x 1024 via
gradient accumulation where memory needs it), bf16 compute with fp32 master weights,
cuDNN flash attention on GPUs. Expect a validation loss near 3.3 nats/token on web
text after ~10B tokens (20k steps); on one H100/H200 `lmjax bench train` reports MFU.
"""
from lmjax.config import base_config, model_section


def get_config():
  c = base_config()
  c.model = model_section("gpt2-small", vocab_size=50304, dtype="bfloat16", attention="auto",
                          dropout_rate=0.0, attention_dropout_rate=0.0, scan_layers=True)
  c.tokenizer.update(vocab_size=50304, model_type="bpe")
  c.data.update(source="c4/en", seq_len=1024, batch_size=512)
  c.optim.update(lr=6e-4, schedule="cosine", warmup_steps=2_000, end_lr_ratio=0.1,
                 weight_decay=0.1, b1=0.9, b2=0.95, grad_accum=1)
  c.train.update(steps=20_000, log_every=10, eval_every=1_000, eval_batches=50,
                 checkpoint_every=1_000, keep=3)
  c.parallel.update(mode="mesh", data=-1, fsdp=1, tensor=1)
  return c
