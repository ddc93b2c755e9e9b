"""The command line: `lmjax COMMAND ...` (same as `python -m lmjax COMMAND ...`).

Each subcommand parses its flags and calls one library function. Config overrides
(`--config.section.key=value`) are collected from the remaining arguments.
Bad input (lmjax.errors.UserError) prints as one line and exits with status 2. Library functions
return values; printing them is this file's job. `--verbose` anywhere shows the libraries' logs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings

from lmjax import host_malloc
from lmjax.errors import Stopped, UserError


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="lmjax", description="Pretrain, compare and reuse Transformer LMs in JAX.")
  sub = p.add_subparsers(dest="command", required=True)

  def with_config(sp):
    sp.add_argument("--config", default=None, help="a config file, or a shipped experiment's name (default: gpt_tiny)")
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

  model_help = ("an lmjax workdir, a save_pretrained directory, or a Hugging Face hub id (gpt2, "
                "bert-base-uncased, ORG/NAME@REVISION): from the HF cache, converted once into LMJAX_CACHE")
  gen = sub.add_parser("generate", help="continue a prompt with the KV cache")
  gen.add_argument("--model", "--workdir", dest="model", metavar="NAME_OR_DIR", required=True, help=model_help)
  gen.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
  gen.add_argument("--max-new-tokens", type=int, default=64)
  gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  gen.add_argument("--top-k", type=int, default=0)
  gen.add_argument("--top-p", type=float, default=1.0)
  gen.add_argument("--seed", type=int, default=0)
  gen.add_argument("--num-samples", type=int, default=1)
  gen.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (1 = off)")
  gen.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam search: a hypothesis scores sum(log p) / length**A")

  fm = sub.add_parser("fill-mask", help="top-k tokens for each [MASK]")
  fm.add_argument("--model", "--workdir", dest="model", metavar="NAME_OR_DIR", required=True, help=model_help)
  fm.add_argument("--text", action="append", required=True, help="repeat for a batch of texts")
  fm.add_argument("--top-k", type=int, default=5)

  ft = with_config(sub.add_parser("finetune", help="fine-tune a pretrained checkpoint on a task"))
  ft.add_argument("--init", "--model", dest="init", metavar="NAME_OR_DIR", required=True,
                  help="the pretrained model: " + model_help)
  ft.add_argument("--workdir", required=True)

  conv = sub.add_parser("convert", help="import/export Hugging Face BERT and GPT-2 checkpoints")
  direction = conv.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from-hf", metavar="NAME_OR_DIR",
                         help="a save_pretrained directory (config.json + model.safetensors) or a hub id")
  direction.add_argument("--to-hf", action="store_true", help="export --workdir to --out")
  conv.add_argument("--workdir", required=True)
  conv.add_argument("--out", help="HF directory to write (with --to-hf)")

  cmp = with_config(sub.add_parser("compare", help="a study: arms x seeds at equal compute, a probe, one report"))
  cmp.add_argument("--workdir", required=True, help="the study's directory (one TensorBoard logdir for every run)")
  cmp.add_argument("--arm", default=None, help="run only this arm (all its seeds unless --seed)")
  cmp.add_argument("--seed", type=int, default=None, help="run only this seed (every arm unless --arm)")
  cmp.add_argument("--report", action="store_true", help="only gather the finished runs into the report")

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
  bench_gen.add_argument("--num-beams", type=int, default=4, help="beams of the beam-search case")
  bench_gen.add_argument("--vs-torch", action="store_true", help="interleave HF PyTorch's generate")
  bench_gen.add_argument("--torch-threads", type=int, help="PyTorch's threads with --vs-torch (default: cores)")
  bench_gen.add_argument("--json", action="store_true")
  return p


def run(args, overrides) -> None:
  """Calls the library function of the subcommand and prints what it returns."""
  from lmjax.config import load_config
  cmd = args.command
  if cmd == "train":
    train(load_config(args.config, overrides), args)
  elif cmd == "eval":
    from lmjax import checkpoint
    cfg = checkpoint.read_config(args.workdir)
    if cfg.get("task", {}).get("name"):   # a fine-tuned run: the task's own scores (accuracy, EM, ROUGE)
      from lmjax.tasks import finetune
      metrics = finetune.evaluate_task(cfg, args.workdir, data=args.data, split=args.split)
    else:
      from lmjax.training import evaluate
      metrics = evaluate.evaluate_workdir(args.workdir, split=args.split, data=args.data)
    print(json.dumps({k: round(v, 6) for k, v in metrics.items()}))
  elif cmd == "generate":
    from lmjax.convert import hub
    from lmjax.inference import generate
    out = generate.generate_text(hub.model_dir(args.model), args.prompt, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                 num_samples=args.num_samples, num_beams=args.num_beams,
                                 length_penalty=args.length_penalty)
    for s in out["samples"]:
      label = f"prompt {s['prompt'] + 1}" + (f", sample {s['sample'] + 1}" if args.num_samples > 1 else "")
      print(f"--- {label} ({s['new_tokens']} new tokens{', ended by EOS' if s['ended_by_eos'] else ''})")
      print(s["text"])
    print(f"--- {out['tokens']} tokens in {out['seconds']:.3f} s: {out['tokens'] / out['seconds']:.1f} tokens/s "
          f"(batch {out['batch']}, prompt bucket {out['prompt_bucket']}, compile {out['compile_s']:.1f} s)")
  elif cmd == "fill-mask":
    from lmjax.convert import hub
    from lmjax.inference import fill_mask
    for text, masks in zip(args.text, fill_mask.fill_mask_text(hub.model_dir(args.model), args.text, args.top_k)):
      print(text)
      for m, candidates in enumerate(masks):
        print(f"  [MASK] {m + 1}: " + "  ".join(f"{piece!r} {p:.3f}" for piece, p in candidates))
  elif cmd == "finetune":
    from lmjax.convert import hub
    from lmjax.tasks import finetune
    cfg = load_config(args.config, overrides)
    scores = finetune.finetune(cfg, init=hub.model_dir(args.init), workdir=args.workdir)
    print(json.dumps({"task": cfg.task.name, **scores}), flush=True)
  elif cmd == "convert":
    from lmjax.convert import hf, hub
    if args.from_hf:
      print(f"lmjax convert: {hub.import_named(args.from_hf, args.workdir)}")
    else:
      if not args.out:
        raise UserError("--to-hf needs --out HF_DIR, the directory to write")
      print(f"lmjax convert: {hf.export_hf(args.workdir, args.out)}")
  elif cmd == "compare":
    compare(load_config(args.config, overrides), args)
  elif cmd == "tokenizer":
    from lmjax.data import tokenizer
    tokenizer.train_from_config(load_config(args.config, overrides), args.workdir)
  elif cmd == "bench":
    import importlib
    importlib.import_module(f"lmjax.bench.{args.bench_command}").main(load_config(args.config, overrides), args)


SAMPLE_PROMPTS = ("The ", "A list is", "To open a file")   # the default corpus is Python's documentation


def train(cfg, args) -> None:
  """`lmjax train`, then on process 0 the validation figures next to the unigram baseline (decoders)
  and a few samples."""
  import jax
  from lmjax.training import evaluate, loop
  metrics = loop.train(cfg, args.workdir, coordinator=args.coordinator, num_processes=args.num_processes,
                       process_id=args.process_id)
  if jax.process_index() != 0:
    return
  print(f"lmjax train: done. validation {', '.join(f'{k}={v:.4g}' for k, v in metrics.items())}", flush=True)
  from lmjax import models
  if not models.model_config(cfg.model).causal:
    return
  print(f"  perplexity {metrics.get('perplexity', float('nan')):.2f} vs unigram baseline "
        f"{evaluate.unigram_baseline(cfg, args.workdir):.2f} (same tokenizer, same split)", flush=True)
  if cfg.train.samples:
    from lmjax.inference import generate
    out = generate.generate_text(args.workdir, list(SAMPLE_PROMPTS[:cfg.train.samples]),
                                 max_new_tokens=min(48, cfg.model.max_len // 2), temperature=0.8, top_k=40)
    for s in out["samples"]:
      print(f"--- sample ---\n{s['text']}", flush=True)


def compare(cfg, args) -> None:
  """`lmjax compare`: the study's runs one after another (or the one --arm/--seed names), then the report."""
  import pathlib
  from lmjax.compare import report, runs, study
  if args.config is None:
    raise UserError("lmjax compare needs --config STUDY, e.g. compare_bert_objectives or compare_bert_vs_gpt")
  plan = study.plan(cfg, name=pathlib.Path(args.config).stem)
  todo = plan.runs()
  if args.arm is not None and args.arm not in plan.arms:
    raise UserError(f"--arm {args.arm!r} is not one of the study's arms {list(plan.arms)}")
  if args.seed is not None and args.seed not in plan.seeds:
    raise UserError(f"--seed {args.seed} is not one of the study's seeds {list(plan.seeds)}")
  todo = [(a, s) for a, s in todo if args.arm in (None, a) and args.seed in (None, s)]
  if not args.report:
    for i, (arm, seed) in enumerate(todo, 1):
      where = runs.run_dir(args.workdir, arm, seed)
      done = runs.is_done(args.workdir, arm, seed)
      print(f"lmjax compare: run {i}/{len(todo)}: arm {arm}, seed {seed}, {plan.arms[arm].cfg.train.steps} steps "
            f"in {where}" + (" (finished before; skipped)" if done else ""), flush=True)
      r = runs.run_one(plan, args.workdir, arm, seed)
      held = ", ".join(f"{k}={v:.4g}" for k, v in r["held_out"].items())
      print(f"lmjax compare: {arm} seed {seed}: probe {plan.probe_metric}={r['probe'][plan.probe_metric]:.4f}"
            + (f", held out {held}" if held else ""), flush=True)
    if args.arm is not None or args.seed is not None:
      print("lmjax compare: done; `lmjax compare --report` gathers the finished runs", flush=True)
      return
  records = runs.finished(plan, args.workdir)
  results = report.write(plan, records, args.workdir)
  print(report.markdown(results, records), end="")
  print(f"lmjax compare: {'report' if results['complete'] else 'partial report'} in {args.workdir}/report.md, "
        "results.json, loss_vs_flops.png, probe.png", flush=True)


def quiet_libraries() -> None:
  """Only lmjax's own lines on the terminal: TensorFlow's start-up banner and the logs of orbax,
  absl and asyncio are hidden unless --verbose is given. A failure still ends in lmjax's one-line
  error; a failed asynchronous save, for one, would otherwise print a page of tracebacks from
  orbax's background threads before it."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")   # its banner; TensorFlow only reads TFDS files here
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.FATAL)
  logging.getLogger().setLevel(logging.CRITICAL)
  # tensorstore's I/O callbacks, still arriving after orbax closed the event loop of a failed save,
  # raise "Event loop is closed" where nothing can catch it: Python reports those as unraisable.
  sys.unraisablehook = lambda unraisable: None
  warnings.filterwarnings("ignore")   # e.g. orbax's never-awaited coroutines after a failed save, at exit


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--verbose" in argv:
    argv.remove("--verbose")
  else:
    quiet_libraries()
  args, rest = parser().parse_known_args(argv)
  overrides = [a for a in rest if a.startswith("--config.")]
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser().error(f"unrecognized arguments: {' '.join(unknown)}")
  if overrides and not hasattr(args, "config"):
    parser().error(f"{args.command} takes no --config overrides")
  host_malloc.keep_freed_memory()   # XLA:CPU's per-step buffers stay in the process (-28% a small step)
  try:
    run(args, overrides)
  except UserError as e:
    print(f"lmjax {args.command}: error: {e}", file=sys.stderr)
    sys.exit(2)
  except Stopped as e:   # a signal asked training to stop; it saved first
    print(f"lmjax {args.command}: {e}", file=sys.stderr)
  except KeyboardInterrupt:
    print(f"lmjax {args.command}: interrupted", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  main()
