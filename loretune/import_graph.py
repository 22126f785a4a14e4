"""Which project modules a module imports, read from the source, never by importing it.

Two things need the project's import graph: a stage's code version (the source of every module its
task runs, so an edit anywhere on that path re-runs the stage and an edit elsewhere does not) and the
layer contracts (evaluation never imports the training loop, no library imports Prefect). Both read
it from the syntax tree, so a module that may only be imported on a GPU machine (the unsloth worker's
helper) is still seen, and imports written inside functions (lazy, for start-up time) count like any
other: they are code the stage runs.

import-linter does the contract half, but it finds submodules by walking the root package's folder,
and loretune maps each stage's top-level folder into the `loretune` namespace (pyproject's
package-dir), which that walk does not follow; and it has no notion of a code version. So the graph
is read here, in one place, with the import system's own lookup (`importlib.util.find_spec`).
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

ROOT = "loretune"
# The Prefect layer: wiring, not computation. A stage's version never follows imports into it.
PREFECT_LAYER = ("loretune.tasks", "loretune.flows")
# What a task module imports to be a task (its parameters' types, the store, versions), not to compute.
BOOKKEEPING = frozenset({"loretune.config", "loretune.store", "loretune.fingerprint", "loretune.import_graph"})

Locate = Callable[[str], "Path | None"]


@lru_cache(maxsize=None)
def locate(module: str) -> Path | None:
    """The source file of `module` (a package's `__init__.py`), or None if it is not a module."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent that is not a package: `module` names an attribute
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def is_package(module: str, find: Locate = locate) -> bool:
    path = find(module)
    return path is not None and path.name == "__init__.py"


def is_project(module: str) -> bool:
    return module == ROOT or module.startswith(ROOT + ".")


def in_prefect_layer(module: str) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in PREFECT_LAYER)


def direct_imports(module: str, find: Locate = locate) -> set[str]:
    """The project modules `module` imports anywhere in its source, and the packages above them
    (Python runs a package's `__init__` before any module in it)."""
    return {name for name in all_imports(module, find) if is_project(name)}


def all_imports(module: str, find: Locate = locate) -> set[str]:
    """Every module `module` imports anywhere in its source, third-party ones by the name written
    (`prefect.artifacts`), project ones resolved to modules with the packages above them."""
    path = find(module)
    if path is None:
        raise ModuleNotFoundError(f"import graph: no source for project module {module!r}")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module or "", node.level, package)
            found.add(base)
            if is_project(base) and is_package(base, find):  # `from pkg import name`: a submodule?
                found.update(sub for alias in node.names if alias.name != "*"
                             and find(sub := f"{base}.{alias.name}") is not None)
    external = {name for name in found if not is_project(name)}
    project = {parent for name in found if is_project(name) for parent in _with_parents(name)}
    return (external | project) - {module}


def _absolute(name: str, level: int, package: str) -> str:
    if level == 0:
        return name
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - level + 1])
    return f"{base}.{name}" if name else base


def _with_parents(name: str) -> Iterable[str]:
    parts = name.split(".")
    return (".".join(parts[:i]) for i in range(1, len(parts) + 1))


def closure(roots: Iterable[str], find: Locate = locate, follow: Callable[[str], bool] = lambda m: True) -> set[str]:
    """Every project module reachable from `roots` (included) through imports, walking only into
    modules `follow` accepts (the others are left out of the result)."""
    seen: set[str] = set()
    todo = [m for m in roots if follow(m)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(m for m in direct_imports(module, find) if m not in seen and follow(m))
    return seen


def stage_modules(task_module: str, find: Locate = locate) -> set[str]:
    """The library modules a stage runs: what its task module imports, and everything that reaches,
    without passing through the Prefect layer (a task that borrows a helper from another task does
    not take on that task's stage code).

    The task's own imports of the bookkeeping core (the config's types, the store, the version
    machinery) are not followed: the fingerprint already covers what they decide, by value (the
    parameters, the input versions). A library that uses one of them still brings it in.
    """
    roots = {m for m in direct_imports(task_module, find) if m not in BOOKKEEPING and m != ROOT}
    return closure(roots, find, follow=lambda m: not in_prefect_layer(m))


def modules_in(package: str, find: Locate = locate) -> set[str]:
    """`package` and every module and subpackage in its folder, by walking that folder (the import
    system's own walk, pkgutil, does not follow pyproject's package-dir mapping)."""
    init = find(package)
    if init is None or init.name != "__init__.py":
        raise ModuleNotFoundError(f"import graph: {package!r} is not a project package")
    found = {package}
    for path in sorted(init.parent.iterdir()):
        if path.suffix == ".py" and path.name != "__init__.py":
            found.add(f"{package}.{path.stem}")
        elif path.is_dir() and (path / "__init__.py").is_file():
            found |= modules_in(f"{package}.{path.name}", find)
    return found
