"""The package's modules import each other without a cycle, and each layer of imitator/
imports only the layers below it (lazy imports included)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("imitator", "learners", "launch")


def _imports(path: str, package_modules: set) -> set:
  """The package modules a file imports anywhere in it (top level or inside functions)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module:
      names = [f"{node.module}.{a.name}" for a in node.names]
      found |= {n for n in names if n in package_modules} or (
          {node.module} & package_modules)
    elif isinstance(node, ast.Import):
      found |= {a.name for a in node.names} & package_modules
  return found


def _graph() -> dict:
  """{module: the package modules it imports}."""
  files = {}
  for package in PACKAGES:
    for folder, _, names in os.walk(os.path.join(ROOT, package)):
      for name in names:
        if name.endswith(".py") and name != "__init__.py":
          module = os.path.relpath(os.path.join(folder, name[:-3]), ROOT).replace(os.sep, ".")
          files[module] = os.path.join(folder, name)
  return {m: _imports(p, set(files)) for m, p in files.items()}


def test_no_import_cycle():
  graph = _graph()
  assert graph["imitator.evaluation.battery"] >= {"imitator.evaluation.figures",
                                                  "imitator.rollout.co_rollout"}
  done, active = set(), []

  def visit(module):
    if module in active:
      raise AssertionError("import cycle: " + " -> ".join(
          active[active.index(module):] + [module]))
    if module in done:
      return
    active.append(module)
    for dep in sorted(graph[module]):
      visit(dep)
    active.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)


# What each part may import besides itself (imitator/__init__.py and each subpackage's
# docstring say the same).
ALLOWED = {
    "learners": ("learners",),
    "imitator.metrics": (),
    "imitator.kinds": ("learners", "imitator.metrics"),
    "imitator.rollout": ("learners", "imitator.metrics"),
    "imitator.runtime": (),
    "imitator.evaluation": ("learners", "imitator.metrics", "imitator.kinds",
                            "imitator.rollout", "imitator.runtime"),
    "imitator.training": ("learners", "imitator.metrics", "imitator.kinds",
                          "imitator.rollout", "imitator.runtime", "imitator.evaluation"),
    "imitator.decay": ("learners", "imitator"),
    "imitator.acting": ("learners", "imitator.metrics", "imitator.runtime"),
    "launch": ("learners", "imitator", "launch"),
}


def _part(module: str) -> str:
  return max((p for p in ALLOWED if module == p or module.startswith(p + ".")), key=len)


def test_each_layer_imports_only_the_layers_below():
  graph = _graph()
  assert not {m for m in graph if m.startswith("imitator.") and m.count(".") == 1} - {
      "imitator.metrics"}, "imitator/ holds modules outside its subpackages"
  wrong = []
  for module, deps in graph.items():
    part = _part(module)
    for dep in deps:
      if _part(dep) != part and not any(dep == a or dep.startswith(a + ".")
                                        for a in ALLOWED[part]):
        wrong.append(f"{module} imports {dep}")
  assert not wrong, "\n".join(wrong)
