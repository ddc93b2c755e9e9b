"""The command line: `lmjax COMMAND ...` (same as `python -m lmjax COMMAND ...`).

Each subcommand parses its flags and calls one library function. Config overrides
(`--config.section.key=value`) are collected from the remaining arguments.
Bad input (lmjax.errors.UserError) prints as one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys

from lmjax.errors import UserError


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="lmjax", description="Pretrain, compare and reuse Transformer LMs in JAX.")
  sub = p.add_subparsers(dest="command", required=True)

  def with_config(sp):
    sp.add_argument("--config", default=None, help="experiments/NAME.py (default: experiments/gpt_tiny.py)")
    return sp

  train = with_config(sub.add_parser("train", help="train from a config; rerun to resume"))
  train.add_argument("--workdir", required=True)
  train.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-process)")
  train.add_argument("--num-processes", type=int, default=None)
  train.add_argument("--process-id", type=int, default=None)

  ev = sub.add_parser("eval", help="metrics of a trained model as one JSON object")
  ev.add_argument("--workdir", required=True)
  ev.add_argument("--split", default="validation")
  ev.add_argument("--data", default=None, help="a local text/TSV/CSV/JSONL file to evaluate on")

  gen = sub.add_parser("generate", help="continue a prompt with the KV cache")
  gen.add_argument("--workdir", required=True)
  gen.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
  gen.add_argument("--max-new-tokens", type=int, default=64)
  gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  gen.add_argument("--top-k", type=int, default=0)
  gen.add_argument("--top-p", type=float, default=1.0)
  gen.add_argument("--seed", type=int, default=0)
  gen.add_argument("--num-samples", type=int, default=1)

  fm = sub.add_parser("fill-mask", help="top-k tokens for each [MASK]")
  fm.add_argument("--workdir", required=True)
  fm.add_argument("--text", action="append", required=True, help="repeat for a batch of texts")
  fm.add_argument("--top-k", type=int, default=5)

  ft = with_config(sub.add_parser("finetune", help="fine-tune a pretrained checkpoint on a task"))
  ft.add_argument("--init", required=True, help="workdir of the pretrained model (lmjax or converted)")
  ft.add_argument("--workdir", required=True)

  conv = sub.add_parser("convert", help="import/export Hugging Face BERT and GPT-2 checkpoints")
  direction = conv.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from-hf", metavar="HF_DIR", help="config.json + model.safetensors to import")
  direction.add_argument("--to-hf", action="store_true", help="export --workdir to --out")
  conv.add_argument("--workdir", required=True)
  conv.add_argument("--out", help="HF directory to write (with --to-hf)")

  tok = sub.add_parser("tokenizer", help="tokenizer tools")
  tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True)
  tok_train = with_config(tok_sub.add_parser("train", help="train the config's sentencepiece model"))
  tok_train.add_argument("--workdir", required=True)

  bench = sub.add_parser("bench", help="speed of training, data and decoding")
  bench_sub = bench.add_subparsers(dest="bench_command", required=True)
  bench_train = with_config(bench_sub.add_parser("train", help="step time, tokens/s, MFU"))
  bench_train.add_argument("--steps", type=int, default=20)
  bench_train.add_argument("--vs-torch", action="store_true", help="interleave the HF PyTorch model")
  bench_train.add_argument("--json", action="store_true")
  bench_data = with_config(bench_sub.add_parser("data", help="input pipeline tokens/s"))
  bench_data.add_argument("--batches", type=int, default=200)
  bench_gen = with_config(bench_sub.add_parser("generate", help="decoding tokens/s with the KV cache"))
  bench_gen.add_argument("--new-tokens", type=int, default=256)
  bench_gen.add_argument("--json", action="store_true")
  return p


def run(args, overrides) -> None:
  from lmjax.config import load_config
  cmd = args.command
  if cmd == "train":
    from lmjax.training import loop
    loop.train(load_config(args.config, overrides), args.workdir,
               coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
  elif cmd == "eval":
    from lmjax.training import loop
    loop.evaluate_cli(args.workdir, split=args.split, data=args.data)
  elif cmd == "generate":
    from lmjax.inference import generate
    generate.main(args)
  elif cmd == "fill-mask":
    from lmjax.inference import fill_mask
    fill_mask.main(args)
  elif cmd == "finetune":
    from lmjax.training import finetune
    finetune.finetune(load_config(args.config, overrides), init=args.init, workdir=args.workdir)
  elif cmd == "convert":
    from lmjax.convert import hf
    if args.from_hf:
      hf.import_hf(args.from_hf, args.workdir)
    else:
      if not args.out:
        raise UserError("--to-hf needs --out HF_DIR, the directory to write")
      hf.export_hf(args.workdir, args.out)
  elif cmd == "tokenizer":
    from lmjax.data import tokenizer
    tokenizer.train_from_config(load_config(args.config, overrides), args.workdir)
  elif cmd == "bench":
    import importlib
    importlib.import_module(f"lmjax.bench.{args.bench_command}").main(load_config(args.config, overrides), args)


def main(argv=None) -> None:
  args, rest = parser().parse_known_args(argv)
  overrides = [a for a in rest if a.startswith("--config.")]
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser().error(f"unrecognized arguments: {' '.join(unknown)}")
  if overrides and not hasattr(args, "config"):
    parser().error(f"{args.command} takes no --config overrides")
  try:
    run(args, overrides)
  except UserError as e:
    print(f"lmjax {args.command}: error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print(f"lmjax {args.command}: interrupted", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  main()
