"""Bad inputs as a new user meets them on the command line: short messages, no jobs run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO, requirement_pins, snakemake

pytestmark = pytest.mark.workflow


def test_top_level_typo_is_one_short_message(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("trian:\n  epochs: 2\n")
    result = snakemake(tmp_path, "-n", presets=("tiny", typo))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "trian: unknown key. Did you mean 'train'?" in output
    assert "Failed validating" not in output and "'$schema'" not in output
    assert len(output.splitlines()) < 15, output
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def snakemake_only_venv(tmp_path_factory) -> Path:
    """A fresh virtualenv with Snakemake and nothing of the library's stack."""
    venv = tmp_path_factory.mktemp("snakemake_only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            *requirement_pins("snakemake", "jsonschema"),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if install.returncode != 0:
        pytest.fail(f"could not install Snakemake into a fresh venv:\n{install.stderr[-3000:]}")
    return venv


def test_snakemake_without_the_library_packages_says_what_to_install(snakemake_only_venv, tmp_path):
    result = subprocess.run(
        [
            str(snakemake_only_venv / "bin" / "snakemake"),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(REPO / "config" / "config.yaml"),
            "-n",
        ],  # fmt: skip
        cwd=tmp_path,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": ""},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "The Snakemake process needs the workflow's Python packages" in output
    assert "pip install -r requirements.txt" in output
    assert "ModuleNotFoundError" not in output  # a message, not a traceback


def _folder_dataset(tmp_path: Path, breast: dict) -> Path:
    """A 16-image folder dataset (PNG files and a CSV) and a config file that selects it."""
    root = tmp_path / "scans"
    (root / "images").mkdir(parents=True)
    rows = []
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        for i in range(n):
            name = f"images/{split}_{i}.png"
            Image.fromarray(breast[f"{split}_images"][i]).save(root / name)
            rows.append((name, ("benign", "malignant")[i % 2], split))
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(root / "labels.csv", index=False)
    config = tmp_path / "mine.yaml"
    spec = {"source": "folder", "root": str(root), "csv": "labels.csv"}
    spec |= {"task": "binary-class", "labels": ["benign", "malignant"]}
    config.write_text(
        yaml.safe_dump(
            {"data": {"datasets": ["mine"], "custom": {"mine": spec}}, "folds": {"k": 2}}
        )
    )
    return config


def _breast(shared_medmnist: Path) -> dict:
    with np.load(shared_medmnist / "breastmnist.npz") as npz:
        return {key: npz[key] for key in npz.files}


def test_replacing_an_image_of_a_folder_dataset_rebuilds_it(tmp_path, shared_medmnist):
    """The CSV stays the same; the new image content must reach the dataset."""
    breast = _breast(shared_medmnist)
    config = _folder_dataset(tmp_path, breast)
    root = tmp_path / "scans"
    target = "resources/custom/mine_28.npz"
    built = snakemake(tmp_path, "-p", target, presets=("tiny", config))
    assert built.returncode == 0, built.stderr[-3000:]
    with np.load(tmp_path / target) as npz:
        before = npz["test_images"][0].copy()
    time.sleep(1.1)  # a later mtime than the npz's on any file system
    Image.fromarray(255 - breast["test_images"][0]).save(root / "images" / "test_0.png")
    planned = snakemake(tmp_path, "-n", target, presets=("tiny", config))
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert re.search(r"^custom_dataset\s+1$", planned.stdout, flags=re.MULTILINE), planned.stdout
    rebuilt = snakemake(tmp_path, "-p", target, presets=("tiny", config))
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    with np.load(tmp_path / target) as npz:
        np.testing.assert_array_equal(npz["test_images"][0], 255 - before)


def test_a_conda_job_does_not_import_from_snakemakes_environment(
    tmp_path, shared_medmnist, snakemake_only_venv
):
    """Snakemake's script preamble appends the Snakemake process's sys.path (its venv's
    site-packages) to the job's. Run a real generated job script (kept with
    --skip-script-cleanup) the way a conda job runs it: with another environment's Python,
    here one that has Snakemake but none of the library's packages. The job must fail on
    the first missing package instead of importing it from Snakemake's virtualenv."""
    config = _folder_dataset(tmp_path, _breast(shared_medmnist))
    target = "resources/custom/mine_28.npz"
    built = snakemake(tmp_path, "--skip-script-cleanup", target, presets=("tiny", config))
    assert built.returncode == 0, built.stderr[-3000:]
    scripts = list((tmp_path / ".snakemake" / "scripts").glob("*build_custom_dataset.py"))
    assert len(scripts) == 1, scripts
    (tmp_path / target).unlink()
    job_python = snakemake_only_venv / "bin" / "python"
    env = {**os.environ, "PYTHONPATH": ""}
    run = subprocess.run(
        [str(job_python), str(scripts[0])],
        cwd=tmp_path, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode != 0
    assert "ModuleNotFoundError: No module named" in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / target).exists()
    # The same script with Snakemake's own Python (the plain-virtualenv path) still works.
    again = subprocess.run(
        [sys.executable, str(scripts[0])],
        cwd=tmp_path, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / target).exists()
