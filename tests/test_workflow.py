"""Real Snakemake runs of the whole workflow on the tiny preset (real BreastMNIST data)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import REPO, serve_folder, snakemake
from saliency_robustness.attribution.table import saliency_schema

pytestmark = pytest.mark.workflow

TINY = yaml.safe_load((REPO / "config" / "presets" / "tiny.yaml").read_text())
PERTURBATIONS = TINY["perturb"]["perturbations"]
SEVERITIES = TINY["perturb"]["severities"]
METHODS = TINY["attribute"]["methods"]
N_ATTRIBUTED = TINY["attribute"]["max_images"]
FOLDS = range(TINY["folds"]["k"])
N_TEST = 156  # BreastMNIST official test split
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_download_verifies_md5_of_the_real_file(tiny_run, shared_medmnist):
    downloaded = tiny_run / "resources" / "medmnist" / "breastmnist_28.npz"
    assert hashlib.md5(downloaded.read_bytes()).hexdigest() == "750601b1f35ba3300ea97c75c52ff8f6"
    assert (
        "verified" in (tiny_run / "logs" / "download_medmnist" / "breastmnist_28.log").read_text()
    )


def test_folds_cover_train_and_val_once(tiny_run):
    folds = pd.read_parquet(tiny_run / "results" / "folds" / "breastmnist.parquet")
    assert len(folds) == 546 + 78
    assert sorted(folds["fold"].unique()) == list(FOLDS)
    assert folds["pool_index"].is_unique


@pytest.mark.parametrize("fold", FOLDS)
def test_training_outputs(tiny_run, fold):
    model_dir = tiny_run / "results" / "models" / "breastmnist" / "resnet18" / f"fold{fold}"
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert "layer4.1.conv2.weight" in state
    history = pd.read_parquet(model_dir / "history.parquet")
    assert list(history["epoch"]) == list(range(1, TINY["train"]["epochs"] + 1))
    assert {"train_loss", "val_loss", "val_acc", "val_auc", "lr"} <= set(history.columns)
    metrics = json.loads((model_dir / "train_metrics.json").read_text())
    assert 0 <= metrics["test"]["auc"] <= 1 and metrics["device"] == "cpu"
    log = (tiny_run / "logs" / "train" / "breastmnist" / "resnet18" / f"fold{fold}.log").read_text()
    assert f"epoch {TINY['train']['epochs']}/{TINY['train']['epochs']}" in log


def test_perturbed_test_sets(tiny_run):
    for name in PERTURBATIONS:
        with np.load(tiny_run / "results" / "perturbed" / "breastmnist" / f"{name}.npz") as npz:
            assert npz["images"].shape == (len(SEVERITIES), N_TEST, 28, 28)
            assert npz["images"].dtype == np.uint8
            assert npz["severities"].tolist() == SEVERITIES


@pytest.mark.parametrize("fold", FOLDS)
def test_evaluation_tables(tiny_run, fold):
    folder = tiny_run / "results" / "evaluation" / "breastmnist" / "resnet18" / f"fold{fold}"
    metrics = pd.read_parquet(folder / "metrics.parquet")
    assert len(metrics) == len(PERTURBATIONS) * (1 + len(SEVERITIES))
    for column in ["acc", "balanced_acc", "auc", "precision", "recall", "f1"]:
        assert metrics[column].between(0, 1).all(), column
    predictions = pd.read_parquet(folder / "predictions.parquet")
    assert len(predictions) == len(metrics) * N_TEST
    probabilities = np.stack(predictions["probabilities"].to_numpy())
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_saliency_parquet_schema_and_values(tiny_run):
    root = tiny_run / "results" / "saliency"
    files = sorted(root.rglob("*.parquet"))
    # per method: the clean maps of every fold once, and one table per perturbation
    assert len(files) == len(METHODS) * (1 + len(PERTURBATIONS))
    assert {path.stem for path in files} == {"clean", *PERTURBATIONS}
    expected = saliency_schema(28, 28, 2, completeness=True, precision="float16")
    for path in files:
        assert pq.read_schema(path).remove_metadata() == expected
    table = ds.dataset(root, format="parquet").to_table().to_pandas()
    per_model = (1 + len(PERTURBATIONS) * len(SEVERITIES)) * N_ATTRIBUTED
    assert len(table) == per_model * len(FOLDS) * len(METHODS)
    maps = np.stack(table["saliency"].to_numpy())
    assert maps.dtype == np.float16
    assert maps.shape[1] == 28 * 28 and np.isfinite(maps).all()
    clean = table[table["severity"] == 0]
    # each clean map is stored once, and the target never changes
    assert set(clean["perturbation"]) == {"none"}
    assert not clean.duplicated(["fold", "method", "image_index"]).any()
    assert (table.groupby(["fold", "method", "image_index"])["target"].nunique() == 1).all()
    gradcam = table[table["method"] == "gradcam"]
    assert not gradcam["is_constant"].all()
    # completeness columns: filled for Integrated Gradients, null for saliency and Grad-CAM
    ig = table["method"] == "integrated_gradients"
    assert table.loc[ig, "convergence_delta"].notna().all()
    assert (table.loc[ig, "completeness_error"].dropna() >= 0).all()
    assert table.loc[~ig, ["convergence_delta", "completeness_error"]].isna().all().all()


def test_saliency_tables_are_one_dataset_for_duckdb(tiny_run):
    """Every saliency table of a run is one dataset, for pyarrow.dataset and for DuckDB.
    DuckDB reads the files' columns but the float16 maps (it decodes byte-stream split only
    for 4- and 8-byte types, and cannot scan Arrow's float16): it gets them cast to float32
    from the pyarrow dataset (config/README.md "Saliency tables")."""
    import duckdb

    dataset = ds.dataset(tiny_run / "results" / "saliency", format="parquet")
    assert dataset.schema.field("saliency").type.value_type == pa.float16()
    files = f"read_parquet({sorted(dataset.files)!r})"
    counts = duckdb.sql(
        "SELECT method, perturbation, count(*) AS n, count(DISTINCT severity) AS severities, "
        f"count(DISTINCT fold) AS folds FROM {files} GROUP BY ALL ORDER BY ALL"
    ).df()
    assert len(counts) == len(METHODS) * (1 + len(PERTURBATIONS))
    assert (counts["folds"] == len(FOLDS)).all()
    clean = counts[counts["perturbation"] == "none"]
    assert (clean["n"] == N_ATTRIBUTED * len(FOLDS)).all() and (clean["severities"] == 1).all()
    perturbed = counts[counts["perturbation"] != "none"]
    assert (perturbed["n"] == N_ATTRIBUTED * len(FOLDS) * len(SEVERITIES)).all()
    keys = ["fold", "method", "perturbation", "severity", "image_index"]
    table = dataset.to_table(columns=[*keys, "saliency"])
    float32_maps = pa.list_(pa.float32(), 28 * 28)
    maps = table.set_column(len(keys), "saliency", table.column("saliency").cast(float32_maps))
    connection = duckdb.connect()
    connection.register("maps", maps)
    peaks = connection.sql(
        f"SELECT {', '.join(keys)}, list_max(list_transform(saliency, lambda x: abs(x))) AS "
        "peak FROM maps ORDER BY ALL"
    ).df()
    assert len(peaks) == dataset.count_rows()
    expected = table.to_pandas().sort_values(keys)
    np.testing.assert_allclose(
        peaks["peak"], [float(np.abs(m.astype(np.float32)).max()) for m in expected["saliency"]]
    )


def test_saliency_change_metrics_within_bounds(tiny_run):
    change = ds.dataset(tiny_run / "results" / "metrics", format="parquet").to_table().to_pandas()
    assert (
        len(change)
        == len(FOLDS) * len(METHODS) * len(PERTURBATIONS) * len(SEVERITIES) * N_ATTRIBUTED
    )
    assert change["rmse"].between(0, 1).all()
    assert change["ssim"].between(-1, 1).all()
    assert change["topk_iou"].between(0, 1).all()
    assert change["spearman"].between(-1, 1).all()  # defined on every row (collapsed maps too)
    assert change["wrong"].dtype == bool
    assert not (change["induced"] & change["clean_wrong"]).any()
    assert (change["collapsed"] == (change["is_constant"] & ~change["clean_is_constant"])).all()
    assert change["msp"].between(0.5, 1).all() and change["map_entropy"].between(0, 1).all()


def test_summaries(tiny_run):
    summary = tiny_run / "results" / "summary" / "breastmnist"
    change = pd.read_parquet(summary / "saliency_change.parquet")
    assert set(change["method"]) == set(METHODS) and set(change["severity"]) == set(SEVERITIES)
    assert set(change["prediction"]) == {"all", "preserved", "flipped"}
    every = change[change["prediction"] == "all"]
    assert (every["n_folds"] == len(FOLDS)).all()
    for metric in ("rmse", "ssim", "spearman", "topk_iou", "wrong", "flipped"):
        rows = change.dropna(subset=[f"{metric}_mean"])
        assert (rows[f"{metric}_ci_low"] <= rows[f"{metric}_mean"] + 1e-12).all(), metric
        assert (rows[f"{metric}_mean"] <= rows[f"{metric}_ci_high"] + 1e-12).all(), metric
    detection = pd.read_parquet(summary / "misclassification_detection.parquet")
    assert set(detection["perturbation"]) == {*PERTURBATIONS, "all"}
    assert set(detection["target"]) == {"wrong", "induced"}
    assert detection["auroc"].dropna().between(0, 1).all()
    # every score of one comparison is computed on the same rows
    keys = ["arch", "fold", "method", "perturbation", "target"]
    assert (detection.groupby(keys)[["n_rows", "n_wrong"]].nunique() == 1).all().all()
    trends = pd.read_parquet(summary / "severity_trends.parquet")
    assert set(trends["method"]) == set(METHODS) and trends["q_value"].between(0, 1).all()
    eta = pd.read_parquet(summary / "variance_decomposition.parquet")
    assert np.allclose(eta.groupby("score")["eta_squared"].sum(), 1.0, atol=0.05)
    history = pd.read_parquet(summary / "training_history.parquet")
    assert set(history["fold"]) == set(FOLDS)


def test_figures_and_report(tiny_run):
    plots = tiny_run / "results" / "plots" / "breastmnist"
    expected = [
        "training_curves.png",
        "classification_vs_severity.png",
        "saliency_change_vs_severity.png",
        "misclassification_detection.png",
        "examples_resnet18.png",
        *[f"perturbations/{name}.png" for name in PERTURBATIONS],
    ]
    for name in expected:
        data = (plots / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name
    result = snakemake(tiny_run, "--report", "report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tiny_run / "report.html").read_text()
    assert "misclassification_detection.png" in report and "training_curves.png" in report


def test_scripts_import_the_library_through_the_snakefile(tiny_run):
    """The run above had no PYTHONPATH and the library is not installed in the environment:
    only the Snakefile's sys.path entry can have made it importable in the scripts."""
    probe = subprocess.run(
        [sys.executable, "-c", "import saliency_robustness"],
        cwd=tiny_run,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
    )
    assert probe.returncode != 0


def test_perturb_and_attribute_are_deterministic(tiny_run, tmp_path):
    """Rerunning perturb and attribute (forced) gives identical tables."""
    rerun = tmp_path / "rerun"
    shutil.copytree(tiny_run, rerun, symlinks=True)
    result = snakemake(
        rerun, "--forcerun", "perturb", "attribute_clean", "attribute", "--until", "attribute"
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "perturb" in result.stderr and "attribute_clean" in result.stderr
    for name in PERTURBATIONS:
        relative = f"results/perturbed/breastmnist/{name}.npz"
        with np.load(tiny_run / relative) as first, np.load(rerun / relative) as second:
            np.testing.assert_array_equal(first["images"], second["images"])
    for path in (tiny_run / "results" / "saliency").rglob("*.parquet"):
        second = rerun / path.relative_to(tiny_run)
        pd.testing.assert_frame_equal(pd.read_parquet(path), pd.read_parquet(second))
        assert second.stat().st_mtime > path.stat().st_mtime  # it really was recomputed


def test_corrupt_download_fails_with_md5_message_and_leaves_nothing(tmp_path, shared_medmnist):
    served = tmp_path / "served"
    served.mkdir()
    data = bytearray((shared_medmnist / "breastmnist.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (served / "breastmnist.npz").write_bytes(bytes(data))
    url, server = serve_folder(served)
    workdir = tmp_path / "run"
    workdir.mkdir()
    try:
        result = snakemake(
            workdir, "--config", f"mirror={url}", "--", "resources/medmnist/breastmnist_28.npz"
        )
    finally:
        server.shutdown()
    assert result.returncode != 0
    assert "MD5 mismatch" in result.stderr + result.stdout
    leftovers = list((workdir / "resources").rglob("*")) if (workdir / "resources").exists() else []
    assert [p for p in leftovers if p.is_file()] == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train={'epoch': 3}", "train.epoch: unknown key. Did you mean 'epochs'?"),
        ("device=tpu", "'tpu' is not one of ['auto', 'cpu', 'cuda']"),
        ("attribute={'target': 'random'}", "random"),
        ("train={'architectures': ['resnet99']}", "Valid names: alexnet, densenet121"),
        ("perturb={'perturbations': ['fog']}", "Valid names: bias_field, brightness, contrast"),
        (
            "attribute={'methods': ['lrp']}",
            "unknown name 'lrp'. Valid names: ablationcam, deeplift",
        ),
    ],
)
def test_invalid_config_stops_before_any_job(tmp_path, override, message):
    result = snakemake(tmp_path, "--config", override)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "logs").exists() and not (tmp_path / "results").exists()


def test_lint_and_format():
    for command in (
        [sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "Snakefile")],
        [str(Path(sys.executable).parent / "snakefmt"), "--check", str(REPO)],
        [str(Path(sys.executable).parent / "ruff"), "check", str(REPO)],
    ):
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
