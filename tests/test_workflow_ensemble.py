"""A real Snakemake run of a two-member ensemble on real BreastMNIST: each member is trained
by its own train job, the ensemble is evaluated and attributed from both members' weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, snakemake
from saliency_robustness.attribution.maps import compute_maps
from saliency_robustness.attribution.registry import method_params
from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.evaluation import predict_proba
from saliency_robustness.models.ensemble import Ensemble
from saliency_robustness.models.loading import load_model

pytestmark = pytest.mark.workflow

PRESET = REPO / "config" / "presets" / "tiny_ensemble.yaml"
CONFIG = yaml.safe_load(PRESET.read_text())
ENSEMBLE, MEMBERS = next(iter(CONFIG["train"]["ensembles"].items()))
N_IMAGES = CONFIG["attribute"]["max_images"]
TARGETS = [
    f"results/evaluation/breastmnist/{ENSEMBLE}/fold0/metrics.parquet",
    *[
        f"results/saliency/breastmnist/{ENSEMBLE}/{method}/clean.parquet"
        for method in CONFIG["attribute"]["methods"]
    ],
]


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, mirror_url: str):
    workdir = tmp_path_factory.mktemp("ensemble_run")
    # targets after a flag: right after --configfile/--config they would be read as files
    args = ("--config", f"mirror={mirror_url}", "--printshellcmds", *TARGETS)
    result = snakemake(workdir, *args, presets=("tiny", PRESET))
    if result.returncode != 0:
        pytest.fail(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-8000:]}")
    return workdir


def _models(workdir):
    folder = workdir / "results" / "models" / "breastmnist"
    return [load_model(folder / m / "fold0" / "model.pt", m, 1, 2, 28) for m in MEMBERS]


def test_members_are_trained_and_the_ensemble_is_not(ensemble_run):
    models = ensemble_run / "results" / "models" / "breastmnist"
    assert sorted(p.name for p in models.iterdir()) == sorted(MEMBERS)
    for member in MEMBERS:
        assert (models / member / "fold0" / "model.pt").is_file()
        assert (ensemble_run / "logs" / "train" / "breastmnist" / member / "fold0.log").is_file()


def test_ensemble_predictions_are_the_members_mean(ensemble_run, shared_medmnist):
    folder = ensemble_run / "results" / "evaluation" / "breastmnist" / ENSEMBLE / "fold0"
    predictions = pd.read_parquet(folder / "predictions.parquet")
    assert set(predictions["arch"]) == {ENSEMBLE}
    clean = predictions[predictions["severity"] == 0].sort_values("image_index")
    images = load_npz(shared_medmnist / "breastmnist.npz", "breastmnist")["test_images"]
    expected = np.mean([predict_proba(m, images) for m in _models(ensemble_run)], axis=0)
    np.testing.assert_allclose(np.stack(clean["probabilities"]), expected, atol=1e-5)
    metrics = pd.read_parquet(folder / "metrics.parquet")
    assert metrics["auc"].between(0, 1).all()


def test_ensemble_gradcam_averages_member_gradcams(ensemble_run, shared_medmnist):
    folder = ensemble_run / "results" / "saliency" / "breastmnist" / ENSEMBLE
    table = pd.read_parquet(folder / "gradcam" / "clean.parquet")
    clean = table[table["fold"] == 0].sort_values("image_index")
    assert len(clean) == N_IMAGES
    maps = np.stack(clean["saliency"]).reshape(N_IMAGES, 28, 28)
    images = load_npz(shared_medmnist / "breastmnist.npz", "breastmnist")["test_images"][:N_IMAGES]
    members = _models(ensemble_run)
    params = method_params("gradcam", {})
    targets = clean["target"].to_numpy()
    expected = np.mean([compute_maps(m, images, targets, "gradcam", params, 8) for m in members], 0)
    # maps are stored as float16 (attribute.precision): half a step at 1.0 is 4.9e-4
    np.testing.assert_allclose(maps, expected, atol=1e-3)
    saliency = pd.read_parquet(folder / "saliency" / "clean.parquet")
    clean_saliency = saliency[saliency["fold"] == 0].sort_values("image_index")
    direct = compute_maps(Ensemble(members, MEMBERS), images, targets, "saliency", {}, 8)
    # The job ran with another thread count: float sums differ in the last digits, and where
    # a max-pool or ReLU sits on a near-tie a single pixel's gradient can move (one pixel of
    # 6272 differed by 0.13 % of the map's maximum here).
    np.testing.assert_allclose(
        np.stack(clean_saliency["saliency"]).reshape(N_IMAGES, 28, 28),
        direct,
        rtol=1e-3,
        atol=1e-2 * np.abs(direct).max(),
    )
