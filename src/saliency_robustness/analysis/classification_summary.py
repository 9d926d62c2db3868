"""Classification metrics with hierarchical-bootstrap intervals, from per-image predictions.

The evaluate rule's ``predictions.parquet`` (``evaluation.prediction_rows``: one row per
test image, perturbation and severity, with ``label``/``predicted`` or, multi-label,
``labels``/``predicted_labels``, and ``probabilities``) is summarised per (dataset, arch,
perturbation, severity): each metric per fold, its mean and SD over folds, and a percentile
interval of the hierarchical bootstrap (``statistics.HierarchicalBootstrap``: folds with
replacement, then, once, the test images with replacement; every perturbation and severity
of a drawn image moves with it).

The metrics are weighted versions of ``evaluation.classification_metrics`` (sklearn): with
unit weights they are equal, with the bootstrap's integer weights they equal sklearn on the
rows repeated by their weights. Binary: AUC of the positive-class probability and
precision/recall/F1 of class 1; multi-class: one-vs-rest macro AUC and macro
precision/recall/F1 (over the classes present in the labels or the predictions, as sklearn's
``average="macro"``); multi-label: the mean over labels of each label's binary metric.

Light module (numpy, pandas and ``statistics``): the summary job does not import torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from saliency_robustness.analysis.statistics import (
    HierarchicalBootstrap,
    weighted_auroc,
    with_interval,
)
from saliency_robustness.tables import CONDITION_KEYS, MODEL_KEYS, over_folds

METRIC_NAMES = ("acc", "balanced_acc", "auc", "precision", "recall", "f1")
KEYS = [*over_folds(MODEL_KEYS), *CONDITION_KEYS]


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean of the finite values along ``axis``; NaN (no warning) where there are none."""
    finite = np.isfinite(values)
    count = finite.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(finite, values, 0.0).sum(axis=axis) / count, np.nan)


def _ratio(numerator: np.ndarray, denominator: np.ndarray, empty: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, empty)


def is_multi_label_table(predictions: pd.DataFrame) -> bool:
    """Whether a predictions table is multi-label (``labels`` vectors, not one ``label``)."""
    return "labels" in predictions.columns


def prediction_arrays(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, predicted, probabilities) of predictions rows: (n,), (n,), (n, C) for
    single-label tables; (n, L) 0/1, (n, L) 0/1, (n, L) for multi-label ones."""
    probabilities = np.stack(rows["probabilities"].to_numpy()).astype(np.float64)
    if is_multi_label_table(rows):  # int8: 1, 0 and -1 (uncertain, own data)
        labels = np.stack(rows["labels"].to_numpy()).astype(np.int8)
        predicted = np.stack(rows["predicted_labels"].to_numpy()).astype(bool)
    else:
        labels = rows["label"].to_numpy().astype(int)
        predicted = rows["predicted"].to_numpy().astype(int)
    return labels, predicted, probabilities


def weighted_classification_metrics(
    labels: np.ndarray,
    predicted: np.ndarray,
    probabilities: np.ndarray,
    weights: np.ndarray,
    names: tuple[str, ...] = METRIC_NAMES,
) -> np.ndarray:
    """(R, len(names)) metrics per row of a (R, n) weight matrix (see the module doc).

    Multi-label when ``labels`` is 2-D. NaN where a metric is undefined for a weight row
    (AUC or balanced ACC with one class only); precision, recall and F1 of a class with no
    predicted or no true rows are 0 (sklearn's ``zero_division=0``).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if np.ndim(labels) == 2:
        per_label = _multi_label_metrics(labels, predicted, probabilities, weights, names)
        return np.stack([_nanmean(per_label[name], axis=1) for name in names], axis=1)
    return _single_label_metrics(labels, predicted, probabilities, weights, names)


def _single_label_metrics(labels, predicted, probabilities, weights, names) -> np.ndarray:
    n_classes = probabilities.shape[1]
    classes = np.arange(n_classes)
    truth = (labels[:, None] == classes).astype(np.float64)  # (n, C)
    guess = (predicted[:, None] == classes).astype(np.float64)
    total = weights.sum(axis=1)
    support, predicted_count = weights @ truth, weights @ guess  # (R, C)
    true_positive = weights @ (truth * guess)
    recall = _ratio(true_positive, support, 0.0)
    precision = _ratio(true_positive, predicted_count, 0.0)
    f1 = _ratio(2 * true_positive, support + predicted_count, 0.0)
    out = {}
    if "acc" in names:
        out["acc"] = _ratio(weights @ (labels == predicted).astype(np.float64), total, np.nan)
    if "balanced_acc" in names:  # mean recall over the classes present in the labels
        out["balanced_acc"] = _nanmean(np.where(support > 0, recall, np.nan), axis=1)
    if n_classes == 2:
        out.update(precision=precision[:, 1], recall=recall[:, 1], f1=f1[:, 1])
    else:
        present = (support > 0) | (predicted_count > 0)
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
            out[name] = _nanmean(np.where(present, values, np.nan), axis=1)
    if "auc" in names:
        if n_classes == 2:
            out["auc"] = weighted_auroc(labels == 1, probabilities[:, 1], weights)
        else:
            per_class = [weighted_auroc(labels == c, probabilities[:, c], weights) for c in classes]
            out["auc"] = _nanmean(np.stack(per_class, axis=1), axis=1)
    return np.stack([out[name] for name in names], axis=1)


def _multi_label_metrics(labels, predicted, probabilities, weights, names) -> dict:
    """Per-label (R, L) binary metrics of a multi-label task, each label over the images
    where it is certain (an uncertain entry, -1, counts neither as positive nor negative)."""
    known = (labels != -1).astype(np.float64)
    truth, guess = (labels == 1).astype(np.float64), predicted.astype(np.float64) * known
    total = weights @ known
    positive, predicted_positive = weights @ truth, weights @ guess
    negative = total - positive
    true_positive = weights @ (truth * guess)
    true_negative = weights @ ((1 - truth) * (1 - guess) * known)
    out = {
        "acc": _ratio(true_positive + true_negative, total, np.nan),
        "balanced_acc": np.where(
            (positive > 0) & (negative > 0),
            (_ratio(true_positive, positive, 0.0) + _ratio(true_negative, negative, 0.0)) / 2,
            np.nan,
        ),
        "precision": _ratio(true_positive, predicted_positive, 0.0),
        "recall": _ratio(true_positive, positive, 0.0),
        "f1": _ratio(2 * true_positive, positive + predicted_positive, 0.0),
    }
    if "auc" in names:
        out["auc"] = np.stack(
            [
                weighted_auroc(labels[:, j] == 1, probabilities[:, j], weights * known[:, j])
                for j in range(labels.shape[1])
            ],
            axis=1,
        )
    return out


def table_metrics(
    rows: pd.DataFrame, weights: np.ndarray, names: tuple[str, ...] = METRIC_NAMES
) -> np.ndarray:
    """``weighted_classification_metrics`` of predictions rows."""
    return weighted_classification_metrics(*prediction_arrays(rows), weights, names)


def summarise_classification(
    predictions: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """Classification metrics per (dataset, arch, perturbation, severity) from per-image
    predictions of every fold: ``<metric>_mean`` (mean over folds of the fold's metric),
    ``<metric>_std`` (SD over folds), ``<metric>_ci_low`` and ``<metric>_ci_high`` (percentile
    interval of the hierarchical bootstrap over folds and test images), for ``METRIC_NAMES``;
    ``n_folds`` and ``n_images`` (per fold, mean). Severity 0 is the clean test set (repeated
    under every perturbation, as in the evaluation tables).
    """
    required = {*KEYS, "fold", "image_index", "probabilities"}
    multi_label = is_multi_label_table(predictions)
    required |= {"labels", "predicted_labels"} if multi_label else {"label", "predicted"}
    missing = required - set(predictions.columns)
    if missing:
        raise ValueError(f"The predictions table lacks columns {sorted(missing)}.")
    bootstrap = HierarchicalBootstrap.for_table(predictions, n_resamples, seed)
    rows = []
    for key, group in predictions.groupby(KEYS, sort=True):
        point, resampled = bootstrap.statistic(group, table_metrics)
        per_fold = np.stack(
            [
                table_metrics(fold_rows, np.ones((1, len(fold_rows))))[0]
                for _, fold_rows in group.groupby("fold", sort=True)
            ]
        )
        row = dict(zip(KEYS, key, strict=True))
        for i, name in enumerate(METRIC_NAMES):
            interval = with_interval(name, point[i], resampled[:, i], confidence)
            finite = per_fold[np.isfinite(per_fold[:, i]), i]
            row[f"{name}_mean"] = interval[name]
            row[f"{name}_std"] = float(np.std(finite, ddof=1)) if len(finite) > 1 else np.nan
            row[f"{name}_ci_low"] = interval[f"{name}_ci_low"]
            row[f"{name}_ci_high"] = interval[f"{name}_ci_high"]
        row["n_folds"] = len(per_fold)
        row["n_images"] = float(len(group) / len(per_fold))
        rows.append(row)
    return pd.DataFrame(rows).astype({"severity": "int8", "n_folds": "int32"})
