"""python experiments/nanogpt_val_loss.py --nanogpt ~/nanoGPT --out ~/nanoGPT/out-shakespeare-char [--random-batches 1000]

Scores a nanoGPT checkpoint (its `ckpt.pt`) on its Shakespeare validation text the way
`lmjax eval --workdir W` scores an lmjax run: every character of `val.bin` once, as the target of
consecutive windows of block_size (windows at 0, L, 2L, ...: each character but the first, with
the context of its window). With --random-batches N it also draws N batches of random windows as
nanoGPT's `estimate_loss` does (batch size 12) and prints their mean and the spread of the means
of 20 (`--eval_iters=20`, the figure nanoGPT's README reports) across them. So the two codebases'
Shakespeare losses are compared on one exact figure (README "Reproducing nanoGPT's Shakespeare").
Needs torch and a nanoGPT checkout with `data/shakespeare_char/prepare.py` run.

Seeds: nanoGPT's `train.py` fixes its seed at 1337; for other seeds, add `seed = 1337` above its
`config_keys = ...` line and use `torch.manual_seed(seed + seed_offset)`, then `--seed=S`.

Measured (2 CPU cores; nanoGPT at 3adf61e with the README's CPU flags, torch 2.13): seeds 1337,
0, 1, 2, 3 give 1.8983, 1.9089, 1.8910, 1.9081, 1.9043 on every character (mean 1.902; their
20-batch figures at step 2,000: 1.8857, 1.8909, 1.8735, 1.8962, 1.8881); seed 1337's 1,000
random batches average 1.900, and their fifty 20-batch means range 1.861-1.936 (sample sd 0.0155).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--nanogpt", required=True, help="a nanoGPT checkout (its model.py and data/shakespeare_char/val.bin)")
  ap.add_argument("--out", required=True, help="the run's out_dir, holding ckpt.pt")
  ap.add_argument("--random-batches", type=int, default=0,
                  help="also score N batches of random windows (a multiple of 20; train.py's batch size)")
  ap.add_argument("--threads", type=int, default=2)
  args = ap.parse_args(argv)
  if args.random_batches % 20:
    sys.exit(f"nanogpt_val_loss: --random-batches {args.random_batches} is not a multiple of 20 "
             "(they are averaged in groups of 20, as --eval_iters=20); give 0, 20, 40, ...")
  nanogpt = pathlib.Path(args.nanogpt).expanduser()
  val_bin = nanogpt / "data" / "shakespeare_char" / "val.bin"
  ckpt = pathlib.Path(args.out).expanduser() / "ckpt.pt"
  for path, fix in ((nanogpt / "model.py", "--nanogpt must be a nanoGPT checkout"),
                    (val_bin, "run data/shakespeare_char/prepare.py in the nanoGPT checkout"),
                    (ckpt, "--out must be a nanoGPT out_dir that train.py saved a checkpoint to")):
    if not path.is_file():
      sys.exit(f"nanogpt_val_loss: {path} not found; {fix}")

  import torch
  import torch.nn.functional as F
  sys.path.insert(0, str(nanogpt))
  from model import GPT, GPTConfig   # nanoGPT's own model.py
  torch.set_num_threads(args.threads)
  saved = torch.load(ckpt, map_location="cpu", weights_only=False)
  model = GPT(GPTConfig(**saved["model_args"]))
  model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in saved["model"].items()})
  model.eval()
  if saved["iter_num"] != saved["config"]["max_iters"]:
    # With always_save_checkpoint=False, train.py keeps the best checkpoint by its noisy estimate.
    sys.exit(f"nanogpt_val_loss: {ckpt} is from iter {saved['iter_num']}, not the last ({saved['config']['max_iters']}); "
             "rerun train.py with --always_save_checkpoint=True to score the final model")
  val_T = torch.from_numpy(np.fromfile(val_bin, dtype=np.uint16).astype(np.int64))
  L, B = saved["model_args"]["block_size"], saved["config"]["batch_size"]

  total, count = 0.0, 0
  with torch.no_grad():
    for begin in range(0, len(val_T) - 1, L):
      window_1xW = val_T[begin:begin + L + 1][None]   # W = L + 1 but in the last window
      logits_1xLxV, _ = model(window_1xW[:, :-1], window_1xW[:, 1:])
      total += F.cross_entropy(logits_1xLxV[0], window_1xW[0, 1:], reduction="sum").item()
      count += window_1xW.shape[1] - 1
  print(f"{ckpt}: iter {saved['iter_num']}, train.py's best val loss {float(saved['best_val_loss']):.4f}; "
        f"every validation character ({count:,}): {total / count:.4f}")

  if args.random_batches:
    generator, losses = torch.Generator().manual_seed(0), []
    with torch.no_grad():
      for _ in range(args.random_batches):   # train.py's get_batch("val")
        offsets_B = torch.randint(len(val_T) - L, (B,), generator=generator)
        x_BxL = torch.stack([val_T[i:i + L] for i in offsets_B])
        y_BxL = torch.stack([val_T[i + 1:i + 1 + L] for i in offsets_B])
        losses.append(model(x_BxL, y_BxL)[1].item())
    means_of_20 = np.array(losses).reshape(-1, 20).mean(1)
    print(f"{args.random_batches} random batches of {B}: {np.mean(losses):.4f}; means of 20 batches "
          f"(--eval_iters=20): sample sd {means_of_20.std(ddof=1):.4f}, "
          f"range {means_of_20.min():.4f}-{means_of_20.max():.4f}")


if __name__ == "__main__":
  main()
