"""Predictions and classification metrics on clean and perturbed test images.

Two kinds of task (MedMNIST's ``INFO[flag]["task"]``):

* single-label (``binary-class``, ``multi-class``, and ``ordinal-regression``, which is
  treated as multi-class as the MedMNIST v2 paper does): softmax outputs, one class per image;
* multi-label (``multi-label, binary-class``, e.g. ChestMNIST's 14 findings, and the synthetic
  generator's ``multi-label``): one sigmoid output per label, labels an (N, L) 0/1 array; own
  data may hold -1 (``labels.UNCERTAIN``) for uncertain entries, which every metric leaves
  out per label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn import metrics as skm
from torch import nn

from saliency_robustness.datasets.labels import UNCERTAIN, certain
from saliency_robustness.models.tensors import images_to_tensor

METRIC_NAMES = ("acc", "balanced_acc", "auc", "precision", "recall", "f1")
ALL_LABELS = "all"  # value of the metrics table's ``label`` column for the aggregate row
# MedMNIST's Evaluator (medmnist.evaluator.getACC) thresholds sigmoid outputs at 0.5 and
# averages the label-wise accuracies; we follow it so ACC is comparable with the paper.
MULTI_LABEL_THRESHOLD = 0.5


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    multi_label: bool = False,
) -> np.ndarray:
    """Probabilities for uint8 images, batched: softmax over classes, or one sigmoid per
    label with ``multi_label``."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = images_to_tensor(images[start : start + batch_size]).to(device)
        logits = model(batch)
        probs = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)
        out.append(probs.float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)


def multi_label_array(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Labels as an (N, L) int array of 0 and 1, and -1 (``labels.UNCERTAIN``) where own data
    marks a label uncertain; a clear error for any other shape or value."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != n_labels:
        raise ValueError(
            f"Multi-label data needs labels of shape (N, {n_labels}), got {labels.shape}; "
            "check the dataset's task and label columns."
        )
    if not np.isin(labels, (0, 1, UNCERTAIN)).all():
        raise ValueError(
            "Multi-label labels must be 0 or 1 (or -1: uncertain); check the dataset's label "
            "columns."
        )
    return labels.astype(int)


def _binary_scores(truth: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """The metrics of one label of a multi-label task, as a binary problem on the images
    whose label is certain (uncertain ones, -1, count neither as positive nor as negative);
    all NaN where no image has a certain value."""
    kept = certain(truth)
    truth, probability = truth[kept], probability[kept]
    if not len(truth):
        return dict.fromkeys(METRIC_NAMES, np.nan)
    predicted = (probability > MULTI_LABEL_THRESHOLD).astype(int)
    auc = float(skm.roc_auc_score(truth, probability)) if len(np.unique(truth)) == 2 else np.nan
    return {
        "acc": float(skm.accuracy_score(truth, predicted)),
        "balanced_acc": float(skm.balanced_accuracy_score(truth, predicted))
        if len(np.unique(truth)) == 2
        else np.nan,
        "auc": auc,
        "precision": float(skm.precision_score(truth, predicted, zero_division=0)),
        "recall": float(skm.recall_score(truth, predicted, zero_division=0)),
        "f1": float(skm.f1_score(truth, predicted, zero_division=0)),
    }


def per_label_metrics(labels: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """Multi-label: one row per label (index ``label_index``) with ``METRIC_NAMES``.

    Each label is scored as a binary problem on its sigmoid probability, predicted present
    when the probability exceeds ``MULTI_LABEL_THRESHOLD``, over the images where that label
    is certain (an uncertain entry, -1, is left out of that label's metrics only). AUC and
    balanced ACC are NaN for a label with only one certain value in ``labels`` (absent from
    the test set, or present in every image: undefined there).
    """
    labels = multi_label_array(labels, probabilities.shape[1])
    rows = [
        {"label_index": j, **_binary_scores(labels[:, j], probabilities[:, j])}
        for j in range(probabilities.shape[1])
    ]
    return pd.DataFrame(rows)


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, multi_label: bool = False
) -> dict[str, float]:
    """ACC, balanced ACC, AUC, precision, recall, F1.

    Binary tasks: AUC of the positive-class probability, precision/recall/F1 of class 1.
    Multi-class: one-vs-rest macro AUC and macro precision/recall/F1. AUC is NaN when
    only one class is present in ``labels`` (it is undefined there).

    Multi-label (``multi_label``; sigmoid probabilities, (N, L) 0/1 labels): the mean over
    labels of each label's binary metric (``per_label_metrics``), i.e. macro AUC and macro
    precision/recall/F1; ACC is MedMNIST's label-wise accuracy at threshold 0.5 (not the
    exact match of the whole label vector). Labels whose AUC or balanced ACC is undefined
    (no certain positive or no certain negative image) are left out of that mean, so the
    macro AUC averages exactly the labels present in ``labels`` with both values; NaN if no
    label has it defined. Uncertain entries (-1) are left out per label.
    """
    if multi_label:
        table = per_label_metrics(labels, probabilities)
        means = table[list(METRIC_NAMES)].mean(axis=0, skipna=True)
        return {name: float(means[name]) for name in METRIC_NAMES}
    labels = np.asarray(labels).reshape(-1).astype(int)
    n_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    average = "binary" if n_classes == 2 else "macro"
    present = np.unique(labels)
    if len(present) < 2:
        auc = float("nan")
    elif n_classes == 2:
        auc = skm.roc_auc_score(labels, probabilities[:, 1])
    else:
        auc = skm.roc_auc_score(
            labels, probabilities, multi_class="ovr", average="macro", labels=np.arange(n_classes)
        )
    return {
        "acc": float(skm.accuracy_score(labels, predicted)),
        "balanced_acc": float(skm.balanced_accuracy_score(labels, predicted)),
        "auc": float(auc),
        "precision": float(
            skm.precision_score(labels, predicted, average=average, zero_division=0)
        ),
        "recall": float(skm.recall_score(labels, predicted, average=average, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, average=average, zero_division=0)),
    }


def metric_rows(
    labels: np.ndarray,
    probabilities: np.ndarray,
    multi_label: bool = False,
    label_names: list[str] | None = None,
) -> list[dict]:
    """Rows of the metrics table for one prediction set: the aggregate (``label`` 'all')
    first, then, for multi-label tasks, one row per label named by ``label_names``."""
    rows = [{"label": ALL_LABELS, **classification_metrics(labels, probabilities, multi_label)}]
    if multi_label:
        table = per_label_metrics(labels, probabilities)
        names = label_names or [str(j) for j in range(probabilities.shape[1])]
        if len(names) != probabilities.shape[1]:
            raise ValueError(
                f"{len(names)} label names for {probabilities.shape[1]} model outputs."
            )
        for record in table.to_dict("records"):
            j = int(record.pop("label_index"))
            rows.append({"label": names[j], **record})
    return rows


def prediction_rows(
    labels: np.ndarray,
    probabilities: np.ndarray,
    perturbation: str,
    severity: int,
    multi_label: bool = False,
) -> pd.DataFrame:
    """Per-image prediction table for one (perturbation, severity).

    Single-label: ``label`` and ``predicted`` (argmax). Multi-label: ``labels`` and
    ``predicted_labels`` instead, 0/1 vectors (predicted present above the threshold);
    ``labels`` keeps -1 for an uncertain label of own data.
    """
    keys = {
        "perturbation": perturbation,
        "severity": np.int8(severity),
        "image_index": np.arange(len(probabilities), dtype=np.int32),
    }
    if multi_label:
        labels = multi_label_array(labels, probabilities.shape[1])
        predicted = probabilities > MULTI_LABEL_THRESHOLD
        return pd.DataFrame(
            {
                **keys,
                "labels": list(labels.astype(np.int8)),
                "predicted_labels": list(predicted.astype(np.int8)),
                "probabilities": list(probabilities.astype(np.float32)),
            }
        )
    labels = np.asarray(labels).reshape(-1)
    return pd.DataFrame(
        {
            **keys,
            "label": labels.astype(np.int16),
            "predicted": probabilities.argmax(axis=1).astype(np.int16),
            "probabilities": list(probabilities.astype(np.float32)),
        }
    )


def evaluate_model(
    model: nn.Module,
    clean_images: np.ndarray,
    labels: np.ndarray,
    perturbed: dict[str, tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    device: torch.device | str,
    multi_label: bool = False,
    label_names: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and metrics on the clean test set and every perturbed version.

    ``perturbed`` maps a perturbation name to (severities, images of shape (S, N, ...)).
    Clean rows are repeated under each perturbation as severity 0, so each perturbation's
    curve starts at the clean value. Returns (per-image predictions, per-severity metrics);
    the metrics table has a ``label`` column: 'all' for the aggregate row, and for
    multi-label tasks one more row per label (named by ``label_names``).
    """
    clean_probs = predict_proba(model, clean_images, batch_size, device, multi_label)
    predictions, summary = [], []
    levels_by_name = {
        name: [(0, clean_probs)]
        + [
            (int(s), predict_proba(model, stack, batch_size, device, multi_label))
            for s, stack in zip(severities, stacks, strict=True)
        ]
        for name, (severities, stacks) in perturbed.items()
    } or {"none": [(0, clean_probs)]}
    for name, levels in levels_by_name.items():
        for severity, probs in levels:
            predictions.append(prediction_rows(labels, probs, name, severity, multi_label))
            summary.extend(
                {"perturbation": name, "severity": severity, **row}
                for row in metric_rows(labels, probs, multi_label, label_names)
            )
    metrics = pd.DataFrame(summary).astype({"severity": "int8"})
    return pd.concat(predictions, ignore_index=True), metrics
