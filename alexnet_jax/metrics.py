"""Metrics to `WORKDIR/metrics.jsonl` and TensorBoard event files, and human-readable progress lines.

Only process 0 writes; other processes get a writer that does nothing. TensorBoard events are written as
TFRecords with the `tensorboard` package's `RecordWriter` (its `EventFileWriter` imports TensorFlow when it
is installed: seconds per process), so the synthetic path never loads TensorFlow.
"""

import io
import json
import os
import socket
import time

from absl import logging
import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


class MetricsWriter:
  """Appends one JSON object per record to metrics.jsonl and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'metrics.jsonl')
    self._jsonl = open(path, 'a', encoding='utf-8')
    if not _ends_with_newline(path):
      # A run killed mid-write left its last record cut short: start on a line of our own, or our
      # first record would be glued to it and lost with it.
      self._jsonl.write('\n')
    self._tensorboard = os.path.join(workdir, 'tensorboard')
    self._events = {}  # split -> its event file, opened at its first record

  def write(self, step: int, split: str, **values: float) -> None:
    """One record, e.g. write(100, 'train', loss=2.3, top1_err=0.9, ...)."""
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, 'wall_time': time.time()}
    record.update({k: _to_python(v) for k, v in values.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=float(v))
        for k, v in values.items() if isinstance(_to_python(v), (int, float))])
    self._write_event(split, event_pb2.Event(wall_time=record['wall_time'], step=int(step),
                                             summary=summary))

  def write_image(self, step: int, tag: str, image: np.ndarray, split: str = 'train') -> None:
    """A uint8 [H, W, 3] image to TensorBoard's image tab."""
    if not self.enabled:
      return
    from PIL import Image  # pylint: disable=g-import-not-at-top
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format='PNG')
    encoded = summary_pb2.Summary.Image(height=image.shape[0], width=image.shape[1],
                                        colorspace=image.shape[2],
                                        encoded_image_string=buffer.getvalue())
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=encoded)])
    self._write_event(split, event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def _write_event(self, split: str, event: event_pb2.Event) -> None:
    if split not in self._events:
      self._events[split] = _open_event_file(os.path.join(self._tensorboard, split))
    self._events[split].write(event.SerializeToString())
    self._events[split].flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    for events in self._events.values():
      events.close()


def _ends_with_newline(path: str) -> bool:
  """Whether the file at `path` is empty or its last byte is a newline."""
  with open(path, 'rb') as f:
    if f.seek(0, os.SEEK_END) == 0:
      return True
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b'\n'


def _open_event_file(directory: str) -> RecordWriter:
  """A new TensorBoard event file in `directory`, starting with the version record TensorBoard expects."""
  os.makedirs(directory, exist_ok=True)
  name = f'events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}'
  writer = RecordWriter(open(os.path.join(directory, name), 'wb'))
  writer.write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2').SerializeToString())
  return writer


def _to_python(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def log_progress(step: int, total_steps: int, loss: float, examples_per_sec: float,
                 seconds_left: float) -> None:
  logging.info('step %d/%d  loss %.4f  %.1f img/s  ETA %s', step, total_steps, loss,
               examples_per_sec, format_duration(seconds_left))
