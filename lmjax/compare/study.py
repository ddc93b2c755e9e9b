"""A study's plan: its config (shared settings + a `study` section) -> one run config per arm and seed,
each arm's step count derived from the budget. Everything is checked here, before anything trains.

    c = base_config()                  # the settings every arm shares
    c.study = ml_collections.ConfigDict(dict(
        arms={"mlm": {}, "mlm_nsp": {"objective": {"name": "mlm_nsp"}, "model": {"heads": ("mlm", "nsp")}}},
        baseline="mlm", seeds=(0, 1, 2),
        budget=dict(flops=2e13, tokens=0, steps=0),   # exactly one > 0
        evals=5,                         # validation points per arm, evenly spaced
        held_out_batches=20, held_out_chars=100_000,
        probe=dict(config="sst2_probe", metric="accuracy", overrides={}),
    ))
"""
from __future__ import annotations

import copy
import dataclasses
import math

import ml_collections

from lmjax import models, objectives, tasks
from lmjax.config import ConfigError, apply_settings, load_config
from lmjax.errors import UserError
from lmjax.training.flops import train_flops_per_token

BUDGETS = ("flops", "tokens", "steps")


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  cfg: ml_collections.ConfigDict   # the arm's run config, steps set from the budget; run_config sets the seed
  flops_per_token: float
  tokens_per_step: int
  params: int

  @property
  def causal(self) -> bool:
    return bool(self.cfg.model.causal)

  def run_config(self, seed: int) -> ml_collections.ConfigDict:
    cfg = copy.deepcopy(self.cfg)
    cfg.seed = seed
    return cfg


@dataclasses.dataclass(frozen=True)
class Plan:
  name: str
  arms: dict[str, Arm]
  seeds: tuple[int, ...]
  baseline: str
  budget: tuple[str, float]         # (kind, value)
  probe: ml_collections.ConfigDict  # the probe's fine-tuning config, before a seed is set
  probe_metric: str
  held_out_batches: int
  held_out_chars: int

  def runs(self) -> list[tuple[str, int]]:
    """(arm, seed) in the order a whole study runs them: seed by seed, so that a study stopped
    early has every arm at the first seeds."""
    return [(arm, seed) for seed in self.seeds for arm in self.arms]


def plan(cfg: ml_collections.ConfigDict, name: str = "study") -> Plan:
  """The study config -> its Plan, or a one-line ConfigError naming what is wrong."""
  if "study" not in cfg:
    raise ConfigError("this config has no study section; lmjax compare takes a study config such as "
                      "experiments/compare_bert_objectives.py")
  s = cfg.study
  sections = (dict, ml_collections.ConfigDict)
  arms_cfg = dict(need(s, "arms", sections, "a dict of arm name -> {section: {key: value}} changes"))
  if not arms_cfg:
    raise ConfigError("study.arms is empty; name the arms, each {section: {key: value}} changes")
  for arm, changes in arms_cfg.items():
    if not isinstance(changes, sections):
      raise ConfigError(f"study arm {arm!r} is {changes!r}; an arm is a dict {{section: {{key: value}}}} ({{}} = the shared config)")
    if "seed" in changes or "steps" in changes.get("train", {}):
      raise ConfigError(f"study arm {arm!r} sets seed or train.steps; those come from study.seeds and study.budget")
  baseline = need(s, "baseline", str, "the name of the arm the others are compared with")
  if baseline not in arms_cfg:
    raise ConfigError(f"study.baseline={baseline!r} is not one of the arms {sorted(arms_cfg)}")
  seeds = need(s, "seeds", (tuple, list), "a list of distinct integers")
  if not seeds or len(set(seeds)) != len(seeds) or not all(type(x) is int for x in seeds):
    raise ConfigError(f"study.seeds={list(seeds)} must be one or more distinct integers")
  seeds = tuple(seeds)
  budget_cfg = need(s, "budget", sections, f"a dict with one of {list(BUDGETS)} > 0")
  numbers = {k: budget_cfg.get(k, 0) for k in BUDGETS}
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers.values()):
    raise ConfigError(f"study.budget={dict(budget_cfg)}: its values must be numbers")
  budget = [(k, float(v)) for k, v in numbers.items() if v]
  if len(budget) != 1 or budget[0][1] <= 0:
    raise ConfigError(f"study.budget needs exactly one of {list(BUDGETS)} > 0; it holds {dict(budget_cfg)}")
  counts = {k: s.get(k, default) for k, default in (("evals", 5), ("held_out_batches", 20), ("held_out_chars", 100_000))}
  for k, v in counts.items():
    if type(v) is not int or v < 1:
      raise ConfigError(f"study.{k}={v!r} must be a positive integer")
  probe_cfg = need(s, "probe", sections, "dict(config=FINETUNE_CONFIG, metric=SCORE, overrides={...})")
  probe_config = need(probe_cfg, "config", str, "a fine-tuning config's name or path (e.g. sst2_probe)", "study.probe")
  overrides = probe_cfg.get("overrides", {})
  if not isinstance(overrides, sections):
    raise ConfigError(f"study.probe.overrides={overrides!r} must be a dict {{section: {{key: value}}}}")
  metric = probe_cfg.get("metric", "accuracy")
  if not isinstance(metric, str):
    raise ConfigError(f"study.probe.metric={metric!r} must be the name of one of the task's scores")
  shared = copy.deepcopy(cfg)
  del shared["study"]
  # The baseline first, then the others in the ConfigDict's (alphabetical) order: runs and report follow it.
  order = [baseline] + [a for a in arms_cfg if a != baseline]
  arms = {arm: make_arm(arm, shared, arms_cfg[arm], budget[0], counts["evals"]) for arm in order}
  probe = load_config(probe_config)
  apply_settings(probe, overrides, "study.probe.overrides")
  if "task" not in probe or probe.task.get("name") not in tasks.TASKS:
    raise ConfigError(f"study.probe.config={probe_config!r} is not a fine-tuning config (no task.name of "
                      f"{sorted(tasks.TASKS)})")
  for arm in arms.values():
    needs = objectives.OBJECTIVES[tasks.get(probe.task.name).OBJECTIVE].causal
    if needs is not None and needs != arm.causal:
      raise ConfigError(f"study arm {arm.name!r} trains a {'decoder' if arm.causal else 'encoder'}; the probe task "
                        f"{probe.task.name} needs {'a decoder' if needs else 'an encoder'}")
  return Plan(name=name, arms=arms, seeds=seeds, baseline=baseline, budget=budget[0], probe=probe,
              probe_metric=metric, held_out_batches=counts["held_out_batches"],
              held_out_chars=counts["held_out_chars"])


def need(section, key: str, kinds, what: str, where: str = "study"):
  """section[key], or a ConfigError saying what it must be."""
  if key not in section:
    raise ConfigError(f"{where}.{key} is missing; it is {what}")
  if not isinstance(section[key], kinds):
    raise ConfigError(f"{where}.{key}={section[key]!r}: it must be {what}")
  return section[key]


def make_arm(name: str, shared, changes, budget: tuple[str, float], evals: int) -> Arm:
  cfg = copy.deepcopy(shared)
  apply_settings(cfg, changes, f"study arm {name!r}")
  model_cfg = models.model_config(cfg.model)
  try:
    objective = objectives.get(cfg.objective.name, model_cfg)
  except UserError as e:
    raise ConfigError(f"study arm {name!r}: {e}") from None
  seq_len, batch_size = cfg.data.seq_len, cfg.data.batch_size
  flops_per_token = train_flops_per_token(model_cfg, seq_len, objective.heads, cfg.objective.max_predictions,
                                          objective.prefix)
  tokens_per_step = seq_len * batch_size
  kind, value = budget
  per_step = {"flops": flops_per_token * tokens_per_step, "tokens": tokens_per_step, "steps": 1}[kind]
  steps = math.floor(value / per_step + 1e-9)
  if steps < 1:
    raise ConfigError(f"study arm {name!r}: the budget of {value:.4g} {kind} is smaller than one step "
                      f"({per_step:.4g} {kind}); raise study.budget.{kind}")
  if steps < cfg.optim.warmup_steps:
    raise ConfigError(f"study arm {name!r}: the budget gives {steps} steps, fewer than optim.warmup_steps="
                      f"{cfg.optim.warmup_steps}; raise the budget or lower the warmup")
  every = max(1, steps // max(1, evals))
  cfg.train.update(steps=steps, eval_every=every, checkpoint_every=every, samples=0)
  return Arm(name, cfg, flops_per_token, tokens_per_step, models.param_count(model_cfg))
