"""The library's layers: stage subpackages whose imports point only downward, with no cycle.

Every import counts, the ones inside functions too, because a lazy import is still an arrow a
reader has to follow."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rationale_bench"

# Bottom to top, in the order the stages run; a module may import its own layer or lower ones.
LAYERS: dict[str, int] = {
    "errors": 0,
    "data": 1,
    "cohort": 2,
    "text": 3,
    "config_check": 4,
    "study": 4,
    "teacher": 5,
    "train": 6,
    "evaluate": 7,
    "report": 8,
    "throughput": 9,
    "slurm_profile": 9,
    "workflow": 9,
    "snakemake_patches": 9,
    "cli": 10,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The rationale_bench modules ``path`` imports, module level and inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rationale_bench.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rationale_bench"):
            if node.module == "rationale_bench":
                found |= {f"rationale_bench.{a.name}" for a in node.names}
            else:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    return {m for m in found if m in modules}


def layer_of(module: str) -> str:
    return module.split(".")[1]


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in SRC.rglob("*.py")}


def test_every_module_has_a_layer():
    unplaced = {layer_of(m) for m in import_graph() if "." in m} - set(LAYERS)
    assert not unplaced, f"add these to LAYERS, bottom to top: {sorted(unplaced)}"


def test_imports_point_only_downward():
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if "." in module
        for target in targets
        if LAYERS[layer_of(target)] > LAYERS[layer_of(module)]
    ]
    assert not upward, "imports that point up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = import_graph()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in visiting:
            cycle = visiting[visiting.index(module) :] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        visiting.append(module)
        for target in sorted(graph.get(module, ())):
            if target != module and target in graph:
                visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a data module that imports the report is caught."""
    fake = tmp_path / "rationale_bench"
    for package in ("data", "report"):
        (fake / package).mkdir(parents=True)
        (fake / package / "__init__.py").write_text("")
    (fake / "report" / "names.py").write_text("")
    (fake / "data" / "codes.py").write_text("from rationale_bench.report import names\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    with pytest.raises(AssertionError, match="data.codes -> rationale_bench.report"):
        test_imports_point_only_downward()


def test_the_cycle_check_catches_a_cycle(tmp_path, monkeypatch):
    """Two report modules that import each other, as figures and the report prose once did."""
    fake = tmp_path / "rationale_bench" / "report"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "figures.py").write_text("from rationale_bench.report import prose\n")
    (fake / "prose.py").write_text("def f():\n    from rationale_bench.report import figures\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake.parent)
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle()
