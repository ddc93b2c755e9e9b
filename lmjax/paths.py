"""Paths that may be URLs: a workdir or data path given as `gs://bucket/run` stays that URL all the
way to orbax and TFDS (which read it through the same `etils.epath`), and a local one becomes
absolute. `pathlib.Path("gs://b/r").resolve()` would have made it the local directory `gs:/b/r`.

    workdir = paths.path("gs://bucket/run")      # PosixGPath('gs://bucket/run')
"""
from __future__ import annotations

import os

from etils import epath


def is_url(p) -> bool:
  return "://" in os.fspath(p)


def path(p) -> epath.Path:
  """`p` as an epath.Path: a URL as given, a local path made absolute (symlinks kept)."""
  return epath.Path(p) if is_url(p) else epath.Path(os.path.abspath(os.fspath(p)))
