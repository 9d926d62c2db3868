"""Does the saliency map point at the lesion? Localisation scores against ground-truth masks.

Per map (clean and perturbed images), after the change metrics' normalisation (|map| / max):

* ``hit`` (pointing game, the skin-ultrasound study's Hit Rate): the map's maximum lies
  inside the mask; NaN for constant maps, whose maximum is everywhere;
* ``energy`` (energy-based pointing game, Score-CAM paper): share of the map's mass inside
  the mask; NaN for an all-zero map;
* ``iou`` and ``dice``: overlap of the top-k% pixels of the map with the mask
  (CheXlocalize-style thresholded IoU; k = ``metrics.top_k_percent``), tie-aware: pixels
  tied at the cut-off share the remaining mass (``map_similarity.top_k_weights``);
* ``mask_fraction``: the mask's share of the image, the chance level of ``hit`` and ``energy``
  for a map unrelated to the lesion;
* ``graded_hit`` (the skin-ultrasound study's graded hit rate): the score of the mask level the
  map's maximum falls in, by default 3 in the lesion (level 1), 2, 1 and 0 in the layers
  around it (levels 2, 3, 4) and -1 in the background (config ``localisation``); pixels tied
  at the maximum share it (the mean of their levels' scores; ``hit`` takes the first maximum
  in row-major order, as quantus' pointing game); NaN for constant maps, as ``hit``;
* ``graded_hit_chance``: the mean score over the image's pixels, the expected ``graded_hit``
  of a map unrelated to the lesion.

Masks are binary (0/1) or multi-level (0 background, 1 the lesion, 2 the layer around it,
...; the synthetic set's ``ring_width`` and own-data level masks, datasets/custom.py). Every score
but the graded hit rate treats all levels >= 1 as inside the mask.

Perturbed images are scored against the clean image's mask. That is exact for intensity
perturbations (noise, blur, contrast, bias field, ...), which do not move anatomy; motion and
elastic deformations do move it slightly, so their localisation scores mix "the map moved
off the lesion" with "the lesion moved".

Written here (not taken from quantus) because the scores must run on stored maps in the
saliency Parquet without the model; tests cross-check them with quantus.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from saliency_robustness.analysis.map_similarity import normalise_maps, top_k_weights
from saliency_robustness.analysis.statistics import (
    HierarchicalBootstrap,
    weighted_mean,
    with_interval,
)
from saliency_robustness.tables import CONDITION_KEYS, MAP_KEYS, maps_from_table, over_folds

SCORES = {
    "hit": "pointing game",
    "energy": "energy pointing game",
    "iou": "top-k IoU",
    "graded_hit": "graded hit rate",
}
KEYS = [*MAP_KEYS, *CONDITION_KEYS]
# Per-image columns of ``localisation`` that the summary averages.
COLUMNS = ["hit", "energy", "iou", "dice", "mask_fraction", "graded_hit", "graded_hit_chance"]
# The skin-ultrasound study's graded hit rate: 3 for the lesion (level 1), one less per outer
# layer (levels 2, 3, 4), -1 for the background (config localisation.graded_hit_*).
GRADED_HIT_SCORES = (3.0, 2.0, 1.0, 0.0)
GRADED_HIT_BACKGROUND = -1.0


def level_scores(
    max_level: int,
    scores: Sequence[float] = GRADED_HIT_SCORES,
    background: float = GRADED_HIT_BACKGROUND,
) -> np.ndarray:
    """Graded-hit score of each mask level 0..``max_level`` (index = level): ``background``
    for level 0, ``scores[level - 1]`` for the others."""
    if max_level > len(scores):
        raise ValueError(
            f"A mask has level {max_level} but localisation.graded_hit_scores gives scores for "
            f"levels 1..{len(scores)} only; list one score per level up to {max_level}."
        )
    return np.array([background, *scores[:max_level]], dtype=np.float64)


def _levels(masks: np.ndarray) -> np.ndarray:
    """Masks as integer levels (boolean masks: 0/1); negative or fractional values refused."""
    masks = np.asarray(masks)
    if masks.dtype == bool:
        return masks.astype(np.uint8)
    if not np.issubdtype(masks.dtype, np.integer):
        if not np.array_equal(masks, np.round(masks)):
            raise ValueError("Mask levels must be whole numbers (0 background, 1 lesion, ...).")
        masks = masks.astype(np.int64)
    if masks.size and masks.min() < 0:
        raise ValueError("Mask levels must be >= 0 (0 background, 1 lesion, ...).")
    return masks


def localisation_scores(
    maps: np.ndarray,
    masks: np.ndarray,
    top_k_percent: float,
    graded_scores: Sequence[float] = GRADED_HIT_SCORES,
    graded_background: float = GRADED_HIT_BACKGROUND,
) -> dict[str, np.ndarray]:
    """Scores of maps (N, H, W) against masks (N, H, W) with at least one lesion pixel each:
    boolean, or integer levels (0 background, 1 lesion, 2 the layer around it, ...; every
    level >= 1 is inside the mask except for ``graded_hit``, see the module doc)."""
    levels = _levels(masks)
    if maps.shape != levels.shape:
        raise ValueError(f"Maps {maps.shape} and masks {levels.shape} differ in shape.")
    n = len(maps)
    flat_levels = levels.reshape(n, -1)
    flat_masks = flat_levels > 0
    if not flat_masks.any(axis=1).all():
        raise ValueError("Every mask needs at least one lesion pixel (select those images).")
    flat = normalise_maps(maps).reshape(n, -1)
    constant = flat.max(axis=1) - flat.min(axis=1) <= 1e-12
    hit = flat_masks[np.arange(n), flat.argmax(axis=1)].astype(float)
    hit[constant] = np.nan
    table = level_scores(int(flat_levels.max(initial=0)), graded_scores, graded_background)
    pixel_scores = table[flat_levels]
    peak = flat == flat.max(axis=1, keepdims=True)  # every pixel tied at the maximum
    graded_hit = (pixel_scores * peak).sum(axis=1) / peak.sum(axis=1)
    graded_hit[constant] = np.nan
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
        "graded_hit": graded_hit,
        "graded_hit_chance": pixel_scores.mean(axis=1),
    }


def localisation(
    saliency: pd.DataFrame,
    test_masks: np.ndarray,
    top_k_percent: float,
    has_mask: np.ndarray | None = None,
    graded_scores: Sequence[float] = GRADED_HIT_SCORES,
    graded_background: float = GRADED_HIT_BACKGROUND,
) -> pd.DataFrame:
    """Per saliency row (image, perturbation, severity, target) whose image has a non-empty
    mask (binary or levels, see ``localisation_scores``): the localisation scores (see module
    doc), with the row's keys and prediction."""
    test_masks = _levels(test_masks)
    index = saliency["image_index"].to_numpy()
    if len(index) and index.max() >= len(test_masks):
        raise ValueError(
            f"Saliency rows refer to test image {index.max()} but the dataset has "
            f"{len(test_masks)} masks; rerun the attribute rule for this dataset."
        )
    usable = (test_masks > 0).reshape(len(test_masks), -1).any(axis=1)
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
        localisation_scores(
            maps,
            test_masks[rows["image_index"].to_numpy()],
            top_k_percent,
            graded_scores,
            graded_background,
        )
        if len(rows)
        else {k: np.zeros(0) for k in COLUMNS}
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
    # older tables (before the graded hit rate) summarise without it
    columns = [c for c in COLUMNS if c in table]
    per_fold = table.groupby(KEYS, as_index=False).agg(
        **{c: (c, "mean") for c in columns}, n_images=("hit", "size")
    )
    keys = over_folds(KEYS)
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
