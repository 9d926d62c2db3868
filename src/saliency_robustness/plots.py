"""Figures (seaborn/matplotlib, PNG), each written atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: jobs run without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from saliency_robustness.tables import atomic_path  # noqa: E402


def _short_titles(grid: sns.FacetGrid) -> sns.FacetGrid:
    """Facet titles without 'name = ' prefixes, which overlap in narrow panels."""
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    return grid


def _save(figure, path: str | os.PathLike, dpi: int = 120) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(figure)


def _gray(image: np.ndarray) -> dict:
    return {"cmap": "gray", "vmin": 0, "vmax": 255} if image.ndim == 2 else {}


def perturbation_preview(
    clean: np.ndarray,
    stack: np.ndarray,
    severities: Sequence[int],
    name: str,
    path: str | os.PathLike,
    n_images: int = 4,
    dpi: int = 120,
) -> None:
    """Grid: rows are test images, columns clean then each severity."""
    n = min(n_images, len(clean))
    columns = [("clean", clean)] + [(f"severity {s}", stack[i]) for i, s in enumerate(severities)]
    figure, axes = plt.subplots(
        n, len(columns), figsize=(1.4 * len(columns), 1.4 * n), squeeze=False
    )
    for row in range(n):
        for col, (title, images) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(images[row], **_gray(images[row]))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
    figure.suptitle(name.replace("_", " "), fontsize=10)
    _save(figure, path, dpi)


def training_curves(history: pd.DataFrame, path: str | os.PathLike, dpi: int = 120) -> None:
    """Loss and validation AUC/ACC per epoch, one line per fold, one column per metric."""
    long = history.melt(
        id_vars=["arch", "fold", "epoch"],
        value_vars=["train_loss", "val_loss", "val_acc", "val_auc"],
        var_name="metric",
    )
    grid = sns.relplot(
        data=long,
        x="epoch",
        y="value",
        hue="fold",
        col="metric",
        row="arch",
        kind="line",
        facet_kws={"sharey": False},
        height=2.4,
        palette="tab10",
    )
    _save(_short_titles(grid).figure, path, dpi)


def classification_vs_severity(
    metrics: pd.DataFrame, path: str | os.PathLike, dpi: int = 120
) -> None:
    """ACC, balanced ACC and AUC vs severity per perturbation (mean and SD over folds).

    Multi-label tables also hold per-label rows; the figure shows the aggregate (``label``
    'all': macro AUC, label-wise ACC)."""
    if "label" in metrics.columns:
        metrics = metrics[metrics["label"] == "all"]
    long = metrics.melt(
        id_vars=["arch", "fold", "perturbation", "severity"],
        value_vars=["acc", "balanced_acc", "auc"],
        var_name="metric",
    )
    grid = sns.relplot(
        data=long,
        x="severity",
        y="value",
        hue="perturbation",
        col="metric",
        row="arch",
        kind="line",
        marker="o",
        errorbar="sd",
        height=2.6,
    )
    _save(_short_titles(grid).figure, path, dpi)


def saliency_change_vs_severity(
    summary: pd.DataFrame, path: str | os.PathLike, dpi: int = 120
) -> None:
    """Mean map change (SSIM, Spearman, top-k IoU, RMSE) vs severity, row per method."""
    long = summary.melt(
        id_vars=["arch", "method", "perturbation", "severity"],
        value_vars=["ssim_mean", "spearman_mean", "topk_iou_mean", "rmse_mean"],
        var_name="metric",
    )
    long["metric"] = long["metric"].str.removesuffix("_mean")
    long["model / method"] = long["arch"] + " / " + long["method"]
    grid = sns.relplot(
        data=long,
        x="severity",
        y="value",
        hue="perturbation",
        col="metric",
        row="model / method",
        kind="line",
        marker="o",
        height=2.2,
        aspect=1.4,
        facet_kws={"sharey": "col"},
    )
    _save(_short_titles(grid).figure, path, dpi)


def misclassification_detection(
    detection: pd.DataFrame, path: str | os.PathLike, dpi: int = 120
) -> None:
    """AUROC of each change score for detecting misclassified perturbed images."""
    data = detection.dropna(subset=["auroc"])
    if data.empty:
        raise ValueError(
            "No AUROC is defined: every perturbed image was classified right (or every one "
            "wrong). Attribute more images (attribute.max_images) or use stronger severities."
        )
    grid = sns.catplot(
        data=data,
        x="method",
        y="auroc",
        hue="perturbation",
        col="score",
        row="arch",
        kind="bar",
        errorbar="sd",
        height=2.6,
        aspect=1.3,
    )
    for ax in grid.axes.flat:
        ax.axhline(0.5, color="gray", linestyle="--", linewidth=0.8)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=30)
    _save(_short_titles(grid).figure, path, dpi)


def saliency_examples(
    clean: np.ndarray,
    perturbed: dict[str, tuple[list[int], np.ndarray]],
    maps: dict[str, dict[tuple[str, int], np.ndarray]],
    image_indices: Sequence[int],
    path: str | os.PathLike,
    dpi: int = 120,
) -> None:
    """Per example image and perturbation: the image at each severity, then each method's map.

    ``maps[method][(perturbation, severity)]`` holds maps (N, H, W) of the attributed images.
    """
    methods = list(maps)
    n_levels = 1 + max(len(sev) for sev, _ in perturbed.values())
    block = 1 + len(methods)
    n_rows = block * len(image_indices) * len(perturbed)
    figure, axes = plt.subplots(
        n_rows, n_levels, figsize=(1.3 * n_levels, 1.3 * n_rows), squeeze=False
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    row = 0
    for index in image_indices:
        for name, (severities, stack) in perturbed.items():
            levels = [0, *severities]
            for col, severity in enumerate(levels):
                image = clean[index] if severity == 0 else stack[severities.index(severity)][index]
                axes[row, col].imshow(image, **_gray(image))
                axes[row, col].set_title(
                    "clean" if severity == 0 else f"{name} {severity}", fontsize=6
                )
                for m, method in enumerate(methods):
                    saliency = np.abs(maps[method][(name, severity)][index])
                    axes[row + 1 + m, col].imshow(saliency, cmap="inferno")
                    if col == 0:
                        axes[row + 1 + m, 0].set_ylabel(method, fontsize=6)
            axes[row, 0].set_ylabel(f"image {index}", fontsize=6)
            row += block
    _save(figure, path, dpi)
