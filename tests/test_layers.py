"""Imports run one way: no cycle between the package's top-level modules and subpackages (config,
models, data, formats, export, runtime, evaluate, ...), counting imports inside functions too; only
imports under `if TYPE_CHECKING:` (annotations, never executed) are left out."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "aspp_edge"


def _unit(module: str) -> str:
    """aspp_edge.export.tflite -> export; aspp_edge.config -> config."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imported_modules(path: Path, package_dir: Path) -> list[tuple[str, int]]:
    """(absolute module, line) of every aspp_edge import in `path`, function-level ones included."""
    rel = path.relative_to(package_dir.parent).with_suffix("")
    module = ".".join(rel.parts)
    package = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target + "." + a.name for a in node.names] if node.module is None else [target]
            else:
                names = [node.module or ""]
            found += [(n, node.lineno) for n in names]
    return [(m, line) for m, line in found if m.startswith("aspp_edge.")]


def import_graph(package_dir: Path = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """unit -> {imported unit: ["file:line", ...]} between different units of the package."""
    units = {p.stem if p.is_file() else p.name for p in package_dir.iterdir() if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir)
        src = _unit("aspp_edge." + ".".join(rel.with_suffix("").parts))
        for module, line in _imported_modules(path, package_dir):
            dst = _unit(module)
            if dst != src and dst in units:
                graph.setdefault(src, {}).setdefault(dst, []).append(f"{rel}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_layering():
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": [], "c": []}, "b": {"c": []}}) is None


def test_function_level_imports_count_and_type_checking_ones_do_not(tmp_path):
    pkg = tmp_path / "aspp_edge"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("def f():\n    from ..high import g\n")
    (pkg / "high.py").write_text("from typing import TYPE_CHECKING\nfrom .low import f\nif TYPE_CHECKING:\n    from .other import X\n")
    (pkg / "other.py").write_text("")
    graph = import_graph(pkg)
    assert graph == {"low": {"high": ["low/__init__.py:2"]}, "high": {"low": ["high.py:2"]}}
    assert find_cycle(graph) in (["high", "low", "high"], ["low", "high", "low"])


def test_no_import_cycle_between_the_package_units():
    graph = import_graph()
    assert {"config", "models", "data", "formats", "export", "runtime", "evaluate", "pipeline", "cli"} <= set(graph) | {
        d for deps in graph.values() for d in deps}
    cycle = find_cycle(graph)
    if cycle:
        edges = [f"{a} -> {b} ({', '.join(graph[a][b][:3])})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle: " + " ; ".join(edges))


@pytest.mark.parametrize("low, high", [("formats", "export"), ("formats", "runtime"), ("metrics", "evaluate"), ("runtime", "export")])
def test_bottom_modules_do_not_import_upward(low, high):
    graph = import_graph()
    assert high not in graph.get(low, {}), f"{low} imports {high}: {graph[low][high]}"


# The package's units from the bottom up, as README's "Code layout" lists them; a unit imports only
# units on its own level or below (function-level imports included).
LEVELS = (
    ("errors", "fileio", "metrics", "console", "distributed", "kernels"),
    ("formats",),
    ("models", "data"),
    ("config",),
    ("checkpoint", "train"),
    ("calibration", "quantize"),
    ("runtime",),
    ("export",),
    ("evaluate",),
    ("stages",),
    ("demo", "apps"),
    ("pipeline",),
    ("cli",),
)


def climbing_imports(graph: dict[str, dict[str, list[str]]], levels=LEVELS) -> list[str]:
    """'low -> high (file:line)' for every import from a unit to one on a higher level."""
    level = {unit: i for i, units in enumerate(levels) for unit in units}
    return [f"{a} -> {b} ({w})" for a, deps in sorted(graph.items()) for b, where in sorted(deps.items()) for w in where
            if a in level and b in level and level[b] > level[a]]


def test_imports_follow_the_readme_level_order():
    graph = import_graph()
    units = (set(graph) | {d for deps in graph.values() for d in deps}) - {"__init__"}
    listed = {u for level in LEVELS for u in level}
    assert units <= listed, f"units missing from LEVELS (and README's code layout): {sorted(units - listed)}"
    assert climbing_imports(graph) == []
    # README's code layout lists the same units in the same order (the leaves' line may name several)
    block = (PACKAGE.parents[1] / "README.md").read_text().split("## Code layout", 1)[1].split("```")[1]
    named = [w.rstrip("/,").removesuffix(".py") for line in block.splitlines() if line and not line.startswith(" ")
             for w in line.split("  ")[0].replace(",", " ").split()]
    order = [u for u in named if u in listed]
    assert set(order) == listed, f"README's code layout does not name {sorted(listed - set(order))}"
    assert [next(i for i, lv in enumerate(LEVELS) if u in lv) for u in order] == sorted(
        next(i for i, lv in enumerate(LEVELS) if u in lv) for u in order), order


def test_climbing_imports_are_found():
    graph = {"formats": {"export": ["formats/backends.py:9"]}, "export": {"formats": ["export/__init__.py:3"]}}
    assert climbing_imports(graph) == ["formats -> export (formats/backends.py:9)"]


WIDTH = 140  # the project's line width (README, "Code layout")


def test_source_lines_fit_the_project_width():
    long = [f"{p.relative_to(PACKAGE)}:{i} ({len(line)})" for p in sorted(PACKAGE.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if len(line) > WIDTH]
    assert long == [], f"lines over {WIDTH} characters: {long[:10]}"
