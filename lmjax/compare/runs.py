"""One run of a study: pretrain an arm at a seed, score it on held-out data, probe it by fine-tuning.

    STUDY/tokenizers/KEY/                    one tokenizer per distinct tokenizer + data settings, shared by the arms
    STUDY/runs/ARM/seed_S/pretrain/          an ordinary `lmjax train` workdir
    STUDY/runs/ARM/seed_S/probe/             an ordinary `lmjax finetune` workdir, --init the pretrain one
    STUDY/runs/ARM/seed_S/result.json        written last: the run is finished

Each stage resumes as `lmjax train` does, so rerunning after a signal or a kill -9 continues where the
run stopped and ends with the same figures. Every figure of result.json is read back from the two
workdirs' metrics.jsonl (`record`): pretraining's train and eval lines, the `held_out` line this
module adds, and the probe's `task` line.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json

import jax

from lmjax import checkpoint, paths
from lmjax.compare.study import Arm, Plan
from lmjax.data import sources, tokenizer as tokenizers
from lmjax.errors import UserError
from lmjax.tasks import finetune
from lmjax.training import evaluate, loop, steps
from lmjax.training.metrics import MetricsWriter, step_of
from lmjax.training.run import setup

HELD_OUT_SEED = 0   # every run's held-out rows and masks are the same, whatever the run's seed


def run_dir(workdir, arm: str, seed: int):
  return paths.path(workdir) / "runs" / arm / f"seed_{seed}"


def is_done(workdir, arm: str, seed: int) -> bool:
  return (run_dir(workdir, arm, seed) / "result.json").exists()


def run_one(plan: Plan, workdir, arm_name: str, seed: int) -> dict:
  """Pretrain, held-out figures, probe; returns the run's record (and writes it as result.json)."""
  d = run_dir(workdir, arm_name, seed)
  arm = plan.arms[arm_name]
  if is_done(workdir, arm_name, seed):
    result = record(plan, arm_name, seed, workdir)   # re-read: the figures the study asks for now
    check_steps(result, arm, d)
    return result
  cfg = arm.run_config(seed)
  pretrain = d / "pretrain"
  for where, steps_now in ((pretrain, cfg.train.steps), (d / "probe", plan.probe.train.steps)):
    if (where / "config.json").exists() and checkpoint.read_config(where)["train"]["steps"] != steps_now:
      raise UserError(f"{where} was started for {checkpoint.read_config(where)['train']['steps']} steps; this "
                      f"study now asks {steps_now}: a changed budget or probe is a new study, give it a new --workdir")
  share_tokenizer(workdir, cfg, pretrain)
  loop.train(cfg, pretrain)
  if jax.process_index() == 0:
    writer = MetricsWriter(pretrain, resume_step=cfg.train.steps)
    writer.write(cfg.train.steps, "held_out", held_out(plan, arm, cfg, pretrain))
    writer.close()
  probe = copy.deepcopy(plan.probe)
  probe.seed = seed
  finetune.finetune(probe, init=pretrain, workdir=d / "probe")
  result = record(plan, arm_name, seed, workdir)
  if jax.process_index() == 0:
    tmp = d / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    tmp.replace(d / "result.json")
  return result


def check_steps(result: dict, arm: Arm, where) -> None:
  if result["steps"] != arm.cfg.train.steps:
    raise UserError(f"{where} finished with {result['steps']} steps; this study's budget gives arm {arm.name} "
                    f"{arm.cfg.train.steps}: a changed budget is a new study, give it a new --workdir")


def share_tokenizer(workdir, cfg, pretrain) -> None:
  """The arms compare on one tokenizer: trained once per distinct (tokenizer, data) settings, copied into
  each run. Trained into a temporary directory and renamed, so parallel --arm jobs race harmlessly."""
  if tokenizers.has_tokenizer(str(pretrain)) or jax.process_index() != 0:
    return
  data = copy.deepcopy(cfg.data)
  sources.resolve_held_out(data)
  settings = {"tokenizer": cfg.tokenizer.to_dict(), "data": data.to_dict()}
  key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
  shared = paths.path(workdir) / "tokenizers" / key
  if not tokenizers.has_tokenizer(str(shared)):
    tmp = shared.parent / f"{key}.tmp-{jax.process_index()}-{id(cfg)}"
    tmp.mkdir(parents=True, exist_ok=True)
    tokenizers.train_from_config(cfg, str(tmp))
    try:
      tmp.rename(shared)
    except OSError:   # another job finished first: theirs is the same tokenizer
      if not tokenizers.has_tokenizer(str(shared)):
        raise
  finetune.copy_tokenizer(shared, pretrain)


def held_out(plan: Plan, arm: Arm, cfg, pretrain) -> dict:
  """The pretraining figures every arm of its kind can be compared on: a decoder's bits per byte on the
  held-out documents (the first study.held_out_chars characters), an encoder's masked-token loss with the
  same masks for every arm (BERT's token masking at 15%, fixed draws); none for an encoder without an
  MLM head (ELECTRA's discriminator), rather than an approximation."""
  cfg = copy.deepcopy(cfg)
  cfg.seed, cfg.parallel.mode = HELD_OUT_SEED, "jit"
  params = checkpoint.restore_params(pretrain)
  if arm.causal:
    run = setup(cfg, pretrain)
    docs = sources.source_from_config(cfg.data, cfg.data.eval_split)
    text, i = "", 0
    while len(text) < plan.held_out_chars and i < len(docs):
      text += ("\n\n" if text else "") + docs[i]
      i += 1
    window = cfg.data.seq_len
    bpb = evaluate.bits_per_byte(run.model, params, run.tokenizer, text[:plan.held_out_chars], window=window,
                                 stride=window // 2, batch_size=cfg.data.batch_size)
    return {"bits_per_byte": bpb["bits_per_byte"], "bytes": float(bpb["bytes"])}
  if "mlm" not in cfg.model.heads:
    return {}
  # max_predictions 0: no cap on the 15%, so arms with other slot counts still draw the same masks.
  cfg.objective.update(name="mlm", masking="token", mask_rate=0.15, max_predictions=0)
  run = setup(cfg, pretrain)
  eval_step = jax.jit(functools.partial(steps.eval_step, model=run.model, objective=run.objective,
                                        settings=run.settings))
  m = evaluate.evaluate(run, params, eval_step, jax.random.key(HELD_OUT_SEED), split="eval",
                        num_batches=plan.held_out_batches)
  return {"mlm_loss": m["loss"], "mlm_accuracy": m["accuracy"], "mlm_weight": m["mlm_weight"]}


def read_lines(workdir) -> list[dict]:
  path = paths.path(workdir) / "metrics.jsonl"
  return [json.loads(l) for l in path.read_text().splitlines() if step_of(l) is not None] if path.exists() else []


def record(plan: Plan, arm_name: str, seed: int, workdir) -> dict:
  """A finished run's figures, each read from its workdirs' metrics.jsonl."""
  d = run_dir(workdir, arm_name, seed)
  arm = plan.arms[arm_name]
  pre, probe = read_lines(d / "pretrain"), read_lines(d / "probe")

  def lines_of(lines, split, where):
    found = [l for l in lines if l["split"] == split]
    if not found:
      raise UserError(f"{where / 'metrics.jsonl'} has no {split!r} line; delete {d / 'result.json'} (if any) "
                      "and rerun the study to redo this run's missing stage")
    return found
  train = lines_of(pre, "train", d / "pretrain")
  held, task = lines_of(pre, "held_out", d / "pretrain")[-1], lines_of(probe, "task", d / "probe")[-1]
  if plan.probe_metric not in task:
    scores = sorted(k for k in task if k not in ("step", "split"))
    raise UserError(f"study.probe.metric={plan.probe_metric!r} is not one of the probe's scores {scores}; "
                    "set it to one of them and rerun (finished runs are kept)")
  curve = [[l["train_flops"], l["loss"]] for l in pre if l["split"] == "eval"]
  seconds, prev = 0.0, 0
  for l in train:   # training time only (evaluation and saving excluded), as the loop measured it
    seconds += (l["step"] - prev) * arm.tokens_per_step / l["tokens_per_s"] if l["tokens_per_s"] > 0 else 0.0
    prev = l["step"]
  final = train[-1]
  return {"arm": arm_name, "seed": seed, "steps": final["step"], "params": arm.params,
          "train_flops": final["train_flops"], "tokens": final["tokens"],
          "held_out": {k: v for k, v in held.items() if k not in ("step", "split")},
          "probe": {plan.probe_metric: task[plan.probe_metric]},
          "eval_curve": curve, "train_seconds": round(seconds, 1)}


def finished(plan: Plan, workdir) -> list[dict]:
  """The records of the study's finished runs, re-read from their metrics.jsonl."""
  records = [record(plan, arm, seed, workdir) for arm, seed in plan.runs() if is_done(workdir, arm, seed)]
  for r in records:
    check_steps(r, plan.arms[r["arm"]], run_dir(workdir, r["arm"], r["seed"]))
  return records
