"""`lmjax finetune`: a pretrained workdir + a task config -> a fine-tuned workdir and its task scores.

    lmjax finetune --config experiments/sst2_minilm.py --init runs/minilm --workdir runs/sst2

The --init workdir (from `lmjax train` or `lmjax convert --from-hf`) gives the model section and the
params; the task adds its head (classify: pooler -> Dense(task.num_labels); span: Dense(2) per token;
seq2seq: the decoder as it is) and its dropout. Training is `loop.train` with the pretrained params
where their paths match (the new head starts fresh and is saved with the rest), so checkpoints,
resume and metrics are the loop's. At the end the task's own scores on the validation part are
printed as one JSON object and added to WORKDIR/metrics.jsonl (split "task"):
accuracy and F1 (classify), SQuAD exact match and F1 (span), ROUGE-1/2/L of greedy outputs (seq2seq).
"""
from __future__ import annotations

import copy
import json
import pathlib
import shutil

import jax
import ml_collections
import numpy as np

from lmjax.data import pipeline, tasks
from lmjax.errors import UserError
from lmjax.training import checkpoint, loop
from lmjax.training.metrics import MetricsWriter

TASK_HEADS = {"classify": ("classify",), "span": ("span",), "seq2seq": ()}


def task_config(cfg, init_model: dict, init) -> ml_collections.ConfigDict:
  """cfg with its model section = the --init model + the task's head and dropout."""
  name = cfg.objective.name
  if name not in TASK_HEADS:
    raise UserError(f"objective.name={name!r} is not a fine-tuning task; use one of {sorted(TASK_HEADS)}")
  if "task" not in cfg:
    raise UserError("a fine-tuning config needs a task section; start from experiments/sst2_minilm.py, "
                    "squad_minilm.py or xsum_gpt.py")
  causal = bool(init_model.get("causal"))
  if name == "seq2seq" and not causal:
    raise UserError(f"--init {init} holds an encoder (BERT); objective seq2seq needs a decoder (GPT) workdir")
  if name != "seq2seq" and causal:
    raise UserError(f"--init {init} holds a decoder (GPT); objective {name} needs an encoder (BERT) workdir")
  if cfg.data.seq_len > init_model["max_len"]:
    raise UserError(f"data.seq_len={cfg.data.seq_len} exceeds the --init model's max_len={init_model['max_len']}")
  model = dict(init_model, heads=list(TASK_HEADS[name]), dropout_rate=cfg.task.dropout)
  if name == "classify":
    model["num_labels"] = cfg.task.num_labels
  cfg = copy.deepcopy(cfg)
  cfg.model = ml_collections.ConfigDict(model)
  cfg.tokenizer.vocab_size = model["vocab_size"]
  cfg.task.init = str(init)
  return cfg


def copy_tokenizer(init: pathlib.Path, workdir: pathlib.Path) -> None:
  """The init's tokenizer, so the loop reuses it instead of training one."""
  workdir.mkdir(parents=True, exist_ok=True)
  if (init / "tokenizer.model").is_file():
    shutil.copy2(init / "tokenizer.model", workdir / "tokenizer.model")
  elif (init / "tokenizer").is_dir():
    shutil.copytree(init / "tokenizer", workdir / "tokenizer", dirs_exist_ok=True)
  else:
    raise UserError(f"--init {init} has no tokenizer (tokenizer.model or tokenizer/); is it an lmjax workdir?")


def finetune(cfg, init, workdir) -> dict:
  """Trains the task head (and the body) from --init, then returns and records the task scores."""
  init, workdir = pathlib.Path(init), pathlib.Path(workdir)
  init_cfg = checkpoint.read_config(init)
  if "model" not in init_cfg:
    raise UserError(f"--init {init}: its config.json has no model section")
  cfg = task_config(cfg, init_cfg["model"], init)
  loop.check_workdir(workdir, cfg)
  copy_tokenizer(init, workdir)
  params = checkpoint.restore_params(init)
  loop.train(cfg, workdir, init_params=params)
  scores = evaluate_task(cfg, workdir)
  if jax.process_index() == 0:
    writer = MetricsWriter(workdir, resume_step=cfg.train.steps)
    writer.write(cfg.train.steps, "task", {k: v for k, v in scores.items()})
    writer.close()
    print(json.dumps({"task": cfg.objective.name, **scores}), flush=True)
  return scores


def predict_batches(cfg, rows_or_examples, kind: str, tok, fn, params):
  """fn(params, batch) on every batch of one ordered pass; outputs concatenated, padding rows dropped."""
  it = pipeline.make_iterator(kind, rows_or_examples, tok, seq_len=cfg.data.seq_len,
                              batch_size=cfg.data.batch_size, train=False)
  outs = [jax.tree.map(np.asarray, fn(params, batch)) for batch in it]
  return jax.tree.map(lambda *x: np.concatenate(x)[:len(rows_or_examples)], *outs)


def classification_scores(labels_N, preds_N, num_labels: int) -> dict:
  """Accuracy, and F1 of class 1 (binary) or macro F1 (more classes), in percent."""
  f1s = []
  for c in range(1, 2) if num_labels == 2 else range(num_labels):
    tp = np.sum((preds_N == c) & (labels_N == c))
    denom = np.sum(preds_N == c) + np.sum(labels_N == c)
    f1s.append(2 * tp / denom if denom else 0.0)
  return {"accuracy": 100.0 * float(np.mean(preds_N == labels_N)), "f1": 100.0 * float(np.mean(f1s)),
          "examples": int(len(labels_N))}


def evaluate_task(cfg, workdir, data: str | None = None, split: str = "validation") -> dict:
  """The task's scores on `data` (a task file) or on the config's validation part."""
  cfg = copy.deepcopy(cfg)
  cfg.parallel.mode = "jit"
  run = loop.setup(cfg, workdir)
  params = checkpoint.restore_params(workdir)
  tok, model, name = run.tokenizer, run.model, cfg.objective.name
  if name == "classify":
    exs = tasks.read_sentiment(data, cfg.task.num_labels, cfg.task.text_column) if data else tasks.examples(cfg, split)
    exs = [exs[i] for i in range(len(exs))]

    @jax.jit
    def predict(params, b):
      out = model.apply({"params": params}, b["input_ids"], attention_mask=b["attention_mask"],
                        token_type_ids=b["token_type_ids"])
      return out.class_logits.argmax(-1)
    preds_N = predict_batches(cfg, exs, "classification", tok, predict, params)
    return classification_scores(np.array([ex["label"] for ex in exs]), preds_N, cfg.task.num_labels)
  if name == "span":
    exs = tasks.read_squad(data) if data else tasks.examples(cfg, split)
    rows, meta = tasks.squad_features(exs, tok, seq_len=cfg.data.seq_len, doc_stride=cfg.task.doc_stride,
                                      max_query_len=cfg.task.max_query_len)

    @jax.jit
    def predict(params, b):
      out = model.apply({"params": params}, b["input_ids"], attention_mask=b["attention_mask"],
                        token_type_ids=b["token_type_ids"])
      return out.start_logits, out.end_logits
    start_NxL, end_NxL = predict_batches(cfg, rows, "features", tok, predict, params)
    answers = tasks.best_spans(exs, meta, start_NxL, end_NxL, cfg.task.max_answer_tokens)
    return tasks.squad_metrics(answers, [ex["answers"] for ex in exs])
  return summary_scores(cfg, model, params, tok, tasks.read_seq2seq(data) if data else tasks.examples(cfg, split))


def summary_scores(cfg, model, params, tok, exs) -> dict:
  """ROUGE-1/2/L F-measure (percent, stemmed, as the rouge-score package computes them) of greedy outputs."""
  from rouge_score import rouge_scorer
  from lmjax.inference import generate
  exs = exs[:cfg.task.eval_examples or len(exs)]
  t = cfg.task
  prompts = [tasks.seq2seq_prompt(tok, ex["source"], seq_len=cfg.data.seq_len, max_target_len=t.max_target_len,
                                  separator=t.separator) for ex in exs]
  eos = tok.eos_id if tok.eos_id is not None else tok.sep_id   # as tasks.seq2seq_rows ends targets
  outputs = []
  for i in range(0, len(prompts), cfg.data.batch_size):
    outputs += generate.generate(model, params, prompts[i:i + cfg.data.batch_size], t.max_target_len,
                                 eos_id=eos, pad_id=tok.pad_id or 0)
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  scores = {"rouge1": [], "rouge2": [], "rougeL": []}
  for ex, ids in zip(exs, outputs):
    text = tok.decode([i for i in ids if i != eos])
    for k, s in scorer.score(ex["target"], text).items():
      scores[k].append(s.fmeasure)
  return {**{k: 100.0 * float(np.mean(v)) for k, v in scores.items()}, "examples": len(exs)}
