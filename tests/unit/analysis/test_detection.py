"""Misclassification detection: per-fold AUROCs on shared rows, and the across-fold table
with intervals, paired tests, q-values and method comparisons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from saliency_robustness.analysis.detection import (
    BASELINES,
    DETECTORS,
    detection_by_family,
    misclassification_detection,
)

FAMILIES = {"gaussian_noise": "noise", "motion_blur": "blur"}


def change_table(n: int = 120, seed: int = 0, folds: int = 2, method: str = "saliency"):
    """Per-image change rows: ``ssim`` separates wrong from right, the rest is noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for fold in range(folds):
        wrong = rng.random(n) < 0.3
        clean_wrong = wrong & (rng.random(n) < 0.4)
        frames.append(
            pd.DataFrame(
                {
                    "dataset": "breastmnist",
                    "arch": "resnet18",
                    "fold": fold,
                    "method": method,
                    "perturbation": np.where(
                        np.arange(n) % 2 == 0, "gaussian_noise", "motion_blur"
                    ),
                    "severity": 1 + np.arange(n) % 5,
                    "image_index": np.arange(n) // 2,  # two rows (perturbations) per image
                    "wrong": wrong,
                    "clean_wrong": clean_wrong,
                    "confidence_drop": rng.normal(size=n) + 0.5 * wrong,  # informative
                    "msp": 0.9 - 0.1 * wrong + rng.normal(scale=0.1, size=n),
                    "ssim": np.where(wrong, 0.2, 0.8) + rng.normal(scale=0.01, size=n),
                    "rmse": rng.random(n),
                    "spearman": rng.random(n),
                    "topk_iou": rng.random(n),
                    "collapsed": False,
                    "is_constant": False,
                    "map_entropy": rng.random(n),
                    "map_gini": rng.random(n),
                }
            )  # fmt: skip
        )
    return pd.concat(frames, ignore_index=True)


def test_per_fold_detection_scores_every_detector_on_the_same_rows():
    detection = misclassification_detection(change_table())
    names = set(DETECTORS) | {f"{name} (baseline)" for name, _ in BASELINES.values()}
    assert set(detection["score"]) == names
    assert set(detection["target"]) == {"wrong", "induced"}
    for _, group in detection.groupby(["fold", "perturbation", "target"]):
        assert group["n_rows"].nunique() == 1 and group["n_wrong"].nunique() == 1
    assert (detection["n_excluded"] == 0).all()
    wrong = detection[(detection["target"] == "wrong") & (detection["score"] == "1 - SSIM")]
    np.testing.assert_allclose(wrong["auroc"], 1.0)


def test_induced_target_is_scored_on_images_right_when_clean():
    change = change_table(folds=1)
    detection = (
        misclassification_detection(change).set_index(["perturbation", "target"]).sort_index()
    )
    right_when_clean = ~change["clean_wrong"]
    induced = detection.loc[("all", "induced")].iloc[0]
    assert induced["n_rows"] == right_when_clean.sum()
    assert induced["n_wrong"] == (change["wrong"] & right_when_clean).sum()
    assert detection.loc[("all", "wrong")].iloc[0]["n_rows"] == len(change)


def test_a_collapsed_map_counts_as_a_complete_change_not_as_missing():
    """Known answer: wrong rows whose map collapsed. Scored as complete change (metrics gives
    SSIM 0), 1 - SSIM ranks them first; dropping them, as a NaN score did, loses them."""
    change = change_table(folds=1, seed=3)
    collapse = change["wrong"].to_numpy() & (np.arange(len(change)) % 3 == 0)
    change.loc[collapse, ["ssim", "collapsed", "is_constant"]] = [0.0, True, True]
    detection = misclassification_detection(change).set_index(["perturbation", "target", "score"])
    row = detection.loc[("all", "wrong", "1 - SSIM")]
    assert row["n_wrong"] == change["wrong"].sum()  # collapsed rows are counted and scored
    assert row["auroc"] == pytest.approx(1.0)
    collapsed = detection.loc[("all", "wrong", "map collapsed")]
    # collapsed maps only among wrong rows: AUROC = 0.5 + share of wrong rows collapsed / 2
    assert collapsed["auroc"] == pytest.approx(0.5 + collapse.sum() / change["wrong"].sum() / 2)


def test_non_finite_rows_are_excluded_from_every_score_alike():
    change = change_table(folds=1)
    change.loc[:4, "spearman"] = np.nan
    detection = misclassification_detection(change)
    assert set(detection["n_excluded"]) == {5} or set(detection["n_excluded"]) >= {5}
    group = detection[(detection["perturbation"] == "all") & (detection["target"] == "wrong")]
    assert group["n_rows"].nunique() == 1 and group["n_rows"].iloc[0] == len(change) - 5


def test_detection_by_family_intervals_tests_and_gain():
    detection, comparison = detection_by_family(
        change_table(), FAMILIES, n_splits=3, n_resamples=300
    )
    assert set(detection["family"]) == {"noise", "blur", "all"}
    assert set(detection["target"]) == {"wrong", "induced"}
    assert set(detection["kind"]) == {"change", "deployable"}
    rows = detection.set_index(["family", "target", "score"])
    ssim = rows.loc[("all", "wrong", "1 - SSIM")]
    assert ssim["auroc"] == pytest.approx(1.0) and ssim["baseline"] == "confidence drop"
    assert 0.5 < ssim["auroc_cv_baseline"] < 0.9 and ssim["auroc_gain"] > 0.1
    assert ssim["auroc_gain_ci_low"] > 0 and ssim["q_gain"] < 0.05
    assert ssim["q_difference"] < 0.05 and ssim["auroc_difference"] > 0
    rmse = rows.loc[("all", "wrong", "RMSE")]
    assert abs(rmse["auroc_gain"]) < 0.1 and rmse["q_gain"] > 0.05
    assert rows.loc[("all", "wrong", "map entropy"), "baseline"] == "1 - MSP"
    for name in ("auroc", "auroc_baseline", "auroc_difference", "auroc_gain"):
        finite = detection.dropna(subset=[name])
        assert (finite[f"{name}_ci_low"] <= finite[name]).all()
        assert (finite[name] <= finite[f"{name}_ci_high"]).all()
    assert (detection["n_folds"] == 2).all() and (detection["n_images"] == 60).all()
    assert comparison.empty  # one method: nothing to compare


def test_methods_are_compared_on_the_same_resamples():
    strong = change_table(method="gradcam")
    weak = change_table(method="saliency")
    weak["ssim"] = np.random.default_rng(5).random(len(weak))  # uninformative maps
    change = pd.concat([strong, weak], ignore_index=True)
    _, comparison = detection_by_family(change, FAMILIES, n_splits=3, n_resamples=300)
    pair = comparison[(comparison["family"] == "all") & (comparison["target"] == "wrong")
                      & (comparison["kind"] == "change")].iloc[0]  # fmt: skip
    assert (pair["method_a"], pair["method_b"]) == ("gradcam", "saliency")
    assert pair["score_a"] == "1 - SSIM" and pair["auroc_difference"] > 0.2
    assert pair["q_value"] < 0.05
    with pytest.raises(KeyError, match="family"):
        detection_by_family(change, {"gaussian_noise": "noise"})


def test_too_few_errors_give_nan_not_an_error():
    table = change_table(folds=1).assign(wrong=False, clean_wrong=False)
    table.loc[0, "wrong"] = True
    detection, _ = detection_by_family(table, FAMILIES, n_resamples=100)
    assert detection["auroc_gain"].isna().all()


def test_own_logistic_fit_predicts_what_sklearn_predicts():
    from sklearn.linear_model import LogisticRegression

    from saliency_robustness.analysis.detection import fit_logistic

    rng = np.random.default_rng(2)
    for n, separable in ((200, False), (40, True)):
        positive = rng.random(n) < 0.3
        shift = 5.0 if separable else 0.8
        features = rng.normal(size=(n, 2)) + shift * positive[:, None]
        beta = fit_logistic(features, positive)
        ours = 1 / (1 + np.exp(-(beta[0] + features @ beta[1:])))
        reference = LogisticRegression(tol=1e-10, max_iter=10_000).fit(features, positive)
        np.testing.assert_allclose(ours, reference.predict_proba(features)[:, 1], atol=1e-6)
