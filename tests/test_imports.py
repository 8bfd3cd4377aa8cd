"""The package's modules import each other without a cycle (lazy imports included)."""

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


def test_no_import_cycle():
  files = {}
  for package in PACKAGES:
    for folder, _, names in os.walk(os.path.join(ROOT, package)):
      for name in names:
        if name.endswith(".py") and name != "__init__.py":
          module = os.path.relpath(os.path.join(folder, name[:-3]), ROOT).replace(os.sep, ".")
          files[module] = os.path.join(folder, name)
  graph = {m: _imports(p, set(files)) for m, p in files.items()}
  assert graph["imitator.evaluate"] >= {"imitator.report", "imitator.co_rollout"}
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
