"""The package's layers: arrows point one way (README "Layout").

command-line mains -> train / eval / data -> objectives / models / facemodels / losses -> render.
Checked two ways: statically, over every import statement of the package (lazy ones inside
functions included), and dynamically, by importing a layer in a fresh interpreter and listing the
third-party packages it pulled in.
"""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "focus_jax"
CLI = {"convert", "convert_model", "export", "prepare", "evaluate", "fit", "quickstart"}
LOWER = ("facemodels", "models", "losses", "objectives", "eval", "data")


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
  """``{module: {imported focus_jax modules}}`` from the source of every module."""
  graph = {}
  for path in PACKAGE.rglob("*.py"):
    name = _module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        found.update(a.name for a in node.names if a.name.startswith("focus_jax"))
      elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("focus_jax"):
        for a in node.names:
          sub = f"{node.module}.{a.name}"
          found.add(
            sub
            if (PACKAGE.parent / sub.replace(".", "/")).exists()
            or (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
            else node.module
          )
    graph[name] = {m for m in found if m != name}
  return graph


def _top(module: str) -> str:
  """The layer of a module: ``focus_jax.render.camera`` -> ``render``."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def test_render_imports_only_render():
  for module, deps in _imports().items():
    if _top(module) == "render":
      assert {_top(d) for d in deps} <= {"render"}, f"{module} imports {sorted(deps)}"


def test_lower_layers_import_no_cli_and_nothing_from_train():
  for module, deps in _imports().items():
    if _top(module) in LOWER:
      bad = sorted(d for d in deps if _top(d) in CLI | {"train"})
      assert not bad, f"{module} imports {bad}"


def test_no_import_cycle():
  graph = _imports()
  state = {}

  def visit(node, path):
    state[node] = "open"
    for dep in graph.get(node, ()):
      if state.get(dep) == "open":
        raise AssertionError("import cycle: " + " -> ".join([*path, node, dep]))
      if dep not in state:
        visit(dep, [*path, node])
    state[node] = "done"

  for node in graph:
    if node not in state:
      visit(node, [])


def _third_party(modules: list[str]) -> set[str]:
  code = (
    "import importlib, sys\n"
    f"for m in {modules!r}: importlib.import_module(m)\n"
    "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return set(out.stdout.strip().split(","))


def _package_modules(*tops: str) -> list[str]:
  return sorted(m for m in _imports() if _top(m) in tops)


def test_render_and_losses_pull_in_no_heavy_dependency():
  loaded = _third_party(_package_modules("render", "losses"))
  banned = {"h5py", "flax", "optax", "orbax", "tensorflow", "tensorflow_datasets", "grain", "cv2"}
  banned |= {"scipy", "ml_collections", "torch"}
  assert not loaded & banned, sorted(loaded & banned)


def test_eval_imports_no_flax():
  loaded = _third_party(_package_modules("eval"))
  assert not loaded & {"flax", "optax", "orbax", "torch"}, sorted(loaded)
