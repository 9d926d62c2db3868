"""Shared fixtures: real MedMNIST files, a loopback HTTP mirror, and Snakemake runs."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDMNIST = REPO.parent / "shared" / "data" / "medmnist"


@pytest.fixture(scope="session")
def shared_medmnist() -> Path:
    if not (SHARED_MEDMNIST / "breastmnist.npz").is_file():
        pytest.fail(f"Real MedMNIST files are expected in {SHARED_MEDMNIST} (../shared).")
    return SHARED_MEDMNIST


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


def serve_folder(folder: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    """Serve ``folder`` on 127.0.0.1 (free port); returns (base URL, server)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


@pytest.fixture(scope="session")
def mirror_url(shared_medmnist: Path) -> Iterator[str]:
    """The real MedMNIST files served over loopback HTTP, as the workflow's mirror."""
    url, server = serve_folder(shared_medmnist)
    yield url
    server.shutdown()


def snakemake(
    workdir: Path, *args: str, presets: tuple[str | Path, ...] = ("tiny",)
) -> subprocess.CompletedProcess:
    """Run the real workflow in ``workdir`` with the default config plus presets
    (names in config/presets/, or paths of extra config files)."""
    files = [str(REPO / "config" / "config.yaml")]
    files += [
        str(name if isinstance(name, Path) else REPO / "config" / "presets" / f"{name}.yaml")
        for name in presets
    ]
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--cores", "2",
        "--configfile", *files,
        *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ""}  # the library must reach scripts via the Snakefile
    return subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mirror_url: str) -> Path:
    """One complete run of the tiny preset, downloading from the loopback mirror."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    result = snakemake(workdir, "--config", f"mirror={mirror_url}")
    if result.returncode != 0:
        pytest.fail(f"snakemake failed:\n{result.stdout[-5000:]}\n{result.stderr[-10000:]}")
    return workdir
