"""`lmjax compare`: pretraining objectives side by side at equal compute, one command per study.

    plan = study.plan(load_config("compare_bert_objectives"), name="compare_bert_objectives")
    for arm, seed in plan.runs():
      runs.run_one(plan, "runs/bert_objectives", arm, seed)     # resumable; a finished run is skipped
    results = report.write(plan, runs.finished(plan, "runs/bert_objectives"), "runs/bert_objectives")

study.py turns a study config (shared settings, arms, seeds, a budget, a probe) into run configs;
runs.py runs one arm at one seed (pretraining, held-out figures, the probe); report.py writes
results.json, report.md and the plots. The study directory is one TensorBoard logdir: every run's
events are under runs/ARM/seed_S/.
"""
from lmjax.compare import report, runs, study

__all__ = ["report", "runs", "study"]
