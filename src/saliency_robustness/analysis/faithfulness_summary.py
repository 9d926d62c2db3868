"""Faithfulness tables summarised per fold and over folds, with bootstrap intervals. Pandas
only, so the summary job needs no torch."""

from __future__ import annotations

import numpy as np
import pandas as pd

from saliency_robustness.analysis.statistics import (
    HierarchicalBootstrap,
    interval,
    weighted_mean,
    with_interval,
)
from saliency_robustness.tables import CONDITION_KEYS, MAP_KEYS, over_folds

# Scalar columns of ``faithfulness`` and whether larger means more faithful (for captions).
# Covering by the binary mask removes the salient pixels, darkening keeps them: opposite
# directions. Columns of modes not in ``covering`` are absent from the table.
FAITHFULNESS_METRICS = {
    "confidence_change": None,
    "drop_in_confidence": False,
    "increase_in_confidence": True,
    "confidence_change_binary_mask": None,
    "drop_in_confidence_binary_mask": True,
    "increase_in_confidence_binary_mask": False,
    "deletion_auc": False,
    "insertion_auc": True,
    "road_morf": False,
    "road_lerf": True,
    "road_combined": True,
    "infidelity": False,
    "sensitivity_max": False,
}


def _long_metrics(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The scalar metrics of a faithfulness table as (keys, image_index, metric, value)."""
    metrics = [m for m in FAITHFULNESS_METRICS if m in table]
    long = table[[*keys, "image_index", *metrics]].melt(
        id_vars=[*keys, "image_index"], var_name="metric", value_name="value"
    )
    long["value"] = long["value"].astype(float)
    return long


def summarise_faithfulness(
    table: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """Long table: mean, standard deviation and number of images of each scalar metric per
    (dataset, arch, fold, method, perturbation, severity); clean images under 'none'.

    ``mean_ci_low`` and ``mean_ci_high``: percentile interval of the mean over a bootstrap
    of the test images with the fold's model fixed (one draw of the images for the whole
    table, so every perturbation and severity of an image moves together); the interval
    over folds as well is ``faithfulness_over_folds``'s.
    """
    keys = [*MAP_KEYS, *CONDITION_KEYS]
    long = _long_metrics(table, keys)
    bootstrap = HierarchicalBootstrap.for_table(table, n_resamples, seed)
    rows = []
    for key, group in long.groupby(keys + ["metric"], sort=True):
        values = group["value"].to_numpy()
        finite = np.isfinite(values)
        resampled = weighted_mean(values, bootstrap.row_weights(group["image_index"].to_numpy()))
        mean = float(values[finite].mean()) if finite.any() else np.nan
        low, high = interval(resampled, confidence)
        if np.isfinite(mean) and np.isfinite(low):
            low, high = min(low, mean), max(high, mean)
        rows.append(
            {
                **dict(zip(keys + ["metric"], key, strict=True)),
                "mean": mean,
                "std": float(values[finite].std(ddof=1)) if finite.sum() > 1 else np.nan,
                "n_images": int(finite.sum()),
                "mean_ci_low": low,
                "mean_ci_high": high,
            }
        )
    dtypes = {key: table[key].dtype for key in keys}
    return pd.DataFrame(rows).astype({**dtypes, "n_images": "int32"})


def faithfulness_over_folds(
    table: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """Long table per (dataset, arch, method, perturbation, severity, metric): ``mean`` (mean
    over folds of the fold's mean over images), ``std`` (SD over folds), ``mean_ci_low`` and
    ``mean_ci_high`` (hierarchical bootstrap: folds, then, once, the test images, with
    replacement), ``n_folds`` and ``n_images`` (per fold, mean)."""
    keys = [*over_folds(MAP_KEYS), *CONDITION_KEYS]
    long = _long_metrics(table, [*keys, "fold"])
    bootstrap = HierarchicalBootstrap.for_table(table, n_resamples, seed)
    rows = []
    for key, group in long.groupby(keys + ["metric"], sort=True):
        point, resampled = bootstrap.statistic(
            group, lambda rows, w: weighted_mean(rows["value"].to_numpy(), w)[:, None]
        )
        per_fold = group.groupby("fold")["value"].agg(["mean", "count"])
        result = with_interval("mean", point[0], resampled[:, 0], confidence)
        rows.append(
            {
                **dict(zip(keys + ["metric"], key, strict=True)),
                **result,
                "std": float(per_fold["mean"].std(ddof=1)),
                "n_folds": int(per_fold["mean"].notna().sum()),
                "n_images": float(per_fold["count"].mean()),
            }
        )
    columns = [*keys, "metric", "mean", "std", "mean_ci_low", "mean_ci_high"]
    dtypes = {key: table[key].dtype for key in keys}
    out = pd.DataFrame(rows)[[*columns, "n_folds", "n_images"]]
    return out.astype({**dtypes, "n_folds": "int32"})
