"""Metrics to `WORKDIR/metrics.jsonl` and TensorBoard event files, and human-readable progress lines.

Only process 0 writes; other processes get a writer that does nothing. TensorBoard events are written as
TFRecords with the `tensorboard` package's `RecordWriter` (its `EventFileWriter` imports TensorFlow when it
is installed: seconds per process), so the synthetic path never loads TensorFlow.
"""

from collections.abc import Mapping
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
  """Appends one JSON object per record to metrics.jsonl and mirrors scalars to TensorBoard.

  `start_step`: the step a training run starts or resumes from. A run killed after its last
  checkpoint logged steps it will now redo; the records of every step after `start_step` are dropped
  from metrics.jsonl (rewritten whole, then renamed over it), and TensorBoard is told to drop its
  events of those steps too (a SessionLog.START event at `start_step + 1`: TensorBoard's event
  reader discards the events of earlier files from that step on). Each file is then one history,
  as an uninterrupted run would have written it. `alexnet_jax.evaluate`'s records (they carry a
  "checkpoint" key) describe checkpoints, not the run's progress, and are kept.

  `tensorboard_runs`: the TensorBoard run (a folder under DIR/tensorboard) of each split's
  records; by default each split in a run of its own name ('train', 'eval', 'eval_train'), its
  event file opened at its first record.
  """

  def __init__(self, workdir: str, enabled: bool = True, start_step: int | None = None,
               tensorboard_runs: Mapping[str, str] | None = None):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'metrics.jsonl')
    if start_step is not None:
      _drop_records_after(path, start_step)
    self._jsonl = open(path, 'a', encoding='utf-8')
    if not _ends_with_newline(path):
      # A run killed mid-write left its last record cut short: start on a line of our own, or our
      # first record would be glued to it and lost with it.
      self._jsonl.write('\n')
    self._tensorboard = os.path.join(workdir, 'tensorboard')
    self._runs = dict(tensorboard_runs or {})  # a split not named here is a run of its own name
    self._restart_step = start_step
    self._events = {}  # run -> its event file, opened at its first record

  def write(self, step: int, split: str, **values: float) -> None:
    """One record, e.g. write(100, 'train', loss=2.3, top1_err=0.9, ...)."""
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, 'wall_time': time.time()}
    record.update({k: _to_python(v) for k, v in values.items()})
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=float(v))
        for k, v in values.items() if isinstance(_to_python(v), (int, float))])
    # The event first: its file is opened at a run's first record, which fails in a read-only
    # workdir before metrics.jsonl (an existing file, appendable there) holds half a record.
    self._write_event(split, event_pb2.Event(wall_time=record['wall_time'], step=int(step),
                                             summary=summary))
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()

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
    run = self._runs.get(split, split)
    if run not in self._events:
      self._events[run] = _open_event_file(os.path.join(self._tensorboard, run))
      if self._restart_step is not None:  # TensorBoard drops this run's events from here on
        restart = event_pb2.Event(wall_time=time.time(), step=int(self._restart_step) + 1,
                                  session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
        self._events[run].write(restart.SerializeToString())
    self._events[run].write(event.SerializeToString())
    self._events[run].flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    for events in self._events.values():
      events.close()


def _drop_records_after(path: str, step: int) -> None:
  """Rewrites metrics.jsonl without the training records of steps after `step` and without lines
  cut short by a kill; whole or not at all (written beside it, then renamed over it)."""
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8') as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if record['step'] <= step or 'checkpoint' in record:
      kept.append(line if line.endswith('\n') else line + '\n')
  if kept == lines:
    return
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.writelines(kept)
  os.replace(path + '.tmp', path)


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
  # Microseconds in the name: a process that opens two in one second (evaluate, called twice)
  # must not truncate its first. TensorBoard reads a run's files in name order: time order.
  name = f'events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}'
  writer = RecordWriter(open(os.path.join(directory, name), 'xb'))
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
