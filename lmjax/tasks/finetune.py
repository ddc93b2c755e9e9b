"""`lmjax finetune`: a pretrained workdir + a task config -> a fine-tuned workdir and its task scores.

    lmjax finetune --config experiments/sst2_minilm.py --init runs/minilm --workdir runs/sst2

The --init workdir (from `lmjax train` or `lmjax convert --from-hf`) gives the model section and the
params; the task (task.name, a file of tasks/) adds its heads and its dropout, and names its loss.
Training is `loop.train` with the pretrained params where their paths match (a new head starts
fresh and is saved with the rest) and the task's rows as data, so checkpoints, resume and metrics
are the loop's. At the end the task's own scores on the validation part are returned and added to
WORKDIR/metrics.jsonl (split "task").
"""
from __future__ import annotations

import copy

import jax
import ml_collections

from lmjax import checkpoint, objectives, paths, tasks
from lmjax.errors import UserError
from lmjax.training import loop
from lmjax.training.metrics import MetricsWriter
from lmjax.training.run import check_workdir, setup


def task_config(cfg, init_model: dict, init) -> ml_collections.ConfigDict:
  """cfg with its model section = the --init model + the task's heads and dropout, and
  objective.name = the task's loss."""
  if "task" not in cfg or not cfg.task.get("name"):
    raise UserError("a fine-tuning config needs a task section with task.name (one of "
                    f"{sorted(tasks.TASKS)}); start from experiments/sst2_minilm.py, squad_minilm.py or xsum_gpt.py")
  task = tasks.get(cfg.task.name)
  causal, needs = bool(init_model.get("causal")), objectives.OBJECTIVES[task.OBJECTIVE].causal
  if needs is not None and needs != causal:
    held, needed = ("a decoder (GPT)", "an encoder (BERT)") if causal else ("an encoder (BERT)", "a decoder (GPT)")
    raise UserError(f"--init {init} holds {held}; task {cfg.task.name} needs {needed} workdir")
  if cfg.data.seq_len > init_model["max_len"]:
    raise UserError(f"data.seq_len={cfg.data.seq_len} exceeds the --init model's max_len={init_model['max_len']}")
  model = dict(init_model, heads=list(task.HEADS), dropout_rate=cfg.task.dropout)
  if "num_labels" in cfg.task:
    model["num_labels"] = cfg.task.num_labels
  cfg = copy.deepcopy(cfg)
  cfg.model = ml_collections.ConfigDict(model)
  cfg.objective.name = task.OBJECTIVE
  cfg.tokenizer.vocab_size = model["vocab_size"]
  cfg.task.init = str(init)
  return cfg


def copy_tokenizer(init, workdir) -> None:
  """The init's tokenizer, so the loop reuses it instead of training one."""
  init, workdir = paths.path(init), paths.path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if (init / "tokenizer.model").is_file():
    (init / "tokenizer.model").copy(workdir / "tokenizer.model", overwrite=True)
  elif (init / "tokenizer").is_dir():
    (workdir / "tokenizer").mkdir(exist_ok=True)
    for f in (init / "tokenizer").iterdir():
      f.copy(workdir / "tokenizer" / f.name, overwrite=True)
  else:
    raise UserError(f"--init {init} has no tokenizer (tokenizer.model or tokenizer/); is it an lmjax workdir?")


def task_source(cfg):
  """(split name, tokenizer) -> the task's rows of that split, as the loop's batches read them."""
  task = tasks.get(cfg.task.name)
  return lambda split, tokenizer: task.source(cfg, task.examples(cfg, split), tokenizer)


def finetune(cfg, init, workdir) -> dict:
  """Trains the task head (and the body) from --init, then returns and records the task scores."""
  init, workdir = paths.path(init), paths.path(workdir)
  init_cfg = checkpoint.read_config(init)
  if "model" not in init_cfg:
    raise UserError(f"--init {init}: its config.json has no model section")
  cfg = task_config(cfg, init_cfg["model"], init)
  check_workdir(workdir, cfg)
  copy_tokenizer(init, workdir)
  params = checkpoint.restore_params(init)
  loop.train(cfg, workdir, init_params=params, source=task_source(cfg))
  scores = evaluate_task(cfg, workdir)
  if jax.process_index() == 0:
    writer = MetricsWriter(workdir, resume_step=cfg.train.steps)
    writer.write(cfg.train.steps, "task", dict(scores))
    writer.close()
  return scores


def evaluate_task(cfg, workdir, data: str | None = None, split: str = "validation") -> dict:
  """The task's scores on `data` (a task file) or on the config's validation part."""
  cfg = copy.deepcopy(ml_collections.ConfigDict(cfg))
  cfg.parallel.mode = "jit"
  task = tasks.get(cfg.task.name)
  run = setup(cfg, workdir, source=task_source(cfg))
  params = checkpoint.restore_params(workdir)
  examples = task.read(cfg, data) if data else task.examples(cfg, split)
  return task.scores(cfg, run.model, params, run.tokenizer, examples)
