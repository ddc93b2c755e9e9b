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
  cfg: ml_collections.ConfigDict   # the run config of seed 0's run, steps set from the budget
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
  arms_cfg = dict(s.get("arms", {}))
  if not arms_cfg:
    raise ConfigError("study.arms is empty; name at least two arms, each {section: {key: value}} changes")
  if s.baseline not in arms_cfg:
    raise ConfigError(f"study.baseline={s.baseline!r} is not one of the arms {sorted(arms_cfg)}")
  seeds = tuple(int(x) for x in s.seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise ConfigError(f"study.seeds={list(s.seeds)} must be one or more distinct integers")
  budget = [(k, float(s.budget.get(k, 0) or 0)) for k in BUDGETS if s.budget.get(k, 0)]
  if len(budget) != 1 or budget[0][1] <= 0:
    raise ConfigError(f"study.budget needs exactly one of {list(BUDGETS)} > 0; it holds {dict(s.budget)}")
  shared = copy.deepcopy(cfg)
  del shared["study"]
  # The baseline first, then the others in the ConfigDict's (alphabetical) order: runs and report follow it.
  order = [s.baseline] + [a for a in arms_cfg if a != s.baseline]
  arms = {arm: make_arm(arm, shared, arms_cfg[arm], budget[0], int(s.get("evals", 5))) for arm in order}
  probe = load_config(s.probe.config)
  apply_settings(probe, s.probe.get("overrides", {}), "study.probe.overrides")
  if "task" not in probe or probe.task.get("name") not in tasks.TASKS:
    raise ConfigError(f"study.probe.config={s.probe.config!r} is not a fine-tuning config (no task.name of "
                      f"{sorted(tasks.TASKS)})")
  for arm in arms.values():
    needs = objectives.OBJECTIVES[tasks.get(probe.task.name).OBJECTIVE].causal
    if needs is not None and needs != arm.causal:
      raise ConfigError(f"study arm {arm.name!r} trains a {'decoder' if arm.causal else 'encoder'}; the probe task "
                        f"{probe.task.name} needs {'a decoder' if needs else 'an encoder'}")
  return Plan(name=name, arms=arms, seeds=seeds, baseline=s.baseline, budget=budget[0], probe=probe,
              probe_metric=s.probe.get("metric", "accuracy"), held_out_batches=int(s.get("held_out_batches", 20)),
              held_out_chars=int(s.get("held_out_chars", 100_000)))


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
