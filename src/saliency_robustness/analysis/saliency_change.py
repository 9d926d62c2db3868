"""How saliency maps and predictions change under perturbation.

Every map is compared after the same normalisation: absolute value, then scaled to
[0, 1] by its maximum (a constant map stays constant and is flagged, never divided by
zero). Per image and severity: RMSE, SSIM, Spearman rank correlation and top-k%
intersection-over-union against the clean map, joined with whether the perturbed
prediction is wrong, was already wrong on the clean image, or flipped.

Constant maps are results, not missing data (a Grad-CAM map that collapses to zero under
contrast loss is the map changing completely). Every score is defined on every row:

* exactly one of the two maps constant (``collapsed``: the perturbed map is constant and the
  clean one is not; or the reverse): RMSE, SSIM and top-k IoU keep the values their
  formulas give (RMSE is then the other map's RMS magnitude: all its mass appeared or
  vanished; the tie-aware top-k mask of a constant map is uniform, so the IoU is the chance
  overlap k / (2N - k)); Spearman, undefined against a constant ranking, is set to 0 (no
  rank association). Replacing RMSE and SSIM by fixed "maximal change" values was tried
  and discarded: it ties every collapsed row and throws away how much map was lost
  (default study, fold 1, Grad-CAM, contrast: AUROC of 1 - SSIM 0.911 with the formula's
  values, 0.834 with SSIM fixed at 0).
* both constant: no spatial information in either, so no change: RMSE 0, SSIM 1,
  Spearman 1, top-k IoU 1.

Top-k% masks are tie-aware (``top_k_weights``): pixels above the k-th largest value count
fully, pixels equal to it share the remaining mass, so a mask never depends on pixel order.

Scores of the perturbed image alone (no clean reference, as in deployment): the maximum
softmax probability ``msp`` (Hendrycks & Gimpel 2017; for a multi-label target, the
probability of the predicted state of that label), the map's normalised entropy
``map_entropy`` (1 for a constant map) and its Gini coefficient ``map_gini`` (0 for a
constant map).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from saliency_robustness.analysis.map_similarity import (
    BOTH_CONSTANT,
    ONE_CONSTANT,
    constant_maps,
    map_entropy,
    map_gini,
    normalise_maps,
    rmse,
    spearman,
    ssim,
    top_k_iou,
)
from saliency_robustness.analysis.statistics import (
    HierarchicalBootstrap,
    add_q_values,
    bootstrap_p_value,
    eta_squared,
    per_image_trend,
    weighted_mean,
    with_interval,
)
from saliency_robustness.tables import CONDITION_KEYS, MAP_KEYS, maps_from_table, over_folds

CHANGE_COLUMNS = ("rmse", "ssim", "spearman", "topk_iou")


def max_softmax_probability(table: pd.DataFrame, multi_label: bool) -> np.ndarray:
    """Confidence of each row's prediction: the largest class probability, or for a
    multi-label target the probability of the predicted state (present or absent)."""
    if multi_label:
        p = table["target_probability"].to_numpy(dtype=float)
        return np.maximum(p, 1 - p)
    return np.array([np.max(p) for p in table["probabilities"]], dtype=float)


def _change_scores(
    clean_maps: np.ndarray,
    maps: np.ndarray,
    clean_constant: np.ndarray,
    constant: np.ndarray,
    top_k_percent: float,
) -> dict[str, np.ndarray]:
    """The four change scores, defined on every pair (module doc)."""
    scores = {
        "rmse": rmse(clean_maps, maps),
        "ssim": ssim(clean_maps, maps),
        "spearman": spearman(clean_maps, maps),
        "topk_iou": top_k_iou(clean_maps, maps, top_k_percent),
    }
    one = clean_constant != constant
    both = clean_constant & constant
    for column, value in ONE_CONSTANT.items():
        scores[column] = np.where(one, value, scores[column])
    for column, value in BOTH_CONSTANT.items():
        scores[column] = np.where(both, value, scores[column])
    return scores


def saliency_change(
    saliency: pd.DataFrame, top_k_percent: float, multi_label: bool = False
) -> pd.DataFrame:
    """Per-image change of map and prediction, clean (severity 0) vs each severity.

    Clean and perturbed rows are matched on (perturbation, image_index, target), so a
    multi-label table with several targets per image compares each target's maps. There
    ``label``/``predicted`` are the target label's true and predicted presence, so ``wrong``,
    ``clean_wrong``, ``induced`` and ``flipped`` are per target label, and the confidence
    drop is that label's sigmoid probability drop.

    ``induced``: right on the clean image, wrong on the perturbed one (the perturbation
    caused the error); ``clean_wrong`` rows were wrong before any perturbation.
    """
    keys = [*MAP_KEYS, "perturbation"]
    join = ["perturbation", "image_index", "target"]
    clean = saliency[saliency["severity"] == 0].set_index(join)
    perturbed = saliency[saliency["severity"] > 0].reset_index(drop=True)
    if perturbed.empty:
        raise ValueError("The saliency table holds no perturbed images (severity > 0).")
    if not clean.index.is_unique:
        raise ValueError(
            "The saliency table has several clean rows for one (perturbation, image_index, "
            "target); it mixes runs. Rerun the attribute rule for this model and method."
        )
    missing = ~perturbed.set_index(join).index.isin(clean.index)
    if missing.any():
        first = perturbed.loc[missing, join].iloc[0].tolist()
        raise ValueError(
            f"{int(missing.sum())} perturbed rows have no clean row (first: perturbation, "
            f"image_index, target = {first}); rerun the attribute rule."
        )
    reference = clean.loc[list(zip(*(perturbed[key] for key in join), strict=True))]
    clean_maps = normalise_maps(maps_from_table(reference))
    maps = normalise_maps(maps_from_table(perturbed))
    # from the maps themselves, so a hand-edited or older table cannot disagree with them
    clean_constant = constant_maps(clean_maps)
    constant = constant_maps(maps)
    label = perturbed["label"].to_numpy()
    predicted = perturbed["predicted"].to_numpy()
    clean_predicted = reference["predicted"].to_numpy()
    clean_probability = reference["target_probability"].to_numpy()
    wrong = predicted != label
    clean_wrong = clean_predicted != label
    return pd.DataFrame(
        {
            **{key: perturbed[key] for key in keys},
            "severity": perturbed["severity"],
            "image_index": perturbed["image_index"],
            "label": perturbed["label"],
            "target": perturbed["target"],
            "clean_predicted": clean_predicted,
            "predicted": perturbed["predicted"],
            "wrong": wrong,
            "clean_wrong": clean_wrong,
            "induced": wrong & ~clean_wrong,
            "flipped": predicted != clean_predicted,
            "clean_target_probability": clean_probability,
            "target_probability": perturbed["target_probability"],
            "confidence_drop": clean_probability - perturbed["target_probability"].to_numpy(),
            "msp": max_softmax_probability(perturbed, multi_label),
            **_change_scores(clean_maps, maps, clean_constant, constant, top_k_percent),
            "clean_is_constant": clean_constant,
            "is_constant": constant,
            "collapsed": constant & ~clean_constant,
            "map_entropy": map_entropy(maps),
            "map_gini": map_gini(maps),
        }
    )


SUMMARY_KEYS = [*over_folds(MAP_KEYS), *CONDITION_KEYS]

SUMMARY_VALUES = [
    "rmse", "ssim", "spearman", "topk_iou", "wrong", "induced", "flipped", "collapsed",
    "confidence_drop", "map_entropy", "map_gini",
]  # fmt: skip

PREDICTION_SUBSETS = {"all": None, "preserved": False, "flipped": True}


def summarise_change(
    change: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """Mean per fold, then mean (``<value>_mean``) and standard deviation over folds
    (``<value>_std``) with a hierarchical-bootstrap interval (``<value>_ci_low``,
    ``<value>_ci_high``; statistics.HierarchicalBootstrap), per (dataset, arch, method,
    perturbation, severity, prediction).

    ``prediction`` splits the images as FASS does: ``preserved`` (same prediction as on the
    clean image), ``flipped``, or ``all``; ``flipped_share`` (on the ``all`` rows, the mean of
    ``flipped``) says how many flipped. ``n_rows`` counts the rows per fold (mean).
    """
    values = [v for v in SUMMARY_VALUES if v in change.columns]
    change = change.assign(**{v: change[v].astype(float) for v in values})
    bootstrap = HierarchicalBootstrap.for_table(change, n_resamples, seed)
    rows = []
    for subset, flipped in PREDICTION_SUBSETS.items():
        table = change if flipped is None else change[change["flipped"] == flipped]
        for key, group in table.groupby(SUMMARY_KEYS, sort=True):
            row = {**dict(zip(SUMMARY_KEYS, key, strict=True)), "prediction": subset}
            point, resampled = bootstrap.statistic(
                group, lambda rows, w: _column_means(rows, values, w)
            )
            per_fold = group.groupby("fold")[values].mean()
            for i, value in enumerate(values):
                interval = with_interval(value, point[i], resampled[:, i], confidence)
                row[f"{value}_mean"] = interval[value]
                row[f"{value}_std"] = float(per_fold[value].std(ddof=1))
                row[f"{value}_ci_low"] = interval[f"{value}_ci_low"]
                row[f"{value}_ci_high"] = interval[f"{value}_ci_high"]
            row["n_folds"] = int(group["fold"].nunique())
            row["n_rows"] = float(len(group) / row["n_folds"])
            rows.append(row)
    summary = pd.DataFrame(rows)
    share = summary.loc[summary["prediction"] == "all"].set_index(SUMMARY_KEYS)["flipped_mean"]
    summary["flipped_share"] = summary.set_index(SUMMARY_KEYS).index.map(share).to_numpy()
    return summary


def _column_means(rows: pd.DataFrame, values: list[str], weights: np.ndarray) -> np.ndarray:
    """(R, len(values)) weighted means of the columns."""
    return np.column_stack(
        [weighted_mean(rows[value].to_numpy(dtype=float), weights) for value in values]
    )


# Change scores in "larger = more change" form, for trends and variance decomposition.
CHANGE_SCORE_COLUMNS = {
    "1 - SSIM": ("ssim", -1.0),
    "RMSE": ("rmse", 1.0),
    "1 - Spearman": ("spearman", -1.0),
    "1 - top-k IoU": ("topk_iou", -1.0),
}


def severity_trends(
    change: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """Monotone trend of map change over severity, per (dataset, arch, method, perturbation,
    score): the Spearman correlation of the change score with severity, computed per image
    (and target) over its severities, averaged over images and folds (``trend``; +1: change
    grows with every severity step for every image). Interval and two-sided p from the
    hierarchical bootstrap, Benjamini-Hochberg q within each dataset. A per-image statistic
    keeps the test valid although every image contributes every severity.
    """
    keys = [*over_folds(MAP_KEYS), "perturbation"]
    image = ["fold", "image_index", "target"]
    bootstrap = HierarchicalBootstrap.for_table(change, n_resamples, seed)
    rows = []
    for key, group in change.groupby(keys, sort=True):
        levels = np.sort(group["severity"].unique())
        if len(levels) < 2:
            continue  # one severity: no trend to test
        for score, (column, sign) in CHANGE_SCORE_COLUMNS.items():
            wide = group.pivot_table(
                index=image, columns="severity", values=column, aggfunc="mean"
            ).reindex(columns=levels)
            complete = wide.dropna()
            if complete.empty:
                continue
            trend = per_image_trend(
                np.broadcast_to(levels, complete.shape), sign * complete.to_numpy()
            )
            per_image = complete.index.to_frame(index=False).assign(trend=trend)
            point, resampled = bootstrap.statistic(
                per_image,
                lambda rows, w: weighted_mean(rows["trend"].to_numpy(), w)[:, None],
            )
            rows.append(
                {
                    **dict(zip(keys, key, strict=True)),
                    "score": score,
                    **with_interval("trend", point[0], resampled[:, 0], confidence),
                    "p_value": bootstrap_p_value(resampled[:, 0]),
                    "n_images": int(len(per_image) / per_image["fold"].nunique()),
                    "n_folds": int(per_image["fold"].nunique()),
                    "n_severities": int(len(levels)),
                }
            )
    trends = pd.DataFrame(rows)
    if not trends.empty:
        trends["q_value"] = add_q_values(trends, "p_value", ["dataset"])
    return trends


VARIANCE_FACTORS = ["method", "arch", "perturbation", "severity"]


def variance_decomposition(change: pd.DataFrame) -> pd.DataFrame:
    """η² of method, architecture, perturbation and severity for each change score, per
    dataset (main-effects linear model, statistics.eta_squared). A factor with one level in
    the study gets η² 0 and df 0."""
    rows = []
    for dataset, group in change.groupby("dataset", sort=True):
        data = group[VARIANCE_FACTORS].astype(str)
        for score, (column, sign) in CHANGE_SCORE_COLUMNS.items():
            data = data.assign(value=sign * group[column].to_numpy(dtype=float))
            table = eta_squared(data, "value", VARIANCE_FACTORS)
            rows.append(table.assign(dataset=dataset, score=score))
    if not rows:
        return pd.DataFrame()
    out = pd.concat(rows, ignore_index=True)
    return out[["dataset", "score", "factor", "eta_squared", "df", "F", "p_value", "n_rows"]]
