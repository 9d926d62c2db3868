"""Classification metrics with hierarchical-bootstrap intervals from per-image predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from saliency_robustness.analysis.classification_summary import (
    METRIC_NAMES,
    summarise_classification,
    table_metrics,
)
from saliency_robustness.evaluation import classification_metrics, prediction_rows


def _probabilities(rng, labels: np.ndarray, n_classes: int, signal: float = 1.5) -> np.ndarray:
    logits = rng.normal(size=(len(labels), n_classes))
    logits[np.arange(len(labels)), labels] += signal
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _multi_label(rng, n: int, n_labels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random((n, n_labels)) < 0.4).astype(int)
    probabilities = 1 / (1 + np.exp(-(rng.normal(size=(n, n_labels)) + 2 * labels - 1)))
    return labels, probabilities


def predictions(n_images: int, n_folds: int = 3, n_classes: int = 2, seed: int = 0):
    """Predictions of ``n_folds`` models on one test set: clean and one perturbation."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_images)
    frames = []
    for fold in range(n_folds):
        for severity, signal in ((0, 2.0), (3, 0.5)):
            probabilities = _probabilities(rng, labels, n_classes, signal)
            rows = prediction_rows(labels, probabilities, "noise", severity)
            frames.append(rows.assign(dataset="d", arch="resnet18", fold=fold))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_unit_and_integer_weights_equal_sklearn_metrics(n_classes):
    rng = np.random.default_rng(n_classes)
    labels = rng.integers(0, n_classes, 80)
    probabilities = _probabilities(rng, labels, n_classes, 0.8)
    rows = prediction_rows(labels, probabilities, "noise", 1)
    weights = rng.integers(0, 3, size=(3, len(rows))).astype(float)
    got = table_metrics(rows, np.vstack([np.ones(len(rows)), weights]))
    repeats = weights.astype(int)
    expected = [classification_metrics(labels, probabilities)] + [
        classification_metrics(np.repeat(labels, r), np.repeat(probabilities, r, axis=0))
        for r in repeats
    ]
    np.testing.assert_allclose(got, [[e[m] for m in METRIC_NAMES] for e in expected])


def test_multi_label_weights_equal_the_label_wise_metrics():
    rng = np.random.default_rng(3)
    labels, probabilities = _multi_label(rng, 60)
    labels[:, 2] = 0  # one label absent: its AUC and balanced ACC are left out of the means
    rows = prediction_rows(labels, probabilities, "noise", 1, multi_label=True)
    weights = rng.integers(0, 3, size=(2, len(rows))).astype(float)
    got = table_metrics(rows, np.vstack([np.ones(len(rows)), weights]))
    expected = [classification_metrics(labels, probabilities, multi_label=True)] + [
        classification_metrics(
            np.repeat(labels, w.astype(int), axis=0),
            np.repeat(probabilities, w.astype(int), axis=0),
            multi_label=True,
        )
        for w in weights
    ]
    np.testing.assert_allclose(got, [[e[m] for m in METRIC_NAMES] for e in expected])


def test_summary_means_over_folds_with_intervals_that_narrow_with_more_images():
    table = predictions(60)
    summary = summarise_classification(table, n_resamples=200, seed=0)
    assert list(summary["severity"]) == [0, 3] and (summary["n_folds"] == 3).all()
    assert (summary["n_images"] == 60).all()
    for name in METRIC_NAMES:
        assert (summary[f"{name}_ci_low"] <= summary[f"{name}_mean"]).all(), name
        assert (summary[f"{name}_mean"] <= summary[f"{name}_ci_high"]).all(), name
    clean = table[table["severity"] == 0]
    per_fold = [
        classification_metrics(rows["label"].to_numpy(), np.stack(rows["probabilities"]))
        for _, rows in clean.groupby("fold")
    ]
    row = summary.iloc[0]
    for name in METRIC_NAMES:
        values = [m[name] for m in per_fold]
        assert row[f"{name}_mean"] == pytest.approx(np.mean(values)), name
        assert row[f"{name}_std"] == pytest.approx(np.std(values, ddof=1)), name
    large = summarise_classification(predictions(600), n_resamples=200, seed=0)

    def width(s):
        return (s["auc_ci_high"] - s["auc_ci_low"]).to_numpy()

    assert (width(large) < width(summary) / 2).all()


def test_perfect_predictions_give_zero_width_intervals_and_multi_class_runs():
    table = predictions(40, n_classes=3)
    perfect = table.assign(predicted=table["label"])
    summary = summarise_classification(perfect, n_resamples=100, seed=1)
    for name in ("acc", "balanced_acc", "precision", "recall", "f1"):
        assert (summary[[f"{name}_mean", f"{name}_ci_low", f"{name}_ci_high"]] == 1.0).all().all()
    assert summary["auc_mean"].between(0, 1).all()
    with pytest.raises(ValueError, match="lacks columns"):
        summarise_classification(table.drop(columns="probabilities"))


def test_multi_label_summary():
    rng = np.random.default_rng(5)
    labels, _ = _multi_label(rng, 50)
    frames = []
    for fold in range(2):
        _, probabilities = _multi_label(rng, 50)
        probabilities = np.where(labels == 1, probabilities, 1 - probabilities)
        rows = prediction_rows(labels, probabilities, "noise", 0, multi_label=True)
        frames.append(rows.assign(dataset="c", arch="a", fold=fold))
    summary = summarise_classification(pd.concat(frames), n_resamples=100, seed=0)
    assert len(summary) == 1
    assert summary["auc_ci_low"].iloc[0] <= summary["auc_mean"].iloc[0] <= 1
