"""Where metrics go: WORKDIR/metrics.jsonl (one object per line: step, split, metrics),
TensorBoard event files in WORKDIR/tensorboard, and the terminal (a tqdm bar on a
terminal, plain periodic lines otherwise). Only process 0 writes."""
from __future__ import annotations

import json
import math
import sys
import time

import jax

from lmjax import paths
from lmjax.errors import UserError
from lmjax.training.tensorboard import EventWriter


class MetricsWriter:

  def __init__(self, workdir, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    self.path = paths.path(workdir) / "metrics.jsonl"
    if self.path.exists():
      # A resumed run rewrites history from its checkpoint on: drop the lines of the steps it
      # will replay, so the file reads as one uninterrupted run. A line cut short by a kill
      # is one of those (it was being written after the last checkpoint).
      self.lines = [l for l in self.path.read_text().splitlines() if (s := step_of(l)) is not None and s <= resume_step]
      self._guard(lambda: self.path.write_text("".join(l + "\n" for l in self.lines)))
    else:
      self.lines = []
    # Object stores (gs://) cannot append: there the file is written whole at each line.
    self.file = None if paths.is_url(self.path) else self._guard(lambda: self.path.open("a"))
    self.tb = self._guard(lambda: EventWriter(paths.path(workdir) / "tensorboard"))

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "split": split}
    row.update({k: float(v) for k, v in metrics.items()})
    if self.file is None:
      self.lines.append(json.dumps(row))
      self._guard(lambda: self.path.write_text("".join(l + "\n" for l in self.lines)))
    else:
      self._guard(lambda: (self.file.write(json.dumps(row) + "\n"), self.file.flush()))
    scalars = {f"{split}/{k}": v for k, v in row.items() if k not in ("step", "split") and math.isfinite(v)}
    self._guard(lambda: self.tb.scalars(step, scalars))

  def close(self) -> None:
    if self.enabled:
      try:
        if self.file is not None:
          self.file.close()
        self.tb.close()
      except OSError:
        pass   # its error was said when the write failed

  def _guard(self, write):
    """write(), or a one-line error when the disk is full, read-only or gone."""
    try:
      return write()
    except OSError as e:
      why = getattr(e, "strerror", None) or ("No space left on device" if "No space left" in str(e) else
                                             str(e).strip().splitlines()[-1][-120:])
      raise UserError(f"cannot write {self.path.parent} ({why}); free space or fix the disk, then rerun "
                      "the same command to resume from the last checkpoint") from None


def step_of(line: str) -> int | None:
  """The step of a metrics.jsonl line, or None for a line that is not one (cut short by a kill)."""
  try:
    row = json.loads(line)
    return int(row["step"]) if isinstance(row, dict) and "step" in row else None
  except (ValueError, TypeError):
    return None


class Progress:
  """tqdm on a terminal; otherwise a plain line every `every` steps (logs stay readable)."""

  def __init__(self, start: int, total: int, every: int):
    self.enabled = jax.process_index() == 0
    self.every, self.total, self.step = every, total, start
    self.bar = None
    if self.enabled and sys.stderr.isatty():
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
    self.t0 = time.time()

  def update(self, step: int, fields: dict) -> None:
    if not self.enabled:
      return
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    if self.bar is not None:
      self.bar.update(step - self.step)
      self.bar.set_postfix_str(text, refresh=False)
    elif step % self.every == 0 or step == self.total:
      print(f"step {step}/{self.total} {text}", flush=True)
    self.step = step

  def message(self, text: str) -> None:
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.write(text)
    else:
      print(text, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
