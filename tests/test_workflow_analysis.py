"""The saliency analysis rules on the tiny run: tables, figures, and what an edit reruns."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, snakemake

pytestmark = pytest.mark.workflow

TINY = yaml.safe_load((REPO / "config" / "presets" / "tiny.yaml").read_text())
K = TINY["folds"]["k"]
METHODS = TINY["attribute"]["methods"]
N_IMAGES = TINY["attribute"]["max_images"]
PERTURBATIONS = TINY["perturb"]["perturbations"]
STEPS = TINY["analysis"]["faithfulness"]["steps"]
DATASET = "breastmnist"


def test_analysis_tables_and_figures(tiny_run):
    summary = tiny_run / "results" / "summary" / DATASET
    for name in ("agreement", "faithfulness", "sanity", "detection_by_family"):
        assert (summary / f"{name}.parquet").stat().st_size > 0
        figure = tiny_run / "results" / "plots" / DATASET / f"{name}.png"
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    agreement = pd.read_parquet(summary / "agreement.parquet")
    assert set(agreement["pair"]) == {"folds"}  # one architecture, two folds
    assert set(agreement["method"]) == set(METHODS)
    iou = agreement[agreement["metric"] == "topk_iou"]
    assert iou["mean"].between(0, 1).all() and (iou["n_images"] == N_IMAGES).all()
    assert set(agreement["severity"]) >= {0, 5}

    long = pd.read_parquet(summary / "faithfulness.parquet")
    assert {"deletion_auc", "road_combined", "infidelity", "sensitivity_max"} <= set(long["metric"])
    for method in METHODS:
        # one table per architecture and method, every fold
        table = pd.read_parquet(
            tiny_run / "results/faithfulness" / DATASET / "resnet18" / f"{method}.parquet"
        )
        assert sorted(table["fold"].unique()) == list(range(K))
        table = table[table["fold"] == 0]
        # clean images once (perturbation 'none'), then every perturbation at severity 5
        assert len(table) == N_IMAGES * (1 + len(PERTURBATIONS))
        assert set(table["severity"]) == {0, 5}
        assert table[["deletion_auc", "insertion_auc"]].stack().between(0, 1).all()
        assert {len(c) for c in table["deletion_curve"]} == {STEPS + 1}
        clean = table["severity"] == 0
        assert table.loc[clean, "sensitivity_max"].notna().all()
        assert table.loc[~clean, "sensitivity_max"].isna().all()  # clean only by default

    sanity = pd.read_parquet(summary / "sanity.parquet")
    stages = sanity.groupby("method")["stage_index"].nunique()
    assert (stages == 8).all()  # trained + fc, layer4..layer1, bn1, conv1
    first = sanity[sanity["stage_index"] == 0]
    assert np.allclose(first["mean"], 1.0)
    assert sanity["passed"].dtype == bool

    detection = pd.read_parquet(summary / "detection_by_family.parquet")
    assert "all" in set(detection["family"]) and set(detection["method"]) == set(METHODS)
    assert {"auroc", "auroc_gain", "auroc_cv_baseline"} <= set(detection.columns)
    assert set(detection["target"]) == {"wrong", "induced"}
    assert set(detection["kind"]) == {"change", "deployable"}
    # one row set per comparison: every score of a (method, family, target) uses the same rows
    keys = ["arch", "method", "family", "target"]
    assert (detection.groupby(keys)[["n_rows", "n_wrong", "n_images"]].nunique() == 1).all().all()
    for name in ("auroc", "auroc_baseline", "auroc_difference", "auroc_gain"):
        rows = detection.dropna(subset=[name])
        assert (rows[f"{name}_ci_low"] <= rows[name]).all() and (
            rows[name] <= rows[f"{name}_ci_high"]
        ).all(), name
    assert detection[["q_difference", "q_gain"]].stack().between(0, 1).all()
    comparison = pd.read_parquet(summary / "method_comparison.parquet")
    assert len(comparison) and comparison["q_value"].between(0, 1).all()

    findings = pd.read_parquet(summary / "findings.parquet")
    detection_findings = findings[findings["topic"].str.startswith("detection")]
    assert set(detection_findings["method"]) == set(METHODS)  # every configured method
    assert findings["statement"].str.len().min() > 20
    page = (summary / "findings.html").read_text()
    assert all(method in page for method in METHODS) and "AUROC" in page


def planned_jobs(workdir, tmp_path, edit: dict) -> Counter:
    override = tmp_path / "edit.yaml"
    override.write_text(yaml.safe_dump(edit))
    result = snakemake(workdir, "--dry-run", presets=("tiny", override))
    assert result.returncode == 0, result.stderr[-3000:]
    table = (result.stdout + result.stderr).split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return Counter(
        {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}
    )


def test_editing_faithfulness_reruns_only_faithfulness(tiny_run, tmp_path):
    edit = {"analysis": {"faithfulness": {**TINY["analysis"]["faithfulness"], "steps": 3}}}
    jobs = planned_jobs(tiny_run, tmp_path, edit)
    assert jobs == Counter(
        {"faithfulness": len(METHODS), "summarise_faithfulness": 1, "plot_faithfulness": 1,
         "all": 1}
    )  # fmt: skip


def test_sanity_pass_threshold_reruns_only_its_summary(tiny_run, tmp_path):
    edit = {"analysis": {"sanity": {**TINY["analysis"]["sanity"], "pass_threshold": 0.4}}}
    jobs = planned_jobs(tiny_run, tmp_path, edit)
    assert jobs == Counter({"summarise_sanity": 1, "all": 1})


def test_data_randomisation_trains_one_shuffled_label_model(tiny_run, tmp_path):
    edit = {"analysis": {"sanity": {**TINY["analysis"]["sanity"], "data_randomisation": True}}}
    jobs = planned_jobs(tiny_run, tmp_path, edit)
    assert jobs == Counter(
        {"train_shuffled_labels": 1, "sanity_data": len(METHODS), "summarise_sanity": 1,
         "plot_sanity": 1, "all": 1}
    )  # fmt: skip
