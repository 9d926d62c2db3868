"""A real Snakemake run of a small synthetic preset: the generated lesion set goes through
folds, training, perturbation, attribution and localisation, and the trained model's Grad-CAM
and gradients point at the lesions far better than the random and Sobel-edge controls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, snakemake

pytestmark = pytest.mark.workflow

PRESET = yaml.safe_load((REPO / "config" / "presets" / "synthetic.yaml").read_text())
# The preset, shrunk to about two minutes on two CPU cores: one fold, one perturbation.
SMALL = {
    "data": {"custom": {"lesions": {"splits": {"train": 480, "val": 96, "test": 80}}}},
    "folds": {"k": 2, "run": [0]},
    "train": {"epochs": 8, "batch_size": 16},
    "perturb": {"perturbations": ["gaussian_noise"], "severities": [2, 4]},
    "analysis": {"faithfulness": {"severities": [4]}},
    "attribute": {
        "methods": ["gradcam", "saliency", "sobel", "random"],
        "max_images": 80,
    },
    "plots": {"dpi": 60},
    "resources": {"train": {"threads": 2}, "attribute": {"threads": 2}},
}
TARGETS = (
    "results/summary/lesions/localisation.parquet",
    "results/plots/lesions/localisation.png",
)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("synthetic_run")
    small = workdir / "small.yaml"
    small.write_text(yaml.safe_dump(SMALL))
    result = snakemake(workdir, "--", *TARGETS, presets=("synthetic", small))
    if result.returncode != 0:
        pytest.fail(f"snakemake failed:\n{result.stdout[-5000:]}\n{result.stderr[-10000:]}")
    return workdir


def test_synthetic_dataset_is_built_with_masks(synthetic_run: Path) -> None:
    with np.load(synthetic_run / "resources" / "custom" / "lesions_28.npz") as npz:
        assert npz["train_images"].shape == (480, 28, 28)
        assert npz["test_masks"].shape == (80, 28, 28)
        has_lesion = npz["test_masks"].reshape(80, -1).any(axis=1)
        np.testing.assert_array_equal(has_lesion, npz["test_labels"][:, 0] == 1)  # presence
        assert has_lesion.sum() == 40  # balanced
    folds = pd.read_parquet(synthetic_run / "results" / "folds" / "lesions.parquet")
    assert len(folds) == 480 + 96


def test_localisation_tables(synthetic_run: Path) -> None:
    folder = synthetic_run / "results" / "localisation" / "lesions" / "resnet18"
    table = pd.read_parquet(folder / "gradcam.parquet")  # every fold: here fold 0 alone
    assert set(table["fold"]) == {0}
    assert len(table) == 40 * 3  # the 40 lesion images x (clean + 2 severities)
    for column in ("hit", "energy", "iou", "dice", "mask_fraction"):
        assert table[column].dropna().between(0, 1).all(), column
    png = synthetic_run / "results" / "plots" / "lesions" / "localisation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trained_maps_localise_better_than_the_controls(synthetic_run: Path) -> None:
    summary = pd.read_parquet(
        synthetic_run / "results" / "summary" / "lesions" / "localisation.parquet"
    )
    clean = summary[summary["severity"] == 0].set_index("method")
    print("\nclean localisation (mean over images):")
    print(clean[["hit_mean", "energy_mean", "iou_mean", "dice_mean", "mask_fraction_mean"]])
    noisy = summary[summary["severity"] == 4].set_index("method")
    print("gaussian_noise severity 4:")
    print(noisy[["hit_mean", "energy_mean", "iou_mean"]])
    gradcam, saliency = clean.loc["gradcam"], clean.loc["saliency"]
    random, sobel = clean.loc["random"], clean.loc["sobel"]
    # Measured on this run (one fold, lesion presence, CPU): pointing game gradcam 0.70,
    # saliency 0.80, sobel 0.30, random 0.05 (chance = mask fraction 0.086); energy 0.225,
    # 0.270, 0.152, 0.087; top-k IoU 0.317, 0.252, 0.166, 0.050.
    assert (
        random["hit_mean"] < 0.2
        and abs(random["energy_mean"] - random["mask_fraction_mean"]) < 0.02
    )
    for trained in (gradcam, saliency):
        assert trained["hit_mean"] > random["hit_mean"] + 0.15, clean
        assert trained["energy_mean"] > random["energy_mean"] + 0.05, clean
        assert trained["iou_mean"] > random["iou_mean"] + 0.08, clean
        # Edges alone do not find the lesion: the trained maps beat the Sobel control.
        assert trained["hit_mean"] > sobel["hit_mean"] + 0.2, clean
        assert trained["energy_mean"] > sobel["energy_mean"] + 0.035, clean
    assert gradcam["iou_mean"] > sobel["iou_mean"] + 0.07, clean
