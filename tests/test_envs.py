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


# Registries name their heavy implementations as "module:function" text, imported on use
# (attribution methods, perturbation backends, architecture builders). A script that reaches
# a module of such a subpackage other than its light ones can call them, so it needs them.
LIGHT_MODULES = {"__init__", "registry", "specs", "weight_files"}
REFERENCE = re.compile(r'"([a-z_0-9]+):[A-Za-z_0-9]+"')


def _library_files(module: str) -> list[Path]:
    """The files ``import saliency_robustness.a.b`` runs: each package's __init__ and the
    module itself."""
    parts = module.split(".")[1:]
    files = [LIBRARY / "__init__.py"]
    for depth in range(1, len(parts) + 1):
        target = LIBRARY.joinpath(*parts[:depth])
        if (target / "__init__.py").exists():
            files.append(target / "__init__.py")
        elif target.with_suffix(".py").exists():
            files.append(target.with_suffix(".py"))
    return files


def _referenced_implementations(path: Path) -> list[Path]:
    package = path.parent
    registry = package / "registry.py"
    if package == LIBRARY or path.stem in LIGHT_MODULES or not registry.exists():
        return []
    names = sorted(set(REFERENCE.findall(registry.read_text())))
    return [package / f"{name}.py" for name in names if (package / f"{name}.py").exists()]


def third_party_modules(script: Path) -> set[str]:
    """Top-level third-party modules imported by the script and the library modules it uses
    (with the implementations their subpackage's registry names, see LIGHT_MODULES)."""
    seen, todo, found = set(), [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += _referenced_implementations(path)
        for module in _imports(path):
            top = module.split(".")[0]
            if top == "saliency_robustness":
                todo += _library_files(module)
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
        match = re.match(r"([A-Za-z0-9_.\-]+)\s*(?:==?\s*([^\s;]+))?", entry)
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
        line = line.split("#")[0].split(";")[0].strip()  # no comment, no environment marker
        if line:
            name, version = line.split("==")
            requirements[_normalise(name)] = version
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        for name, version in env_packages(env_file).items():
            if name in ("python", "pip"):
                continue
            assert name in requirements, f"{env_file.name}: {name} is not in requirements.txt"
            assert version == requirements[name], f"{env_file.name}: {name}=={version}"


# --- minimal and fully pinned ----------------------------------------------------------------

HEAVY_BYTES = 20 << 20  # an installed package above 20 MB must never come in unpinned


def _requires(name: str, extras: frozenset[str]) -> list[tuple[str, frozenset[str], bool]]:
    """Runtime dependencies of an installed distribution with ``extras`` requested: (name,
    extras it asks for, whether it bounds the version to one release series: ``==``, ``==X.*``
    or ``~=``, the way torch pins its CUDA wheels)."""
    from packaging.requirements import Requirement

    found = []
    for line in importlib.metadata.distribution(name).requires or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in {"", *extras}):
            exact = any(spec.operator in ("==", "===", "~=") for spec in requirement.specifier)
            found.append((_normalise(requirement.name), frozenset(requirement.extras), exact))
    return found


def _closure(names: set[str]) -> dict[str, bool]:
    """The distributions pip installs for ``names``, recursively, each with whether some
    requirement bounds its version (read from the pinned virtualenv, which has the same
    versions as the envs)."""
    pinned = dict.fromkeys(names, True)
    todo, seen = [(name, frozenset()) for name in names], set()
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        try:
            requires = _requires(*item)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: only reachable on another platform
        for dependency, extras, exact in requires:
            todo.append((dependency, extras))
            pinned[dependency] = pinned.get(dependency, False) or exact
    return pinned


def _installed_bytes(name: str) -> int:
    files = importlib.metadata.distribution(name).files or []
    return sum(path.locate().stat().st_size for path in files if path.locate().is_file())


ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))


@pytest.mark.parametrize("env_file", ENV_FILES, ids=[f.stem for f in ENV_FILES])
def test_env_lists_only_what_its_scripts_need(env_file):
    """Every listed package is imported by a script of the env's rules (or the library code it
    reaches), or is a dependency of one that is (listed to pin its version)."""
    listed = set(env_packages(env_file)) - {"python", "pip"}
    imported = set()
    for _, rule_env, script in RULES:
        if rule_env == env_file.resolve():
            for module in third_party_modules(script) - {"snakemake"}:
                imported |= {_normalise(d) for d in DISTRIBUTIONS.get(module, [module])}
    needed = set(_closure(imported & listed))
    assert not listed - needed, f"{env_file.name}: nothing needs {sorted(listed - needed)}"


@pytest.mark.parametrize("env_file", ENV_FILES, ids=[f.stem for f in ENV_FILES])
def test_env_pulls_no_unpinned_heavy_package(env_file):
    """pip resolves the env's list to these pins plus their dependencies; a dependency that
    is not pinned and is large (torch through medmnist, say) would arrive at whatever version
    is newest on the day the env is built."""
    listed = set(env_packages(env_file)) - {"python", "pip"}
    unpinned = {name for name, exact in _closure(listed).items() if not exact}
    heavy = {name: _installed_bytes(name) >> 20 for name in unpinned}
    heavy = {name: size for name, size in heavy.items() if size << 20 >= HEAVY_BYTES}
    assert not heavy, f"{env_file.name} pulls unpinned {heavy} (MB installed); pin them"
