"""A study's report from its finished runs: results.json (the figures), report.md (the table) and two
plots (PNG). Every figure comes from the runs' records, which runs.record reads from metrics.jsonl.

Per arm: params, steps, training FLOPs and tokens (the budget's share), the held-out pretraining
figure of its kind, the probe score as mean and sample standard deviation over seeds, and its
difference to the baseline arm with a 95% interval (Welch's t: arms have their own variances and,
at equal FLOPs, their own step counts, so seeds are not paired). An interval that includes zero
is marked: the difference is within what the seeds show as noise.
"""
from __future__ import annotations

import json
import math
import statistics

from lmjax import paths
from lmjax.compare.study import Plan

HELD_OUT = {"mlm_loss": "held-out MLM loss (same masks)", "bits_per_byte": "held-out bits/byte"}


def spread(values: list[float]) -> dict:
  return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
          "values": values}


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> dict | None:
  """mean(a) - mean(b) with its `level` interval (Welch-Satterthwaite degrees of freedom); None with
  fewer than two values on a side (no variance to judge noise by)."""
  if len(a) < 2 or len(b) < 2:
    return None
  from scipy import stats
  va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
  diff = statistics.fmean(a) - statistics.fmean(b)
  se = math.sqrt(va + vb)
  if se == 0:
    return {"mean": diff, "low": diff, "high": diff, "includes_zero": diff == 0}
  dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
  return {"mean": diff, "low": diff - half, "high": diff + half, "includes_zero": bool(diff - half <= 0 <= diff + half)}


def summarize(plan: Plan, records: list[dict]) -> dict:
  """results.json's content: per arm, the figures of its finished runs."""
  metric = plan.probe_metric
  by_arm = {arm: sorted((r for r in records if r["arm"] == arm), key=lambda r: r["seed"]) for arm in plan.arms}
  base = [r["probe"][metric] for r in by_arm[plan.baseline]]
  arms = {}
  for arm, runs in by_arm.items():
    if not runs:
      continue
    scores = [r["probe"][metric] for r in runs]
    held = {k: spread([r["held_out"][k] for r in runs]) for k in HELD_OUT if k in runs[0]["held_out"]}
    arms[arm] = {
        "seeds": [r["seed"] for r in runs], "params": runs[0]["params"], "steps": runs[0]["steps"],
        "train_flops": runs[0]["train_flops"], "tokens": runs[0]["tokens"], "held_out": held,
        "probe": spread(scores),
        "vs_baseline": None if arm == plan.baseline else welch_interval(scores, base),
    }
  kind, value = plan.budget
  return {"study": plan.name, "budget": {kind: value}, "baseline": plan.baseline, "seeds": list(plan.seeds),
          "probe": {"task": plan.probe.task.name, "metric": metric, "steps": plan.probe.train.steps},
          "complete": all(len(by_arm[a]) == len(plan.seeds) for a in plan.arms), "arms": arms}


def fmt(x: float | None, digits: int = 4) -> str:
  return "n/a" if x is None else f"{x:.{digits}g}"


def markdown(results: dict, records: list[dict]) -> str:
  metric = results["probe"]["metric"]
  kind, value = next(iter(results["budget"].items()))
  held_cols = [k for k in HELD_OUT if any(k in a["held_out"] for a in results["arms"].values())]
  lines = [f"# {results['study']}", "",
           f"Budget: {value:.4g} training {kind} per run (each arm's step count derived from it); seeds "
           f"{', '.join(map(str, results['seeds']))}; probe: {results['probe']['task']} fine-tuned "
           f"{results['probe']['steps']} steps from each run's final checkpoint, {metric} on its held-out part."
           + ("" if results["complete"] else " **Incomplete: some runs have not finished.**"), "",
           "| arm | params | steps | train FLOPs | tokens | train time (s) | "
           + " | ".join(HELD_OUT[k] for k in held_cols) + f" | probe {metric} | vs {results['baseline']} (95% CI) |",
           "|---" * (8 + len(held_cols)) + "|"]
  for arm, a in results["arms"].items():
    seconds = [r["train_seconds"] for r in records if r["arm"] == arm]
    held = [f"{fmt(a['held_out'][k]['mean'])} ± {fmt(a['held_out'][k]['std'], 2)}" if k in a["held_out"] else "n/a"
            for k in held_cols]
    p = a["probe"]
    d = a["vs_baseline"]
    if arm == results["baseline"]:
      vs = "baseline"
    elif d is None:
      vs = "n/a (needs 2+ seeds)"
    else:
      vs = f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" + (" ≈ (includes 0)" if d["includes_zero"] else "")
    lines.append(f"| {arm} | {a['params']:,} | {a['steps']} | {a['train_flops']:.3g} | {a['tokens']:.3g} | "
                 f"{statistics.fmean(seconds):.0f} | " + " | ".join(held) + f" | {fmt(p['mean'])} ± {fmt(p['std'], 2)} | {vs} |")
  lines += ["", "± is the standard deviation over seeds. ≈ marks a difference whose 95% interval includes zero: "
            "at this scale it is within the noise between seeds. Train time is the training steps' wall-clock on "
            "the machine that ran them (evaluation and saving excluded). n/a: the figure does not apply to that "
            "arm (bits per byte needs a decoder; the MLM loss needs an MLM head).", "",
            "![validation loss against training FLOPs](loss_vs_flops.png)", "",
            f"![probe {metric} per arm](probe.png)", "",
            "Steps, FLOPs, tokens, losses and scores are read from runs/ARM/seed_S/pretrain/metrics.jsonl (train, "
            "eval and held_out lines) and runs/ARM/seed_S/probe/metrics.jsonl (the task line); params are counted "
            "from each arm's model config; train time adds up the throughput logged in the train lines."]
  return "\n".join(lines) + "\n"


def plot(results: dict, records: list[dict], out) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for i, arm in enumerate(results["arms"]):
    for j, r in enumerate(r for r in records if r["arm"] == arm):
      flops, loss = zip(*r["eval_curve"]) if r["eval_curve"] else ((), ())
      ax.plot(flops, loss, marker="o", color=f"C{i}", alpha=0.8, label=arm if j == 0 else None)
  ax.set_xlabel("training FLOPs")
  ax.set_ylabel("validation loss (the arm's own objective)")
  ax.set_title(results["study"])
  ax.legend()
  fig.tight_layout()
  fig.savefig(str(out / "loss_vs_flops.png"), dpi=120)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(6.5, 3.5))
  names = list(results["arms"])
  for i, arm in enumerate(names):
    a = results["arms"][arm]
    ax.scatter([i] * len(a["probe"]["values"]), a["probe"]["values"], color=f"C{i}", alpha=0.6)
    ax.errorbar(i, a["probe"]["mean"], yerr=a["probe"]["std"] or 0, fmt="_", color="black", capsize=8, markersize=20)
  ax.set_xticks(range(len(names)), names)
  ax.set_ylabel(f"probe {results['probe']['metric']}")
  fig.tight_layout()
  fig.savefig(str(out / "probe.png"), dpi=120)
  plt.close(fig)


def write(plan: Plan, records: list[dict], workdir) -> dict:
  """report.md, results.json, loss_vs_flops.png and probe.png in the study's workdir; returns results."""
  out = paths.path(workdir)
  results = summarize(plan, records)
  (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
  (out / "report.md").write_text(markdown(results, records))
  plot(results, records, out)
  return results
