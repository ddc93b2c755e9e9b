"""Experiment configs, one per file: its docstring is the command that runs it and the result measured.
Installed with lmjax as `lmjax.experiments`, so `--config NAME` finds them from any directory."""
