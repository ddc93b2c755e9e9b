"""lmjax train --config experiments/bert_base.py --workdir gs://BUCKET/bert_base \\
      --config.data.data_dir=gs://BUCKET/tfds

Data: TFDS wikipedia/20230601.en as `tfds build` prepares it (TFRecord, a `train` split only, the
article in field `text`). lmjax converts it once to ArrayRecord under LMJAX_DATA_DIR (as large as
the TFRecord files: give it a local disk) and holds 5% of the articles out of `train` by document
hash as the validation split (one pass over the articles, kept; data.held_out_per_mille=50 is
recorded in config.json). Checked offline on a stand-in builder of that layout (tests/test_sources.py:
WikiText-2 articles, TFRecord, train only, `text` + `title`), not on the real download.
Tokenization runs in data.workers=8 grain processes (an accelerator host has the cores).

BERT-base pretraining recipe of Devlin et al. (2019): 12 layers, 768 wide, 30k-piece
vocabulary, MLM + NSP, batch 256, AdamW lr 1e-4 (warmup 10k steps, linear decay,
weight decay 0.01), 1M steps: 90% at seq 128, then the last 10% at seq 512 -- run
the second phase by rerunning in the same workdir with
  --config.data.seq_len=512 --config.objective.max_predictions=80
(the checkpoint resumes at step 900k; position embeddings are already 512 long).
Expect MLM accuracy ~0.7 and NSP accuracy ~0.98 at the end, as in the paper; on a
TPU v4-32 / 8xH100 the seq-128 phase runs at about 4 days. Use parallel.mode=mesh
with data=-1 (pure data parallel fits) or fsdp for larger batches.
"""
from lmjax.config import base_config, model_section


def get_config():
  c = base_config()
  c.model = model_section("bert-base", dtype="bfloat16")
  c.tokenizer.update(vocab_size=30522, model_type="unigram")
  c.data.update(source="wikipedia/20230601.en", text_field="text", train_split="train",
                eval_split="validation", held_out_per_mille=-1, seq_len=128, batch_size=256, workers=8)
  c.objective.update(name="mlm_nsp", max_predictions=20)
  c.optim.update(lr=1e-4, schedule="linear", warmup_steps=10_000, end_lr_ratio=0.0,
                 weight_decay=0.01, b2=0.999)
  c.train.update(steps=1_000_000, log_every=100, eval_every=10_000, eval_batches=100,
                 checkpoint_every=5_000, keep=3, samples=0)
  c.parallel.update(mode="mesh", data=-1, fsdp=1, tensor=1)
  return c
