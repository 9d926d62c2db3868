"""Real Snakemake runs of the perturbation stages on real BreastMNIST: `perturbations: auto`
(the ultrasound set) through perturb, evaluate, calibration, preview grid and robustness
scores, an explicit list of torchio MRI artifacts, and config errors caught before any job."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, snakemake
from saliency_robustness.perturbations.registry import PERTURBATIONS

pytestmark = pytest.mark.workflow

PRESETS = ("tiny", REPO / "config" / "presets" / "tiny_perturbations.yaml")
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
ULTRASOUND = SCHEMA["properties"]["perturb"]["properties"]["sets"]["properties"]["ultrasound"][
    "default"
]
SEVERITIES = [1, 3, 5]
FOLDS = [0, 1]
N_TEST = 156
TARGETS = [
    "results/summary/breastmnist/perturbation_calibration.parquet",
    "results/plots/breastmnist/perturbation_calibration.png",
    "results/plots/breastmnist/perturbation_grid.png",
    "results/summary/breastmnist/robustness.parquet",
    "results/summary/breastmnist/robustness_summary.parquet",
    "results/plots/breastmnist/robustness.png",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fail(result) -> None:
    pytest.fail(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-8000:]}")


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory, mirror_url: str):
    workdir = tmp_path_factory.mktemp("auto_perturbations")
    result = snakemake(workdir, "--config", f"mirror={mirror_url}", "--", *TARGETS, presets=PRESETS)
    if result.returncode != 0:
        _fail(result)
    return workdir


def test_auto_perturbs_with_the_ultrasound_set_only(auto_run):
    perturbed = sorted(
        p.stem for p in (auto_run / "results" / "perturbed" / "breastmnist").glob("*.npz")
    )
    assert perturbed == sorted(ULTRASOUND)
    with np.load(auto_run / "results" / "perturbed" / "breastmnist" / "speckle_noise.npz") as npz:
        assert npz["images"].shape == (len(SEVERITIES), N_TEST, 28, 28)
        assert npz["images"].dtype == np.uint8
        assert npz["severities"].tolist() == SEVERITIES
    assert not (auto_run / "results" / "saliency").exists()  # targets stop before attribution


@pytest.mark.parametrize("fold", FOLDS)
def test_evaluation_covers_every_auto_perturbation(auto_run, fold):
    path = auto_run / "results" / "evaluation" / "breastmnist" / "resnet18" / f"fold{fold}"
    metrics = pd.read_parquet(path / "metrics.parquet")
    assert set(metrics["perturbation"]) == set(ULTRASOUND)
    assert set(metrics["severity"]) == {0, *SEVERITIES}
    assert metrics["balanced_acc"].between(0, 1).all()


def test_calibration_table_is_monotone(auto_run):
    table = pd.read_parquet(auto_run / TARGETS[0])
    assert set(table["perturbation"]) == set(ULTRASOUND)
    assert (table["n_images"] == N_TEST).all()
    for name, group in table.groupby("perturbation"):
        ssim = group.sort_values("severity")["ssim"].to_numpy()
        assert np.all(np.diff(ssim) < 0) and ssim[0] < 1, (name, ssim)
        assert group["family"].iloc[0] == PERTURBATIONS[name].family
    for png in TARGETS[1:3] + TARGETS[5:]:
        assert (auto_run / png).read_bytes()[:8] == PNG_MAGIC


def test_robustness_scores(auto_run):
    scores = pd.read_parquet(auto_run / TARGETS[3])
    assert len(scores) == len(ULTRASOUND) * len(FOLDS)
    assert (scores["baseline_arch"] == "resnet18").all()
    assert (scores["n_severities"] == len(SEVERITIES)).all()
    assert scores[["be", "be_clean"]].apply(lambda c: c.between(0, 1)).all().all()
    # The only architecture is its own baseline: its normalised BE averages to 1 over folds.
    np.testing.assert_allclose(scores.groupby("perturbation")["ce"].mean(), 1.0)
    metrics = pd.read_parquet(
        auto_run / "results/evaluation/breastmnist/resnet18/fold0/metrics.parquet"
    )
    noise = metrics[(metrics["perturbation"] == "speckle_noise") & (metrics["severity"] > 0)]
    row = scores[(scores["fold"] == 0) & (scores["perturbation"] == "speckle_noise")].iloc[0]
    assert row["be"] == pytest.approx(1 - noise["balanced_acc"].mean())
    summary = pd.read_parquet(auto_run / TARGETS[4])
    assert len(summary) == len(FOLDS)
    assert (summary["n_perturbations"] == len(ULTRASOUND)).all()
    np.testing.assert_allclose(
        summary.sort_values("fold")["mbe"], scores.groupby("fold")["be"].mean().sort_index()
    )


def test_explicit_torchio_list_runs_perturb_jobs(tmp_path, mirror_url):
    names = ["mri_motion", "ghosting", "spike", "bias_field"]
    targets = [f"results/perturbed/breastmnist/{n}.npz" for n in names]
    extra = _config_file(tmp_path, {"perturbations": names, "severities": [2, 5]})
    result = snakemake(
        tmp_path,
        "--config",
        f"mirror={mirror_url}",
        "--",
        *targets,
        "results/plots/breastmnist/perturbation_grid.png",
        presets=("tiny", extra),
    )
    if result.returncode != 0:
        _fail(result)
    for name in names:
        with np.load(tmp_path / "results" / "perturbed" / "breastmnist" / f"{name}.npz") as npz:
            assert npz["images"].shape == (2, N_TEST, 28, 28)
    assert not (tmp_path / "results" / "models").exists()


def _config_file(folder, perturb: dict):
    path = folder / "perturb.yaml"
    path.write_text(yaml.safe_dump({"perturb": perturb}))
    return path


@pytest.mark.parametrize(
    ("perturb", "messages"),
    [
        (  # every registry-level problem is reported in one go
            {
                "perturbations": ["saturation", "contrast", "fog"],
                "sets": {"ultrasound": ["speckle"]},
                "baseline_arch": "vgg99",
            },
            [
                "'saturation' is RGB-only but dataset 'breastmnist' has 1 channel(s)",
                "unknown name 'fog'. Valid names: bias_field",
                "perturb.sets.ultrasound: unknown name 'speckle'",
                "perturb.baseline_arch: 'vgg99'",
            ],
        ),
        ({"severities": [0, 3]}, ["0 is less than the minimum of 1"]),
    ],
)
def test_config_errors_stop_before_any_job(tmp_path, perturb, messages):
    result = snakemake(tmp_path, "-n", presets=("tiny", _config_file(tmp_path, perturb)))
    assert result.returncode != 0
    for message in messages:
        assert message in result.stdout + result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "results").exists()
