"""A real Snakemake run of the multi-label path: a small synthetic multi-label set (three
lesion kinds, each present or not) through train -> evaluate -> attribute (top-2 targets)
-> saliency_change -> summarise -> plots."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from conftest import snakemake
from saliency_robustness.attribution.table import saliency_schema
from saliency_robustness.datasets.synthetic import KINDS

pytestmark = pytest.mark.workflow

DATASET = "synml"
N_TEST = 24
N_ATTRIBUTED = 6
TOP_K = 2
PERTURBATIONS = ["gaussian_noise", "contrast"]
SEVERITIES = [1, 5]  # 5: the analysis presets evaluate faithfulness at severity 5
METHODS = ["saliency", "gradcam"]
FOLDS = [0]  # of k = 2: one model keeps the run short
CONFIG = {
    "data": {
        "datasets": [DATASET],
        "size": 28,
        "custom": {
            DATASET: {
                "source": "synthetic",
                "task": "multi-label",
                "splits": {"train": 96, "val": 32, "test": N_TEST},
            }
        },
    },
    "folds": {"k": 2, "run": FOLDS},
    "train": {"architectures": ["resnet18"], "epochs": 2, "batch_size": 32},
    "perturb": {"perturbations": PERTURBATIONS, "severities": SEVERITIES},
    "evaluate": {"batch_size": 64},
    "attribute": {
        "methods": METHODS,
        "max_images": N_ATTRIBUTED,
        "batch_size": 8,
        "top_k_targets": TOP_K,
    },
    "plots": {"example_images": 1, "dpi": 60},
    "resources": {"train": {"threads": 1}, "evaluate": {"threads": 1}, "attribute": {"threads": 1}},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multilabel_run")
    config = workdir / "multilabel.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    result = snakemake(workdir, presets=("tiny", config))
    if result.returncode != 0:
        pytest.fail(f"snakemake failed:\n{result.stdout[-5000:]}\n{result.stderr[-10000:]}")
    return workdir


def test_training_is_multi_label(run):
    for fold in FOLDS:
        folder = run / "results" / "models" / DATASET / "resnet18" / f"fold{fold}"
        metrics = json.loads((folder / "train_metrics.json").read_text())
        assert metrics["task"] == "multi-label"
        assert set(metrics["test_per_label"]) == set(KINDS)
        aucs = [metrics["test_per_label"][kind]["auc"] for kind in KINDS]
        assert metrics["test"]["auc"] == pytest.approx(np.nanmean(aucs))
        log = (run / "logs" / "train" / DATASET / "resnet18" / f"fold{fold}.log").read_text()
        assert "epoch 2/2" in log


def test_evaluation_has_sigmoid_predictions_and_per_label_rows(run):
    folder = run / "results" / "evaluation" / DATASET / "resnet18" / "fold0"
    predictions = pd.read_parquet(folder / "predictions.parquet")
    assert len(predictions) == len(PERTURBATIONS) * (1 + len(SEVERITIES)) * N_TEST
    probabilities = np.stack(predictions["probabilities"].to_numpy())
    labels = np.stack(predictions["labels"].to_numpy())
    assert probabilities.shape[1] == len(KINDS) and labels.shape[1] == len(KINDS)
    np.testing.assert_array_equal(np.stack(predictions["predicted_labels"]), probabilities > 0.5)
    metrics = pd.read_parquet(folder / "metrics.parquet")
    assert len(metrics) == len(PERTURBATIONS) * (1 + len(SEVERITIES)) * (1 + len(KINDS))
    clean = predictions[
        (predictions["perturbation"] == "contrast") & (predictions["severity"] == 0)
    ]
    clean_probs, clean_labels = np.stack(clean["probabilities"]), np.stack(clean["labels"])
    row = metrics[(metrics["perturbation"] == "contrast") & (metrics["severity"] == 0)]
    macro = row[row["label"] == "all"]["auc"].iloc[0]
    assert macro == pytest.approx(roc_auc_score(clean_labels, clean_probs, average="macro"))
    bar = row[row["label"] == "bar"]["auc"].iloc[0]
    assert bar == pytest.approx(roc_auc_score(clean_labels[:, 2], clean_probs[:, 2]))
    summary = pd.read_parquet(run / "results" / "summary" / DATASET / "classification.parquet")
    assert set(summary["label"]) == {"all", *KINDS}


def test_saliency_rows_per_top_k_target(run):
    files = sorted((run / "results" / "saliency").rglob("*.parquet"))
    assert len(files) == len(METHODS) * (1 + len(PERTURBATIONS))  # clean + each perturbation
    for path in files:
        assert pq.read_schema(path).remove_metadata() == saliency_schema(
            28, 28, len(KINDS), completeness=True, precision="float16"
        )
    table = ds.dataset(run / "results" / "saliency", format="parquet").to_table().to_pandas()
    per_model = (1 + len(PERTURBATIONS) * len(SEVERITIES)) * N_ATTRIBUTED * TOP_K
    assert len(table) == per_model * len(FOLDS) * len(METHODS)
    per_image = table.groupby(["fold", "method", "perturbation", "severity", "image_index"])
    assert (per_image["target"].nunique() == TOP_K).all()
    # the same targets at every severity, and the top-ranked target has the highest clean score
    targets = table.groupby(["fold", "method", "image_index"])["target"].agg(frozenset)
    assert (targets.map(len) == TOP_K).all()
    clean = table[table["severity"] == 0]
    assert set(clean["perturbation"]) == {"none"}  # each clean map stored once
    for _, group in clean.groupby(["fold", "method", "image_index"]):
        scores = np.stack(group["probabilities"])[0]
        assert group["target"].tolist() == np.argsort(-scores, kind="stable")[:TOP_K].tolist()
        np.testing.assert_allclose(group["target_probability"], scores[group["target"]])
        np.testing.assert_array_equal(group["predicted"], scores[group["target"]] > 0.5)


def test_saliency_change_and_summaries(run):
    folder = run / "results" / "metrics" / "saliency_change"
    change = ds.dataset(folder, format="parquet").to_table().to_pandas()
    n = len(FOLDS) * len(METHODS) * len(PERTURBATIONS) * len(SEVERITIES) * N_ATTRIBUTED * TOP_K
    assert len(change) == n
    assert change["rmse"].between(0, 1).all()
    # per target label: wrong = predicted presence of the target label differs from the truth
    assert (change["wrong"] == (change["predicted"] != change["label"])).all()
    assert (change.groupby(["fold", "method", "perturbation", "severity", "image_index"])[
        "target"].nunique() == TOP_K).all()  # fmt: skip
    summary = run / "results" / "summary" / DATASET
    detection = pd.read_parquet(summary / "misclassification_detection.parquet")
    assert set(detection["perturbation"]) == {*PERTURBATIONS, "all"}
    assert detection["auroc"].dropna().between(0, 1).all()
    mean_change = pd.read_parquet(summary / "saliency_change.parquet")
    assert set(mean_change["method"]) == set(METHODS)
    for name in ("classification_vs_severity.png", "examples_resnet18.png"):
        assert (run / "results" / "plots" / DATASET / name).read_bytes()[:4] == b"\x89PNG"


def test_editing_top_k_reruns_attribution_only_downstream(run):
    config = dict(CONFIG, attribute={**CONFIG["attribute"], "top_k_targets": 3})
    edited = run / "multilabel_top3.yaml"
    edited.write_text(yaml.safe_dump(config))
    # params trigger only: other code may change while the test runs (a working tree)
    result = snakemake(
        run, "--dry-run", "--quiet", "rules", "--rerun-triggers", "params",
        presets=("tiny", edited),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.MULTILINE))
    # each method's clean maps and its maps of every perturbation (all folds per job)
    assert jobs.get("attribute_clean") == str(len(METHODS)), result.stdout
    assert jobs.get("attribute") == str(len(PERTURBATIONS) * len(METHODS)), result.stdout
    assert "train" not in jobs and "evaluate" not in jobs
