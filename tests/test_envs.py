"""Per-rule conda envs stay honest: every third-party module a rule's script reaches
(directly or through the library) is listed in that rule's env file, with the same
version as the pinned virtualenv requirements."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "src" / "saliency_robustness"
RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _rules_with_env_and_script() -> list[tuple[str, Path, Path]]:
    found = []
    for path in RULE_FILES:
        for block in re.split(r"^rule ", path.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0].strip()
            conda = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            script = re.search(r'script:\s*\n\s*"([^"]+)"', block)
            if script:
                assert conda, f"rule {name} runs a script but has no conda: env"
                found.append(
                    (name, (path.parent / conda[1]).resolve(), (path.parent / script[1]).resolve())
                )
    return found


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def third_party_modules(script: Path) -> set[str]:
    """Top-level third-party modules imported by the script and the library modules it uses."""
    seen, todo, found = set(), [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(path):
            top = module.split(".")[0]
            if top == "saliency_robustness":
                parts = module.split(".")[1:]
                target = LIBRARY.joinpath(*parts).with_suffix(".py") if parts else None
                todo.append(target if target and target.exists() else LIBRARY / "__init__.py")
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return found


def env_packages(env_file: Path) -> dict[str, str]:
    """Package name -> pinned version from a conda env file (conda and pip entries)."""
    spec = yaml.safe_load(env_file.read_text())
    entries = []
    for dependency in spec["dependencies"]:
        entries += dependency["pip"] if isinstance(dependency, dict) else [dependency]
    pins = {}
    for entry in entries:
        match = re.match(r"([A-Za-z0-9_.\-]+)\s*(?:==?\s*(\S+))?", entry)
        pins[_normalise(match[1])] = match[2] or ""
    return pins


RULES = _rules_with_env_and_script()
DISTRIBUTIONS = importlib.metadata.packages_distributions()


def test_every_rule_has_an_env_and_a_script():
    assert {name for name, _, _ in RULES} >= {
        "download_medmnist",
        "train",
        "attribute",
        "summarise",
    }


@pytest.mark.parametrize(("rule", "env_file", "script"), RULES, ids=[r[0] for r in RULES])
def test_script_imports_are_in_the_rules_env(rule, env_file, script):
    listed = set(env_packages(env_file))
    missing = []
    for module in sorted(third_party_modules(script)):
        if module == "snakemake":
            continue  # Snakemake provides the script's `snakemake` object itself
        candidates = {_normalise(d) for d in DISTRIBUTIONS.get(module, [module])}
        if not candidates & listed:
            missing.append(f"{module} (from {sorted(candidates)})")
    assert not missing, f"rule {rule}: {env_file.name} lacks {missing}"


def test_env_versions_match_requirements():
    requirements = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            requirements[_normalise(name)] = version
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        for name, version in env_packages(env_file).items():
            if name in ("python", "pip"):
                continue
            assert name in requirements, f"{env_file.name}: {name} is not in requirements.txt"
            assert version == requirements[name], f"{env_file.name}: {name}=={version}"
