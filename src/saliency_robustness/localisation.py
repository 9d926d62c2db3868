"""Does the saliency map point at the lesion? Localisation scores against ground-truth masks.

Per map (clean and perturbed images), after the change metrics' normalisation (|map| / max):

* ``hit`` (pointing game, the skin-ultrasound study's Hit Rate): the map's maximum lies
  inside the mask; NaN for constant maps, whose maximum is everywhere;
* ``energy`` (energy-based pointing game, Score-CAM paper): share of the map's mass inside
  the mask; NaN for an all-zero map;
* ``iou`` and ``dice``: overlap of the top-k% pixels of the map with the mask
  (CheXlocalize-style thresholded IoU; k = ``metrics.top_k_percent``), tie-aware: pixels
  tied at the cut-off share the remaining mass (``metrics.top_k_weights``);
* ``mask_fraction``: the mask's share of the image, the chance level of ``hit`` and ``energy``
  for a map unrelated to the lesion.

Perturbed images are scored against the clean image's mask. That is exact for intensity
perturbations (noise, blur, contrast, bias field, ...), which do not move anatomy; motion and
elastic deformations do move it slightly, so their localisation scores mix "the map moved
off the lesion" with "the lesion moved".

Written here (not taken from quantus) because the scores must run on stored maps in the
saliency Parquet without the model; tests cross-check them with quantus.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from saliency_robustness.metrics import normalise_maps, top_k_weights
from saliency_robustness.statistics import HierarchicalBootstrap, weighted_mean, with_interval
from saliency_robustness.tables import maps_from_table

SCORES = {"hit": "pointing game", "energy": "energy pointing game", "iou": "top-k IoU"}
KEYS = ["dataset", "arch", "fold", "method", "perturbation", "severity"]


def localisation_scores(
    maps: np.ndarray, masks: np.ndarray, top_k_percent: float
) -> dict[str, np.ndarray]:
    """Scores of maps (N, H, W) against boolean masks (N, H, W) with at least one pixel each."""
    masks = np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape:
        raise ValueError(f"Maps {maps.shape} and masks {masks.shape} differ in shape.")
    if not masks.reshape(len(masks), -1).any(axis=1).all():
        raise ValueError("Every mask needs at least one lesion pixel (select those images).")
    n = len(maps)
    flat = normalise_maps(maps).reshape(n, -1)
    flat_masks = masks.reshape(n, -1)
    constant = flat.max(axis=1) - flat.min(axis=1) <= 1e-12
    hit = flat_masks[np.arange(n), flat.argmax(axis=1)].astype(float)
    hit[constant] = np.nan
    total = flat.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        energy = np.where(total > 0, (flat * flat_masks).sum(axis=1) / total, np.nan)
    # tie-aware top-k weights (metrics.top_k_weights): 0/1 without ties at the cut-off
    top = top_k_weights(flat.reshape(maps.shape), top_k_percent).reshape(n, -1)
    inter = np.minimum(top, flat_masks).sum(axis=1)
    union = np.maximum(top, flat_masks).sum(axis=1)
    return {
        "hit": hit,
        "energy": energy,
        "iou": inter / union,
        "dice": 2 * inter / (top.sum(axis=1) + flat_masks.sum(axis=1)),
        "mask_fraction": flat_masks.mean(axis=1),
    }


def localisation(
    saliency: pd.DataFrame,
    test_masks: np.ndarray,
    top_k_percent: float,
    has_mask: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per saliency row (image, perturbation, severity, target) whose image has a non-empty
    mask: the localisation scores (see module doc), with the row's keys and prediction."""
    test_masks = np.asarray(test_masks, dtype=bool)
    index = saliency["image_index"].to_numpy()
    if len(index) and index.max() >= len(test_masks):
        raise ValueError(
            f"Saliency rows refer to test image {index.max()} but the dataset has "
            f"{len(test_masks)} masks; rerun the attribute rule for this dataset."
        )
    usable = test_masks.reshape(len(test_masks), -1).any(axis=1)
    if has_mask is not None:
        usable &= np.asarray(has_mask, dtype=bool)
    keep = usable[index]
    rows = saliency.loc[keep].reset_index(drop=True)
    maps = maps_from_table(rows)
    if len(rows) and maps.shape[1:] != test_masks.shape[1:]:
        raise ValueError(
            f"Maps are {maps.shape[1:]} px but masks are {test_masks.shape[1:]} px; the "
            "saliency table belongs to another data.size. Rerun the attribute rule."
        )
    scores = (
        localisation_scores(maps, test_masks[rows["image_index"].to_numpy()], top_k_percent)
        if len(rows)
        else {k: np.zeros(0) for k in ("hit", "energy", "iou", "dice", "mask_fraction")}
    )
    return pd.DataFrame(
        {
            **{key: rows[key] for key in KEYS},
            "image_index": rows["image_index"],
            "label": rows["label"],
            "target": rows["target"],
            "predicted": rows["predicted"],
            "is_constant": rows["is_constant"],
            **scores,
        }
    )


def summarise_localisation(
    table: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """Mean per fold, then mean and standard deviation over folds, per (dataset, arch, method,
    perturbation, severity); ``n_images`` counts the scored maps per fold.

    ``<score>_ci_low`` and ``<score>_ci_high``: percentile interval of the mean over folds
    from the hierarchical bootstrap (statistics.HierarchicalBootstrap: folds, then, once,
    the test images with replacement; every perturbation, severity and target of an image
    moves with it).
    """
    columns = ["hit", "energy", "iou", "dice", "mask_fraction"]
    per_fold = table.groupby(KEYS, as_index=False).agg(
        **{c: (c, "mean") for c in columns}, n_images=("hit", "size")
    )
    keys = [k for k in KEYS if k != "fold"]
    grouped = per_fold.groupby(keys)
    summary = grouped[columns].mean().add_suffix("_mean")
    spread = grouped[columns].std(ddof=1).add_suffix("_sd")
    counts = grouped.agg(n_folds=("fold", "nunique"), n_images=("n_images", "mean"))
    out = pd.concat([summary, spread, counts], axis=1)
    if table.empty:
        return out.reset_index()
    bootstrap = HierarchicalBootstrap.for_table(table, n_resamples, seed)

    def means(rows: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
        return np.column_stack(
            [weighted_mean(rows[c].to_numpy(dtype=float), weights) for c in columns]
        )

    intervals = {}
    for key, group in table.groupby(keys, sort=True):
        _, resampled = bootstrap.statistic(group, means)
        row = {}
        for i, column in enumerate(columns):
            point = out.loc[key, f"{column}_mean"]  # the interval contains the table's mean
            interval = with_interval(column, point, resampled[:, i], confidence)
            row[f"{column}_ci_low"] = interval[f"{column}_ci_low"]
            row[f"{column}_ci_high"] = interval[f"{column}_ci_high"]
        intervals[key] = row
    index = pd.MultiIndex.from_tuples(list(intervals), names=keys)
    return out.join(pd.DataFrame(list(intervals.values()), index=index)).reset_index()
