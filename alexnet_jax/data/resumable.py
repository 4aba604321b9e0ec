"""Output that `prepare` writes once, split by split, and that survives being stopped: the folder copy
of `--downsample_to` (alexnet_jax/data/downsample.py) and the pixel store of `--store_to`
(alexnet_jax/data/store_writer.py). Both take hours for ImageNet.

Each split is written into `<out_dir>/<split dir>.partial/` and renamed to `<split dir>/` only when
complete, so a reader never takes half a split for a whole one. A JSON record in `out_dir` says how
each split was made (its settings) and whether it is complete; running the same command again
resumes the splits that are not, and skips those that are. A split folder that the record does not
account for, or that was made with other settings, is refused rather than mixed with.
"""

import json
import os
from typing import Any

from alexnet_jax import errors


def write_atomically(path: str, data: bytes) -> None:
  """Writes `path` whole or not at all: a file of the output that exists is complete."""
  partial = path + '.tmp'
  with open(partial, 'wb') as f:
    f.write(data)
  os.replace(partial, path)


class SplitDirs:
  """The split folders of `out_dir` and the record `out_dir/record_name` that describes them:
  {split dir: {'settings': {...}, 'complete': bool, ...facts of a complete split}}. `kind` names
  the output in messages ('copy', 'store')."""

  def __init__(self, out_dir: str, record_name: str, kind: str):
    self.out_dir, self.kind = out_dir, kind
    self.record_path = os.path.join(out_dir, record_name)
    try:
      with open(self.record_path, encoding='utf-8') as f:
        self.record: dict[str, Any] = json.load(f)
    except FileNotFoundError:
      self.record = {}

  def path(self, split_dir: str) -> str:
    return os.path.join(self.out_dir, split_dir)

  def check(self, split_dir: str, settings: dict[str, Any], elsewhere: str) -> None:
    """Raises errors.ExistsError if `split_dir` (or its .partial) holds anything that was not written
    with `settings`; `elsewhere` says where else to write (the message's fix)."""
    made = self.record.get(split_dir)
    for directory in (self.path(split_dir), self.path(split_dir) + '.partial'):
      if not (os.path.isdir(directory) and os.listdir(directory)):
        continue
      if made is None:
        raise errors.ExistsError(f'{directory} is not empty: remove it, or {elsewhere}.')
      if made['settings'] != settings:
        raise errors.ExistsError(f'{directory} holds a {self.kind} made with '
                                 f'{made["settings"]}, not {settings}: remove it, or {elsewhere}.')

  def complete(self, split_dir: str) -> dict[str, Any] | None:
    """The record of `split_dir` if it is complete and in place, else None."""
    made = self.record.get(split_dir)
    directory = self.path(split_dir)
    if made and made['complete'] and os.path.isdir(directory) and os.listdir(directory):
      return made
    return None

  def start(self, split_dir: str, settings: dict[str, Any]) -> str:
    """Records `split_dir` as being written with `settings`; returns its .partial folder (made if
    needed), where whatever an earlier run wrote is still in place."""
    partial = self.path(split_dir) + '.partial'
    os.makedirs(partial, exist_ok=True)
    self.record[split_dir] = {'settings': settings, 'complete': False}
    self._write_record()
    return partial

  def finish(self, split_dir: str, **facts: Any) -> None:
    """Records `split_dir` complete, with `facts`, and moves its .partial folder into place.

    Recorded complete before the rename: stopped in between, the next run finds every file in
    place, writes none, and renames; recorded after, it would find a full split folder it had not
    marked complete, and no way to finish.
    """
    self.record[split_dir].update(complete=True, **facts)
    self._write_record()
    directory = self.path(split_dir)
    if os.path.isdir(directory):  # empty (`check`): make way for the complete split
      os.rmdir(directory)
    os.rename(directory + '.partial', directory)

  def _write_record(self) -> None:
    write_atomically(self.record_path, json.dumps(self.record, indent=2).encode())
