"""TensorBoard scalars without TensorFlow: event files written through epath.

`tf.summary`'s writer costs an import of TensorFlow at the start of every run: 4-8 s on this
project's 2-core machine, more than a nanoGPT-sized run spends compiling. The format needs
none of it: `Event` protos (tensorboard's own `event_pb2`) in TFRecord framing (tensorboard's
`RecordWriter`), the first event naming the file version, as TensorFlow writes them. TensorBoard
and `tf.compat.v1.train.summary_iterator` read the files (tests/test_train.py reads them back).

Paths go through epath, so a gs:// workdir gets its events too; object stores cannot append,
so there the file is rewritten whole at each write (metrics are written every `log_every` steps).
"""
from __future__ import annotations

import io
import os
import socket
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from lmjax import paths


class EventWriter:
  """One event file in `logdir`; `scalars(step, {tag: value})` appends one event."""

  def __init__(self, logdir):
    directory = paths.path(logdir)
    directory.mkdir(parents=True, exist_ok=True)
    self.path = directory / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.v2"
    self.whole = paths.is_url(self.path)
    self.buffer = io.BytesIO()
    self.records = RecordWriter(self.buffer if self.whole else self.path.open("wb"))
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def scalars(self, step: int, values: dict) -> None:
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(v))
                                         for tag, v in values.items()])
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def _write(self, event) -> None:
    self.records.write(event.SerializeToString())
    if self.whole:
      self.path.write_bytes(self.buffer.getvalue())
    else:
      self.records.flush()

  def close(self) -> None:
    if not self.whole:
      self.records.close()
