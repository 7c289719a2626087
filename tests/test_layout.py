"""The package's floors hold: every import (lazy ones inside functions included) goes to the same subpackage or
a lower floor, the model files import only each other (they travel with a saved model), nothing imports the
scripts, and the module graph of the package, scripts and benchmarks has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hf_revdarts"
FLOORS = {"model": 0, "utils": 0, "memory": 1, "search": 1, "training": 2, "evaluation": 2, "protocol": 3}
SCRIPT_DIRS = ("training", "benchmarks", "samples", "testing")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = list(PACKAGE.rglob("*.py"))
    for folder in SCRIPT_DIRS:
        files += list((REPO / folder).rglob("*.py"))
    return {_module_name(p): p for p in files if "__pycache__" not in p.parts}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``path`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if not name.startswith("hf_revdarts") and f"{package}.{target}" in known:
                target = f"{package}.{target}"  # a script importing its neighbour through its own folder on sys.path
            # the longest known module the import names (``from pkg import sub`` names ``pkg.sub``)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path, set(_sources())) for name, path in _sources().items()}


def _floor(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if parts[0] != "hf_revdarts" or len(parts) < 2 or parts[1] not in FLOORS:
        return None
    return parts[1], FLOORS[parts[1]]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _floor(m)))
def test_a_subpackage_imports_only_itself_and_lower_floors(module):
    sub, floor = _floor(module)
    for target in GRAPH[module]:
        assert target.startswith("hf_revdarts"), f"{module} imports the script {target}"
        assert target != "hf_revdarts", f"{module} imports the package root (a facade above every floor)"
        other = _floor(target)
        assert other is not None, f"{module} imports {target}, which belongs to no floor"
        assert other[0] == sub or other[1] < floor, (
            f"{module} (floor {floor}, {sub}) imports {target} (floor {other[1]}, {other[0]})"
        )


def test_model_files_import_only_each_other():
    for module in (m for m in GRAPH if m.startswith("hf_revdarts.model.")):
        outside = {t for t in GRAPH[module] if not t.startswith("hf_revdarts.model")}
        assert not outside, f"{module} travels with saved models but imports {outside}"


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [node])


def test_no_file_is_over_500_lines_but_the_modeling_file():
    allowed = {PACKAGE / "model" / "modeling_revdarts.py"}
    # the project's own sources: run outputs (outputs/, runs/, published/) hold copies of the modeling file
    folders = ("hf_revdarts", "tests", *SCRIPT_DIRS)
    files = [p for folder in folders for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts]
    long = {str(p.relative_to(REPO)): n for p in files if p not in allowed
            and (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, f"files over 500 lines: {long}"
