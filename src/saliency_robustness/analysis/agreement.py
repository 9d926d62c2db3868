"""Do models with similar accuracy look at the same regions? Agreement between models.

For every pair of models of one dataset and method (pairs of architectures, and pairs of
folds of one architecture), per image: IoU of the top-k% regions of the two maps (the PCam
study thresholded the maps) and Spearman rank correlation, after the pipeline's one
normalisation (|map| / max, ``map_similarity.normalise_maps``). Maps are matched on
(perturbation, severity, image_index): the same (possibly perturbed) image.

Targets: each model's map explains that model's own clean prediction (``attribute.target:
predicted``), so two models may explain different classes for an image. Both are kept: the
question is whether the models rely on the same regions for their decisions; the per-pair
``same_target`` fraction is reported beside the means, and ``same_target_only`` restricts
the comparison to images where both models explain the same class. With ``attribute.target:
label`` the targets always agree.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from saliency_robustness.analysis.map_similarity import normalise_maps, spearman, top_k_iou
from saliency_robustness.analysis.statistics import (
    HierarchicalBootstrap,
    weighted_mean,
    with_interval,
)
from saliency_robustness.tables import maps_from_table

JOIN = ["perturbation", "severity", "image_index"]
AGREEMENT_METRICS = ("topk_iou", "spearman")


def model_name(arch: str, fold: int) -> str:
    return f"{arch}/fold{int(fold)}"


def pair_kind(arch_a: str, arch_b: str) -> str:
    """'folds' for two folds of one architecture, 'architectures' otherwise."""
    return "folds" if arch_a == arch_b else "architectures"


def pairwise_agreement(
    a: pd.DataFrame, b: pd.DataFrame, top_k_percent: float, same_target_only: bool = False
) -> pd.DataFrame:
    """Per-image agreement of two models' saliency tables (one method) on shared images.

    Returns one row per (perturbation, severity, image_index) present in both, with
    ``topk_iou``, ``spearman`` and ``same_target``.
    """
    if a.empty or b.empty:
        raise ValueError("Both saliency tables must hold maps to compare.")
    if (a["height"].iloc[0], a["width"].iloc[0]) != (b["height"].iloc[0], b["width"].iloc[0]):
        raise ValueError("The two models' maps differ in size; compare maps of one image size.")
    a = a.drop_duplicates(JOIN).reset_index(drop=True)
    b = b.drop_duplicates(JOIN).reset_index(drop=True)
    joined = (
        a[JOIN]
        .reset_index(names="row_a")
        .merge(b[JOIN].reset_index(names="row_b"), on=JOIN, how="inner")
    )
    if joined.empty:
        raise ValueError(
            "The two saliency tables share no (perturbation, severity, image_index); were they "
            "computed on the same test images and perturbations?"
        )
    rows_a, rows_b = joined["row_a"].to_numpy(), joined["row_b"].to_numpy()
    same = a["target"].to_numpy()[rows_a] == b["target"].to_numpy()[rows_b]
    if same_target_only:
        rows_a, rows_b, joined, same = rows_a[same], rows_b[same], joined[same], same[same]
    maps_a = normalise_maps(maps_from_table(a.iloc[rows_a]))
    maps_b = normalise_maps(maps_from_table(b.iloc[rows_b]))
    return (
        joined[JOIN]
        .reset_index(drop=True)
        .assign(
            topk_iou=top_k_iou(maps_a, maps_b, top_k_percent) if len(maps_a) else [],
            spearman=spearman(maps_a, maps_b) if len(maps_a) else [],
            same_target=same,
        )
    )


def agreement(
    saliency: pd.DataFrame,
    top_k_percent: float,
    same_target_only: bool = False,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean agreement per model pair, method, perturbation and severity (long table).

    ``saliency`` holds the saliency tables of several models (arch, fold) of one dataset.
    One row per (dataset, method, model_a, model_b, perturbation, severity, metric) with
    ``mean``, ``std`` and ``n_images`` over images, and the pair's ``same_target`` fraction.
    Pairs are unordered (model_a < model_b).

    ``mean_ci_low`` and ``mean_ci_high``: percentile interval of the mean from a bootstrap
    of the test images (the pair's two models are fixed, so there are no folds to resample;
    one draw of the images for the whole table, so every perturbation and severity of an
    image moves together, in every pair).
    """
    rows = []
    if not saliency.empty:
        images = saliency["image_index"].to_numpy()
        bootstrap = HierarchicalBootstrap.draw([0], images, n_resamples, seed)
    for (dataset, method), table in saliency.groupby(["dataset", "method"], sort=True):
        models = sorted(
            {(arch, int(fold)) for arch, fold in zip(table["arch"], table["fold"], strict=True)}
        )
        by_model = {key: group for key, group in table.groupby(["arch", "fold"], sort=True)}
        for (arch_a, fold_a), (arch_b, fold_b) in itertools.combinations(models, 2):
            per_image = pairwise_agreement(
                by_model[(arch_a, fold_a)], by_model[(arch_b, fold_b)], top_k_percent,
                same_target_only,
            )  # fmt: skip
            for (perturbation, severity), group in per_image.groupby(
                ["perturbation", "severity"], sort=True
            ):
                weights = bootstrap.row_weights(group["image_index"].to_numpy())
                for metric in AGREEMENT_METRICS:
                    values = group[metric].to_numpy(dtype=float)
                    mean = float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
                    interval = with_interval(
                        "mean", mean, weighted_mean(values, weights), confidence
                    )
                    rows.append(
                        {
                            "dataset": dataset,
                            "method": method,
                            "pair": pair_kind(arch_a, arch_b),
                            "model_a": model_name(arch_a, fold_a),
                            "model_b": model_name(arch_b, fold_b),
                            "arch_a": arch_a,
                            "fold_a": fold_a,
                            "arch_b": arch_b,
                            "fold_b": fold_b,
                            "perturbation": perturbation,
                            "severity": int(severity),
                            "metric": metric,
                            "mean": mean,
                            "std": float(np.nanstd(values))
                            if np.isfinite(values).any()
                            else np.nan,
                            "n_images": int(np.isfinite(values).sum()),
                            "same_target": float(group["same_target"].mean()),
                            "mean_ci_low": interval["mean_ci_low"],
                            "mean_ci_high": interval["mean_ci_high"],
                        }
                    )
    columns = [
        "dataset", "method", "pair", "model_a", "model_b", "arch_a", "fold_a", "arch_b",
        "fold_b", "perturbation", "severity", "metric", "mean", "std", "n_images", "same_target",
        "mean_ci_low", "mean_ci_high",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns).astype(
        {"fold_a": "int16", "fold_b": "int16", "severity": "int8", "n_images": "int32"}
    )
