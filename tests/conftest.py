"""Shared fixtures: real MedMNIST files, a loopback HTTP mirror, and Snakemake runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from data_sources import (
    DATA_ENV,
    DOWNLOAD_CACHE,
    MEDMNIST_CACHE,
    TEST_FLAGS,
    locate_medmnist,
    serve_folder,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDMNIST = REPO.parent / "shared" / "data" / "medmnist"


@pytest.fixture(scope="session")
def shared_medmnist() -> Path:
    """Real MedMNIST files for the tests (``locate_medmnist``)."""
    try:
        folder, _ = locate_medmnist(
            os.environ.get(DATA_ENV), SHARED_MEDMNIST, MEDMNIST_CACHE, DOWNLOAD_CACHE
        )
    except Exception as error:  # no source reachable: say how to provide the files
        pytest.fail(
            f"No real MedMNIST test files: {str(error).rstrip('.')}. Set {DATA_ENV} to a "
            f"folder or URL with {', '.join(f'{flag}.npz' for flag in TEST_FLAGS)}, or put "
            f"them in {MEDMNIST_CACHE}."
        )
    return folder


@pytest.fixture(scope="session")
def mirror_url(shared_medmnist: Path) -> Iterator[str]:
    """The real MedMNIST files served over loopback HTTP, as the workflow's mirror."""
    url, server = serve_folder(shared_medmnist)
    yield url
    server.shutdown()


def snakemake(
    workdir: Path,
    *args: str,
    presets: tuple[str | Path, ...] = ("tiny",),
    python: tuple[str, ...] = (sys.executable, "-m", "snakemake"),
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the real workflow in ``workdir`` with the default config plus presets
    (names in config/presets/, or paths of extra config files); ``python`` is the command
    that starts Snakemake, ``extra_env`` adds to the environment of Snakemake and its jobs."""
    files = [str(REPO / "config" / "config.yaml")]
    files += [
        str(name if isinstance(name, Path) else REPO / "config" / "presets" / f"{name}.yaml")
        for name in presets
    ]
    command = [
        *python,
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--cores", "2",
        "--configfile", *files,
        *args,
    ]  # fmt: skip
    # the library must reach scripts via the Snakefile, not PYTHONPATH
    env = {**os.environ, "PYTHONPATH": "", **(extra_env or {})}
    return subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


def requirement_pins(*names: str) -> list[str]:
    """``name==version`` lines of requirements.txt for these (lower-case) package names."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            pins[line.split("==", 1)[0].lower()] = line
    return [pins[name] for name in names]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mirror_url: str) -> Path:
    """One complete run of the tiny preset, downloading from the loopback mirror."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    result = snakemake(workdir, "--config", f"mirror={mirror_url}")
    if result.returncode != 0:
        pytest.fail(f"snakemake failed:\n{result.stdout[-5000:]}\n{result.stderr[-10000:]}")
    return workdir
