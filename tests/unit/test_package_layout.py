"""The library's layout rules: no import cycle between its modules, imports at module top
(a deliberately lazy one says why in a comment), and light registries that the Snakemake
process and the table jobs import without the deep-learning stack."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "saliency_robustness"
HEAVY = ("torch", "torchvision", "captum", "pytorch_grad_cam", "imgaug", "torchio", "shap")
# What the Snakemake process imports to plan a study, and the registries behind it.
LIGHT_MODULES = [
    "saliency_robustness.config_schema",
    "saliency_robustness.config_checks",
    "saliency_robustness.attribution.registry",
    "saliency_robustness.models.registry",
    "saliency_robustness.models.specs",
    "saliency_robustness.perturbations.registry",
    "saliency_robustness.datasets.info",
    "saliency_robustness.datasets.custom",
    "saliency_robustness.datasets.labels",
    "saliency_robustness.datasets.medmnist_info",
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _top_level_imports(path: Path) -> set[str]:
    """Library modules imported at module level (what runs when the module is imported)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in MODULES:
                found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names} & MODULES.keys()
    return found


def test_no_import_cycle_between_library_modules():
    graph = {name: _top_level_imports(path) for name, path in MODULES.items()}
    done, active, cycles = set(), [], []

    def visit(name: str) -> None:
        if name in active:
            cycles.append(active[active.index(name) :] + [name])
            return
        if name in done:
            return
        active.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        active.pop()
        done.add(name)

    for name in graph:
        visit(name)
    assert cycles == []


def _local_imports(path: Path) -> list[tuple[int, str]]:
    """Imports inside functions, with the comment block right above each run of them."""
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for statement in ast.walk(node):
            if isinstance(statement, ast.Import | ast.ImportFrom):
                above = statement.lineno - 2
                # a run of imports shares the comment above its first line
                while above >= 0 and lines[above].strip().startswith(("import ", "from ")):
                    above -= 1
                if not lines[above].strip().startswith("#"):
                    found.append((statement.lineno, ast.unparse(statement)))
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_are_at_module_top_unless_a_comment_says_why(module):
    assert _local_imports(MODULES[module]) == []


def test_light_modules_import_no_deep_learning_stack():
    code = (
        "import json, sys\n"
        + "".join(f"import {name}\n" for name in LIGHT_MODULES)
        + f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
        check=True,
    )
    assert json.loads(result.stdout) == []


REPO = SRC.parent
IMPORTERS = sorted(
    path
    for folder in ("src", "workflow/scripts", "tests", "bench")
    for path in (REPO / folder).rglob("*.py")
)


def _library_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every ``from saliency_robustness... import name``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "saliency_robustness"
        ):
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def test_every_library_import_in_the_repository_names_something_that_exists():
    """Scripts, tests and benchmarks import names the library has (a moved or renamed name
    fails here, not in a workflow job)."""
    import importlib

    missing = []
    for path in IMPORTERS:
        for line, module, name in _library_imports(path):
            target = importlib.import_module(module)
            if not hasattr(target, name) and f"{module}.{name}" not in MODULES:
                missing.append(f"{path.relative_to(REPO)}:{line}: {module}.{name}")
    assert missing == []
