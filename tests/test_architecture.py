"""The house rules, read from the code's imports (every ``import`` statement, at module level or inside a
function): the engine is a closed core that imports nothing above it, and no module imports itself back
through others."""
from __future__ import annotations

import ast
import os

import pytest

from conftest import ROOT

PACKAGES = ("engine", "datasets", "trainers", "reporting", "launch")
TOP_MODULES = ("dassl_bridge", "train")
# What the engine must never import: everything of this project that is not the engine
ABOVE_THE_ENGINE = ("datasets", "trainers", "reporting", "launch", "scripts", "dassl_bridge", "train")


def project_modules() -> dict[str, str]:
    """``{dotted module name: file path}`` of every module of the packages and the top-level modules."""
    modules = {name: os.path.join(ROOT, f"{name}.py") for name in TOP_MODULES}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for file in files:
                if not file.endswith(".py"):
                    continue
                parts = os.path.relpath(os.path.join(folder, file), ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = os.path.join(folder, file)
    return modules


def imported_names(path: str, module: str) -> list[tuple[str, int]]:
    """``(dotted name, line)`` of everything ``path`` imports; ``from a import b`` gives ``a.b`` (a module or
    a name in ``a``), relative imports resolved against ``module``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def resolve(name: str, modules: dict[str, str]) -> str | None:
    """The project module ``name`` refers to (itself, or the module holding the imported name), else None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {}
    for module, path in modules.items():
        targets = {resolve(name, modules) for name, _ in imported_names(path, module)}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def test_the_module_walk_sees_the_whole_project():
    modules = project_modules()
    assert {"engine.trainer.trainer", "engine.data.fast.settings", "datasets.readers.base", "trainers.promptemo",
            "reporting.tables", "dassl_bridge", "train"} <= set(modules)
    # and resolves what it reads: the trainer loop imports the data manager; train.py the packages it registers
    graph = import_graph()
    assert "engine.data" in graph["engine.trainer.trainer"]
    assert {"datasets", "trainers", "engine.cli"} <= graph["train"]


def test_the_engine_imports_nothing_above_it():
    modules = project_modules()
    offences = []
    for module, path in sorted(modules.items()):
        if module.split(".")[0] != "engine":
            continue
        for name, line in imported_names(path, module):
            if name.split(".")[0] in ABOVE_THE_ENGINE:
                offences.append(f"{os.path.relpath(path, ROOT)}:{line} imports {name}")
    assert not offences, "\n".join(offences)


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start through ``graph``, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph[node]):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_import_circles():
    """A package's ``__init__`` that re-exports its modules is not a circle with them: a module that imports
    its own package's face (``from engine.data import X`` inside ``engine.data.y``) would be, and is caught."""
    graph = import_graph()
    circles = [" -> ".join(c) for m in sorted(graph) if (c := _cycle_from(m, graph))]
    assert not circles, "\n".join(circles)


@pytest.mark.parametrize("module, imports", [("engine.data.fast.cache", "engine.data.image_io"),
                                             ("engine.data.data_manager", "engine.data.fast")])
def test_the_circle_checker_would_see_a_circle(module, imports):
    graph = import_graph()
    assert imports in graph[module]
    graph[imports] = graph[imports] | {module}  # plant the back edge
    assert _cycle_from(module, graph) is not None
