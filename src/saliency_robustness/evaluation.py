"""Predictions and classification metrics on clean and perturbed test images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn import metrics as skm
from torch import nn

from saliency_robustness.models import images_to_tensor

METRIC_NAMES = ("acc", "balanced_acc", "auc", "precision", "recall", "f1")


@torch.no_grad()
def predict_proba(
    model: nn.Module, images: np.ndarray, batch_size: int = 256, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Class probabilities (softmax) for uint8 images, batched."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = images_to_tensor(images[start : start + batch_size]).to(device)
        out.append(torch.softmax(model(batch), dim=1).float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """ACC, balanced ACC, AUC, precision, recall, F1 for single-label classification.

    Binary tasks: AUC of the positive-class probability, precision/recall/F1 of class 1.
    Multi-class: one-vs-rest macro AUC and macro precision/recall/F1. AUC is NaN when
    only one class is present in ``labels`` (it is undefined there).
    """
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


def prediction_rows(
    labels: np.ndarray, probabilities: np.ndarray, perturbation: str, severity: int
) -> pd.DataFrame:
    """Per-image prediction table for one (perturbation, severity)."""
    labels = np.asarray(labels).reshape(-1)
    return pd.DataFrame(
        {
            "perturbation": perturbation,
            "severity": np.int8(severity),
            "image_index": np.arange(len(labels), dtype=np.int32),
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
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and metrics on the clean test set and every perturbed version.

    ``perturbed`` maps a perturbation name to (severities, images of shape (S, N, ...)).
    Clean rows are repeated under each perturbation as severity 0, so each perturbation's
    curve starts at the clean value. Returns (per-image predictions, per-severity metrics).
    """
    clean_probs = predict_proba(model, clean_images, batch_size, device)
    predictions, summary = [], []
    for name, (severities, stacks) in perturbed.items():
        levels = [(0, clean_probs)] + [
            (int(s), predict_proba(model, stack, batch_size, device))
            for s, stack in zip(severities, stacks, strict=True)
        ]
        for severity, probs in levels:
            predictions.append(prediction_rows(labels, probs, name, severity))
            summary.append(
                {
                    "perturbation": name,
                    "severity": severity,
                    **classification_metrics(labels, probs),
                }
            )
    if not perturbed:
        predictions.append(prediction_rows(labels, clean_probs, "none", 0))
        summary.append(
            {"perturbation": "none", "severity": 0, **classification_metrics(labels, clean_probs)}
        )
    metrics = pd.DataFrame(summary).astype({"severity": "int8"})
    return pd.concat(predictions, ignore_index=True), metrics
