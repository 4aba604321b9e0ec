"""The benchmark's output format and FLOP count (a tiny run; no timing is asserted)."""

import json
import os
import re
import subprocess
import sys

import pytest

from bench import train_step as step_bench
from alexnet_jax.model import AlexNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flops_per_image_of_the_paper_model():
  # Multiply-adds per 227x227 image, by layer (grouped convs count half the input channels).
  macs = (55 * 55 * 11 * 11 * 3 * 96  # conv1
          + 27 * 27 * 5 * 5 * 48 * 256  # conv2, groups=2
          + 13 * 13 * 3 * 3 * 256 * 384  # conv3
          + 13 * 13 * 3 * 3 * 192 * 384  # conv4, groups=2
          + 13 * 13 * 3 * 3 * 192 * 256  # conv5, groups=2
          + 9216 * 4096 + 4096 * 4096 + 4096 * 1000)  # fc6, fc7, fc8
  assert step_bench.train_flops_per_image(AlexNet(), 227) == 3 * 2 * macs == 4_346_440_896


def test_tiny_run_against_torch_prints_table_json_and_ratio_last(tmp_path, capsys):
  out = tmp_path / 'step_bench.json'
  # `run`, not `main`: main's process settings are for a process of its own.
  step_bench.run(step_bench.parse_args([
      '--width=0.125', '--image_size=67', '--batch_sizes=4', '--dtypes=float32', '--steps=1',
      '--rounds=2', '--matmul_size=256', '--compare-torch', f'--json_out={out}']))
  output = capsys.readouterr()
  lines = output.out.strip().splitlines()
  # Progress on stderr: the full-size run takes minutes on a small CPU and said nothing meanwhile.
  progress = output.err.strip().splitlines()
  assert progress[0] == '[1/1] batch 4, float32 (and torch): compiling and warming up'
  assert [re.sub(r'\d+:\d\d', 'M:SS', line) for line in progress[1:]] == [
      f'[1/1] round {k}/2 timed, M:SS so far, about M:SS left' for k in (1, 2)]
  assert progress[-1].endswith('about 0:00 left')

  assert lines[0].startswith('machine: backend=cpu')
  assert re.fullmatch(r'peak matmul \(256x256, float32\): [\d.]+ GFLOP/s', lines[1])
  rows = [line.split() for line in lines if line.startswith(('jax ', 'torch '))]
  assert [row[:3] for row in rows] == [['jax', 'float32', '4'], ['torch', 'float32', '4']]
  assert rows[1][3] == '-'  # no compile time for torch
  assert re.fullmatch(r'jax/torch speed ratio: \d+\.\d\d', lines[-1])

  result = json.loads(out.read_text())
  jax_row, torch_row = result['rows']
  assert jax_row['compile_s'] > 0 and jax_row['peak_mem_gib'] > 0
  assert jax_row['timed_steps'] == torch_row['timed_steps'] == 2
  assert jax_row['ms_p10'] <= jax_row['ms_per_step'] <= jax_row['ms_p90']
  assert 0 < jax_row['mfu'] and jax_row['train_gflop_per_image'] == torch_row['train_gflop_per_image']
  ratio = jax_row['images_per_sec'] / torch_row['images_per_sec']
  assert result['jax_over_torch'] == {'4': pytest.approx(ratio)}
  assert lines[-1] == f'jax/torch speed ratio: {ratio:.2f}'


@pytest.mark.parametrize('flag, message', [
    ('--batch_sizes=128,x', 'positive integers'),
    ('--dtypes=float16', 'unknown dtype'),
    ('--steps=0', 'must be >= 1'),
])
def test_bad_flags_name_the_problem(flag, message, capsys):
  with pytest.raises(SystemExit):
    step_bench.parse_args([flag])
  assert message in capsys.readouterr().err


def test_input_benchmark_runs_and_reports_every_rate():
  result = subprocess.run(
      [sys.executable, '-m', 'bench.input_pipeline', '--num_images=16', '--batch_size=8',
       '--passes=1', '--cores=1', '--rounds=2'], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith('16 JPEGs, 500x375 / 375x500, quality 90')
  assert lines[0].endswith('medians of 2 round(s)')
  names = ('plain decode', 'window decode', 'window, no resize', 'train pipeline',
           'train, host resize', 'eval, 1 crop(s)', 'eval, 10 crop(s)', 'plain decode, 256',
           'train pipeline, 256', 'train, host resize, 256', 'train, store')
  rates = {line[:24].strip(): line[24:].split() for line in lines[2:2 + len(names)]}
  assert list(rates) == list(names)
  assert all(len(v) == 3 and min(float(v[0]), float(v[1])) > 0 for v in rates.values())
  assert rates['plain decode'][2] == rates['plain decode, 256'][2] == '1.00x'
  assert re.fullmatch(r'\d+\.\d\dx', rates['train, store'][2])
  for line, name in zip(lines[-4:-2], names[-3:-1]):
    assert re.fullmatch(f'{name}: / 500x375 decode per core: [\\d.]+x', line), line
  store_line = re.fullmatch(r'train, store: writing the store took [\d.]+ ms of CPU per image; its '
                            r'batches per core / plain decode: ([\d.]+x) \(rounds: [\d.]+, [\d.]+\)',
                            lines[-2])
  assert store_line and store_line.group(1) == rates['train, store'][2], lines[-2]
  # The summary: the median of the per-round ratios, and each of them.
  summary = re.fullmatch(r'train / decode per core: ([\d.]+)x \(rounds: ([\d.]+), ([\d.]+)\)',
                         lines[-1])
  assert summary, lines[-1]
  median, *per_round = map(float, summary.groups())
  assert summary.group(1) + 'x' == rates['train pipeline'][2]
  assert abs(median - sum(per_round) / 2) <= 0.011 and all(r > 0 for r in per_round)


def test_input_ops_benchmark_times_every_op():
  result = subprocess.run([sys.executable, '-m', 'bench.input_ops', '--calls=2'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith('TensorFlow ') and 'median of 3 x 2' in lines[0]
  assert [line[:45].strip() for line in lines[1:]] == [
      'resize 332x332 window, uint8 input, round', 'resize 332x332 window, float32 copy, round',
      'mirror 5 crops, strided slice [:, :, ::-1]', 'mirror 5 crops, tf.reverse']
  assert all(float(line[45:]) > 0 for line in lines[1:])


def test_folder_check_benchmark_times_both_starts():
  result = subprocess.run([sys.executable, '-m', 'bench.folder_check', '--num_images=16'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith('16 JPEGs (500x375 / 375x500)')
  assert [line.split()[0] + ' ' + line.split()[1] for line in lines[1:]] == [
      'decode check', 'check remembered']
  assert all(float(line.split()[-2]) > 0 for line in lines[1:])


def test_host_memory_benchmark_compares_malloc_settings_in_fresh_interpreters():
  result = subprocess.run([sys.executable, '-m', 'bench.host_memory', '--steps=3', '--rounds=1'],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert lines[0].split() == ['mode', 'images/s', 'wall', 'ms', 'user', 'ms', 'system', 'ms', 'faults']
  rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[1:3]}
  assert set(rows) == {'default', 'keep'} and all(v > 0 for v in rows['keep'][:3])
  assert rows['keep'][4] < rows['default'][4]  # the page faults a step: the point of keeping
  assert lines[-1].startswith('keep/default images/s: ')
