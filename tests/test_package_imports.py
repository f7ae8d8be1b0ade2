"""The import layers of mic_det: the shared layers import no task, and no two parts import each other.

Every ``import`` statement of every module counts, also those inside a function
(a lazy import is a dependency all the same). A part is a subpackage of
``mic_det`` (``data``, ``engine``, ``detection``, ...) or a top-level module
(``config``, ``teacher``, ...); the package's ``__init__`` (which imports every
part, to register them) is not one.
"""
import ast
import os
from typing import Dict, Set

from .conftest import REPO

PACKAGE = os.path.join(REPO, "mic_det")
TASKS = {"detection", "segmentation", "classification"}
SHARED = {"data", "engine"}


def _modules():
    """(dotted module name, is a package __init__, path) of every module of mic_det."""
    for folder, _, files in os.walk(PACKAGE):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                is_init = parts[-1] == "__init__"
                yield ".".join(parts[:-1] if is_init else parts), is_init, path


def _imported(module: str, is_init: bool, path: str) -> Set[str]:
    """The dotted names ``path`` imports from mic_det (``from x import y``: x.y when y is a module, else x)."""
    package = module if is_init else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "mic_det")
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            if name.split(".")[0] != "mic_det":
                continue
            for alias in node.names:
                sub = os.path.join(REPO, *f"{name}.{alias.name}".split("."))
                out.add(f"{name}.{alias.name}" if os.path.isdir(sub) or os.path.isfile(sub + ".py") else name)
    return out


def _part(dotted: str) -> str:
    """The part of mic_det a dotted name belongs to ("" for the package itself)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def _part_graph() -> Dict[str, Dict[str, Set[str]]]:
    """part -> {imported part -> the modules whose imports make that edge}."""
    graph: Dict[str, Dict[str, Set[str]]] = {}
    for module, is_init, path in _modules():
        src = _part(module)
        if not src:
            continue
        for name in _imported(module, is_init, path):
            dst = _part(name)
            if dst and dst != src:
                graph.setdefault(src, {}).setdefault(dst, set()).add(module)
    return graph


def test_the_shared_layers_import_no_task_package():
    """mic_det/data/ and mic_det/engine/ import nothing from detection, segmentation or classification;
    tasks plug in through registries (MIC_TASK_REGISTRY, the domain kinds, the label-file checks)."""
    graph = _part_graph()
    found = {f"{sorted(graph[s][t])} -> mic_det.{t}" for s in SHARED for t in TASKS & set(graph.get(s, {}))}
    assert not found, found


def test_no_import_cycle_between_the_parts_of_mic_det():
    graph = _part_graph()
    cycles = []

    def visit(node, stack):
        for nxt in graph.get(node, {}):
            if nxt in stack:
                cycle = stack[stack.index(nxt):] + [nxt]
                cycles.append("; ".join(f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})"
                                        for a, b in zip(cycle, cycle[1:])))
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    done: Set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert not cycles, "\n".join(cycles)


def test_the_import_walk_finds_the_imports_the_layer_tests_rely_on():
    """The walk's own check: it finds the imports the layer tests rely on."""
    graph = _part_graph()
    assert "data" in graph["engine"]  # engine/mic_step.py: from ..data.build import target_batch_size
    assert "task" in graph["detection"]  # detection/task.py: from ..task import MIC_TASK_REGISTRY, MICTask
    assert "data" in graph["segmentation"]  # segmentation/datasets.py: from ..data.kinds import ...


def test_no_task_package_imports_another():
    """What two tasks share (gradient reversal, domain labels, report names) lives in a shared part."""
    graph = _part_graph()
    found = {f"{sorted(graph[s][t])} -> mic_det.{t}" for s in TASKS for t in (TASKS - {s}) & set(graph.get(s, {}))}
    assert not found, found
