"""The findings page is generated from the tables: every number with its interval, every
configured method named, q-values where a test was made."""

from __future__ import annotations

import numpy as np
import pandas as pd
from test_detection import FAMILIES, change_table

from saliency_robustness.analysis.detection import detection_by_family
from saliency_robustness.analysis.saliency_change import (
    severity_trends,
    summarise_change,
    variance_decomposition,
)
from saliency_robustness.findings import findings, findings_page


def _change(method: str, seed: int) -> pd.DataFrame:
    """Two folds x 12 images x 2 perturbations x 3 severities; 1 - SSIM separates errors and
    grows with severity."""
    rng = np.random.default_rng(seed)
    keys = pd.MultiIndex.from_product(
        [[0, 1], range(12), list(FAMILIES), [1, 3, 5]],
        names=["fold", "image_index", "perturbation", "severity"],
    ).to_frame(index=False)
    template = change_table(n=len(keys) // 2, folds=2, method=method, seed=seed)
    table = template.drop(columns=["fold", "image_index", "perturbation", "severity"])
    table = pd.concat([keys, table], axis=1).assign(target=0)
    table["flipped"] = table["wrong"]
    table["induced"] = table["wrong"] & ~table["clean_wrong"]
    table["ssim"] -= 0.05 * table["severity"] + rng.normal(0, 0.01, len(table))
    return table


def _tables(methods=("gradcam", "saliency")):
    change = pd.concat([_change(m, i) for i, m in enumerate(methods)], ignore_index=True)
    detection, comparison = detection_by_family(change, FAMILIES, n_splits=2, n_resamples=100)
    return (
        detection,
        comparison,
        summarise_change(change, n_resamples=100),
        severity_trends(change, n_resamples=100),
        variance_decomposition(change),
    )


def test_findings_state_every_method_with_intervals_and_q_values():
    tables = _tables()
    table = findings(*tables, methods=["gradcam", "saliency", "occlusion"])
    detection = table[table["topic"].str.startswith("detection")]
    assert set(detection["method"]) == {"gradcam", "saliency", "occlusion"}
    missing = detection[detection["method"] == "occlusion"]
    assert missing["statement"].str.contains("no detection result").all()
    found = detection.dropna(subset=["value"])
    assert (found["ci_low"] <= found["value"]).all() and (found["value"] <= found["ci_high"]).all()
    best = found[(found["method"] == "gradcam") & (found["family"] == "all")]
    wrong = best[(best["target"] == "wrong") & (best["kind"] == "change")].iloc[0]
    assert wrong["score"] == "1 - SSIM"
    assert (
        f"AUROC {wrong['value']:.3f} [{wrong['ci_low']:.3f}, {wrong['ci_high']:.3f}]"
        in (wrong["statement"])
    )
    assert "confidence drop alone" in wrong["statement"] and "q" in wrong["statement"]
    assert {"map change", "severity trend", "what drives map change", "method vs method"} <= set(
        table["topic"]
    )


def test_findings_page_lists_every_statement_escaped():
    table = findings(*_tables(), methods=["gradcam", "saliency"])
    table.loc[0, "statement"] = "a < b & c"
    page = findings_page(table)
    assert page.startswith("<!DOCTYPE html>") and "a &lt; b &amp; c" in page
    assert page.count("<li>") == len(table)
