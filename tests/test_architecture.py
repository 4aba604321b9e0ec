"""The package's shape: a one-way import graph in the layers of docs/design.md, no import side effects,
and an installable package that works outside the repository."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / 'alexnet_jax'

# The layers, from the bottom (docs/design.md, "Layers"). A module may import its own layer and the
# layers below it, never one above; commands are the top layer, and no other module imports them.
LAYERS = {
    0: ['defaults', 'runtime', 'errors'],
    1: ['cpu_ops', 'model', 'towers'],
    2: ['data', 'data.info', 'data.synthetic', 'data.folders', 'data.sources', 'data.stream',
        'data.geometry', 'data.draws', 'data.decode', 'data.pipeline', 'data.pixels',
        'data.downsample', 'data.fashion_mnist', 'data.subset', 'data.statistics', 'data.measure',
        'data.resumable', 'data.store', 'data.store_writer'],
    3: ['optim'],
    4: ['steps', 'parallel', 'distributed'],
    5: ['config_validation', 'workdir', 'metrics', 'pictures', 'verdicts'],
    6: ['train'],
    7: ['cli', 'main', 'evaluate', 'predict', 'convert', 'visualize', 'neighbors', 'prepare', 'report'],
}
LAYER = {module: layer for layer, modules in LAYERS.items() for module in modules}
COMMAND_LAYER = max(LAYERS)
LIBRARY = [m for m, layer in LAYER.items() if layer < COMMAND_LAYER]


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _package_modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PACKAGE.rglob('*.py') if _module_name(p)}


def _imports(path: pathlib.Path, modules: set[str]) -> tuple[set[str], set[str]]:
  """(modules of the package that `path` imports anywhere, in functions too; top-level names of
  other first-party trees it imports: configs, bench, launch)."""
  found, outside = set(), set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      # `from a.b import c`: the module a.b.c if there is one, else a.b (c is a name in it).
      names = [f'{node.module}.{alias.name}' for alias in node.names]
    else:
      continue
    for name in names:
      top = name.split('.')[0]
      if top in ('configs', 'bench', 'launch'):
        outside.add(top)
      if top != 'alexnet_jax':
        continue
      inner = name[len('alexnet_jax.'):]
      while inner and inner not in modules:  # `from alexnet_jax.model import AlexNet` -> model
        inner = inner.rpartition('.')[0]
      if inner:
        found.add(inner)
  return found, outside


def _graph() -> dict[str, set[str]]:
  modules = _package_modules()
  graph = {}
  for name, path in modules.items():
    found, outside = _imports(path, set(modules))
    assert not outside, f'alexnet_jax/{name} imports {outside}: the library stands alone'
    graph[name] = found - {name}
  return graph


def test_every_module_has_a_layer():
  assert set(_package_modules()) == set(LAYER), (
      'a module was added or removed: give it a layer here and in docs/design.md')


def test_no_module_imports_a_layer_above_its_own_and_no_library_module_a_command():
  upward = [f'{m} (layer {LAYER[m]}) imports {d} (layer {LAYER[d]})'
            for m, deps in _graph().items() for d in sorted(deps) if LAYER[d] > LAYER[m]]
  assert not upward, '\n'.join(upward)


def test_the_import_graph_has_no_cycle():
  graph, state, cycles = _graph(), {}, []

  def visit(module, path):
    state[module] = 'open'
    for dep in sorted(graph[module]):
      if state.get(dep) == 'open':
        cycles.append(' -> '.join(path[path.index(dep):] + [dep]))
      elif dep not in state:
        visit(dep, path + [dep])
    state[module] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, '\n'.join(cycles)


def test_the_graph_is_read_from_function_level_imports_too(tmp_path):
  # The checks above would be blind to a cycle hidden in a function: this one must see it.
  source = tmp_path / 'probe.py'
  source.write_text('def f():\n  from alexnet_jax import train\n  from alexnet_jax.data import pixels\n')
  assert _imports(source, set(LAYER))[0] == {'train', 'data.pixels'}


# Third-party packages set variables of their own when imported (TensorFlow sets TF2_BEHAVIOR and
# others), which is theirs to do: they are imported first, and only what our modules add is judged.
_SIDE_EFFECTS = textwrap.dedent('''
    import importlib, json, os, sys
    import absl.flags, jax, tensorflow, tensorflow_datasets, flax, optax, orbax.checkpoint
    import ml_collections, matplotlib, PIL, tensorboard
    env, flags = dict(os.environ), set(absl.flags.FLAGS)
    jax_config = dict(jax.config.values)
    changed = {}
    for name in sys.argv[1:]:
      importlib.import_module(f'alexnet_jax.{name}' if name else 'alexnet_jax')
      problems = [f'environment variable {k}' for k in set(env) | set(os.environ)
                  if env.get(k) != os.environ.get(k)]
      problems += [f'absl flag --{f}' for f in set(absl.flags.FLAGS) - flags]
      problems += [f'jax config {k}' for k, v in jax.config.values.items() if jax_config.get(k) != v]
      if problems:
        changed[name or 'alexnet_jax'] = problems
    print(json.dumps(changed))
''')


def test_importing_library_modules_changes_no_environment_variable_flag_or_jax_setting():
  result = subprocess.run([sys.executable, '-c', _SIDE_EFFECTS, '', *LIBRARY], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == '{}'


def test_importing_the_package_alone_changes_nothing_and_imports_no_framework():
  code = ('import os, sys; before = dict(os.environ)\nimport alexnet_jax\n'
          'print(dict(os.environ) == before, "jax" in sys.modules, "tensorflow" in sys.modules)')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
  assert result.stdout.split() == ['True', 'False', 'False'], result.stderr[-3000:]


@pytest.mark.slow
def test_pip_install_works_from_any_directory(tmp_path):
  """`pip install .` into a fresh virtualenv (its dependencies from this interpreter's site, as pip
  cannot download here), then from another directory: the installed package is imported, changes
  nothing, and the smoke command trains with an absolute --config path."""
  checkout = tmp_path / 'checkout'
  shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(
      '.git', 'tests', '__pycache__', '*.egg-info', 'build', '.pytest_cache', 'workdirs', 'runs'))
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', str(venv)], check=True)
  python = venv / 'bin' / 'python'
  install = subprocess.run(
      [python, '-m', 'pip', 'install', '--quiet', '--no-index', '--no-deps', '--no-build-isolation',
       str(checkout)], capture_output=True, text=True, timeout=300)
  assert install.returncode == 0, install.stderr[-3000:]
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}

  code = ('import os; before = dict(os.environ)\nimport alexnet_jax\n'
          'print(alexnet_jax.__file__); print(dict(os.environ) == before)')
  imported = subprocess.run([python, '-c', code], cwd=elsewhere, env=env, capture_output=True,
                            text=True, timeout=60)
  assert imported.returncode == 0, imported.stderr[-3000:]
  location, unchanged = imported.stdout.split()
  assert location.startswith(str(venv)) and unchanged == 'True'

  trained = subprocess.run(
      [python, '-m', 'alexnet_jax.main', f'--config={checkout / "configs" / "smoke.py"}',
       f'--workdir={tmp_path / "run"}', '--config.num_train_steps=4', '--config.log_every_steps=2',
       '--config.eval_every_steps=4', '--config.synthetic_eval_examples=64'],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert '"finished": true' in (tmp_path / 'run' / 'run_info.json').read_text()
