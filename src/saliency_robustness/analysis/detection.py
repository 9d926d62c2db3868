"""Does a saliency score tell that the model is about to be wrong? Misclassification detection.

Targets (``target`` column):

* ``wrong``: every perturbed row; positive = the perturbed prediction is wrong.
* ``induced``: only rows whose clean image was classified right; positive = wrong when
  perturbed, so the error was caused by the perturbation. (On a binary task the confidence
  drop is close to tautological for this target: a prediction flips exactly when the target
  class's probability crosses 0.5.)

Detectors (larger = more likely wrong; the direction is fixed beforehand, never fitted):

* ``change`` scores need the clean image's map: 1 - SSIM, RMSE, 1 - Spearman,
  1 - top-k IoU, map collapsed. Their baseline is the prediction's confidence drop.
* ``deployable`` scores use the perturbed image alone, as a deployed model must: map entropy
  (diffuse map), 1 - map Gini, map constant. Their baseline is 1 - the maximum softmax
  probability (Hendrycks & Gimpel 2017).

Every AUROC, baseline and gain of one comparison is computed on the same rows: the rows of
the group where every detector is finite (since metrics defines every change score on every
row, that is all rows; ``n_excluded`` says otherwise). ``auroc_gain`` is the cross-validated
AUROC of a logistic model on [baseline, score] minus that on [baseline] alone, fitted within
each fold's rows; intervals and p-values come from the hierarchical bootstrap of
``statistics`` applied to those out-of-fold predictions (the fits are not repeated per
resample). Paired tests use the bootstrap, not DeLong's test, because every image
contributes many rows (perturbations x severities).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from saliency_robustness.analysis.saliency_change import CHANGE_SCORE_COLUMNS
from saliency_robustness.analysis.statistics import (
    HierarchicalBootstrap,
    add_q_values,
    bootstrap_p_value,
    weighted_auroc,
    with_interval,
)
from saliency_robustness.tables import MAP_KEYS, over_folds


@dataclass(frozen=True)
class Detector:
    column: str
    sign: float  # +1: larger value = more likely wrong
    kind: str  # "change" (needs the clean map) or "deployable" (perturbed image alone)


DETECTORS = {
    **{
        name: Detector(column, sign, "change")
        for name, (column, sign) in CHANGE_SCORE_COLUMNS.items()
    },
    "map collapsed": Detector("collapsed", 1.0, "change"),
    "map entropy": Detector("map_entropy", 1.0, "deployable"),
    "1 - map Gini": Detector("map_gini", -1.0, "deployable"),
    "map constant": Detector("is_constant", 1.0, "deployable"),
}
BASELINES = {
    "change": ("confidence drop", Detector("confidence_drop", 1.0, "change")),
    "deployable": ("1 - MSP", Detector("msp", -1.0, "deployable")),
}
TARGETS = ("wrong", "induced")
KEYS = over_folds(MAP_KEYS)


def detector_values(table: pd.DataFrame, detector: Detector) -> np.ndarray:
    return detector.sign * table[detector.column].to_numpy(dtype=float)


def target_rows(change: pd.DataFrame, target: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows a target is scored on and its positives (module doc)."""
    if target == "wrong":
        rows = change
    elif target == "induced":
        rows = change[~change["clean_wrong"].to_numpy(dtype=bool)]
    else:
        raise ValueError(f"Unknown detection target {target!r}; use one of {TARGETS}.")
    return rows, rows["wrong"].to_numpy(dtype=bool)


def _all_detectors() -> dict[str, Detector]:
    baselines = {f"{name} (baseline)": detector for name, detector in BASELINES.values()}
    return {**DETECTORS, **baselines}


def _finite_rows(rows: pd.DataFrame) -> np.ndarray:
    """Rows where every detector and baseline is finite (the shared row set)."""
    values = np.column_stack([detector_values(rows, d) for d in _all_detectors().values()])
    return np.isfinite(values).all(axis=1)


def misclassification_detection(change: pd.DataFrame) -> pd.DataFrame:
    """Per fold: AUROC of each detector and baseline, per (dataset, arch, fold, method,
    perturbation, target), plus perturbation ``all`` pooling every perturbation and severity.
    All detectors of one row group use the same rows (``n_rows``; ``n_wrong`` and
    ``n_right`` are the positives and negatives among them)."""
    rows = []
    pooled = change.assign(perturbation="all")
    keys = [*MAP_KEYS, "perturbation"]
    for key, group in pd.concat([change, pooled]).groupby(keys, sort=True):
        for target in TARGETS:
            scored, positive = target_rows(group, target)
            keep = _finite_rows(scored)
            scored, positive = scored[keep], positive[keep]
            for score, detector in _all_detectors().items():
                values = detector_values(scored, detector)
                auroc = weighted_auroc(positive, values, np.ones((1, len(values))))[0]
                rows.append(
                    {
                        **dict(zip(keys, key, strict=True)),
                        "target": target,
                        "score": score,
                        "kind": detector.kind,
                        "auroc": float(auroc),
                        "n_wrong": int(positive.sum()),
                        "n_right": int((~positive).sum()),
                        "n_rows": int(len(scored)),
                        "n_excluded": int((~keep).sum()),
                    }
                )
    return pd.DataFrame(rows)


def fit_logistic(features: np.ndarray, positive: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Coefficients [intercept, weights...] of an L2-penalised logistic regression, the model
    of ``sklearn.linear_model.LogisticRegression()`` (C = 1, intercept not penalised), by
    Newton's method.

    Written here because the detection table fits thousands of these one- and two-feature
    models and sklearn's per-fit overhead dominated (measured: ~70 % of the detection
    step's time); a test checks the predictions against sklearn's.
    """
    x = np.column_stack([np.ones(len(features)), features])
    y = positive.astype(float)
    penalty = np.full(x.shape[1], 1.0 / c)
    penalty[0] = 0.0
    beta = np.zeros(x.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        gradient = x.T @ (p - y) + penalty * beta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty)
        step = np.linalg.solve(hessian + 1e-12 * np.eye(len(beta)), gradient)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def _out_of_fold_probability(
    positive: np.ndarray, features: np.ndarray, n_splits: int, seed: int
) -> np.ndarray | None:
    """Out-of-fold P(wrong) of a logistic regression on standardised features; None where
    there are too few positives or negatives for two splits.

    Why this baseline adjustment: the baseline already predicts errors; what a map score adds
    is the AUROC of [baseline, score] minus that of [baseline] alone, both from the same
    monotone model fitted on the same splits. Cross-validation keeps the extra feature from
    buying AUROC by overfitting; a logistic model matches the one-score AUROCs' monotone use
    of each score.
    """
    minority = int(min(positive.sum(), (~positive).sum())) if len(positive) else 0
    if minority < 2:
        return None
    # lazy: sklearn adds 0.25 s to the summarise job, which uses this module but never fits
    from sklearn.model_selection import StratifiedKFold

    splits = StratifiedKFold(min(n_splits, minority), shuffle=True, random_state=seed)
    probability = np.empty(len(positive))
    # cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression())), written out
    for train, test in splits.split(features, positive):
        mean, scale = features[train].mean(axis=0), features[train].std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        beta = fit_logistic((features[train] - mean) / scale, positive[train])
        logit = beta[0] + ((features[test] - mean) / scale) @ beta[1:]
        probability[test] = 1.0 / (1.0 + np.exp(-logit))
    return probability


def _fold_detection_scores(
    rows: pd.DataFrame, positive: np.ndarray, kind: str, n_splits: int, seed: int
) -> dict[str, np.ndarray]:
    """Per-row scores of one fold: each detector of ``kind``, its baseline, and the
    out-of-fold predictions of the baseline-only and baseline+detector logistic models
    (NaN where too few errors)."""
    baseline = detector_values(rows, BASELINES[kind][1])
    scores = {"baseline": baseline}
    only = _out_of_fold_probability(positive, baseline[:, None], n_splits, seed)
    nan = np.full(len(rows), np.nan)
    scores["cv_baseline"] = nan if only is None else only
    for name, detector in DETECTORS.items():
        if detector.kind != kind:
            continue
        values = detector_values(rows, detector)
        scores[name] = values
        both = _out_of_fold_probability(
            positive, np.column_stack([baseline, values]), n_splits, seed
        )
        scores[f"cv {name}"] = nan if both is None else both
    return scores


def _auroc_matrix(
    positive: np.ndarray, scores: dict[str, np.ndarray], weights: np.ndarray
) -> np.ndarray:
    """(R, len(scores)) AUROCs of every score under each weight row; NaN for a score that is
    NaN (a fold whose logistic model could not be fitted)."""
    columns = []
    for values in scores.values():
        if np.isnan(values).all():
            columns.append(np.full(len(weights), np.nan))
        else:
            columns.append(weighted_auroc(positive, values, weights))
    return np.column_stack(columns)


def detection_by_family(
    change: pd.DataFrame,
    families: dict[str, str],
    n_splits: int = 5,
    seed: int = 0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Across folds, with intervals and tests: how well each detector finds errors per
    (dataset, arch, method, perturbation family, target, score), alone and beyond its
    baseline (module doc). ``families`` maps each perturbation to its family; family ``all``
    pools every one.

    Returns (detection, method_comparison). ``detection`` columns: ``auroc``,
    ``auroc_baseline``, ``auroc_difference`` (score minus baseline, paired) with p and q,
    ``auroc_cv_baseline``, ``auroc_cv_combined``, ``auroc_gain`` with p and q, each with
    ``_ci_low``/``_ci_high``; ``n_rows``/``n_wrong``/``n_right`` per fold (mean),
    ``n_folds``, ``n_images``. q-values are Benjamini-Hochberg within each (dataset, target,
    kind) for each test. ``method_comparison``: per (dataset, arch, family, target, kind)
    every pair of methods' best detector (by AUROC), their paired AUROC difference with
    interval, p and q (BH within each (dataset, target, kind)).
    """
    missing = sorted(set(change["perturbation"]) - set(families))
    if missing:
        raise KeyError(f"No perturbation family for {missing}; pass families for every one.")
    table = change.assign(family=change["perturbation"].map(families))
    table = pd.concat([table, table.assign(family="all")], ignore_index=True)
    bootstrap = HierarchicalBootstrap.for_table(change, n_resamples, seed)
    rows, resampled_by_row = [], []
    for key, group in table.groupby([*KEYS, "family"], sort=True):
        for target in TARGETS:
            scored, positive = target_rows(group, target)
            keep = _finite_rows(scored)
            scored, positive = scored[keep].reset_index(drop=True), positive[keep]
            if scored.empty:
                continue
            folds = {
                fold: np.flatnonzero(scored["fold"].to_numpy() == fold)
                for fold in np.unique(scored["fold"])
            }
            for kind in BASELINES:
                per_fold = {
                    fold: _fold_detection_scores(
                        scored.iloc[index], positive[index], kind, n_splits, seed
                    )
                    for fold, index in folds.items()
                }

                def compute(fold_rows, weights, per_fold=per_fold, positive=positive, folds=folds):
                    fold = fold_rows["fold"].iloc[0]
                    return _auroc_matrix(positive[folds[fold]], per_fold[fold], weights)

                point, resampled = bootstrap.statistic(scored, compute)
                names = list(next(iter(per_fold.values())))
                column = {name: i for i, name in enumerate(names)}
                detectors = [n for n in names if n in DETECTORS]
                for name in detectors:
                    b, d = column["baseline"], column[name]
                    cb, cd = column["cv_baseline"], column[f"cv {name}"]
                    row = {
                        **dict(zip([*KEYS, "family"], key, strict=True)),
                        "target": target,
                        "kind": kind,
                        "score": name,
                        "baseline": BASELINES[kind][0],
                        **with_interval("auroc", point[d], resampled[:, d], confidence),
                        **with_interval("auroc_baseline", point[b], resampled[:, b], confidence),
                        **with_interval(
                            "auroc_difference",
                            point[d] - point[b],
                            resampled[:, d] - resampled[:, b],
                            confidence,
                        ),
                        "p_difference": bootstrap_p_value(resampled[:, d] - resampled[:, b]),
                        **with_interval(
                            "auroc_cv_baseline", point[cb], resampled[:, cb], confidence
                        ),
                        **with_interval(
                            "auroc_cv_combined", point[cd], resampled[:, cd], confidence
                        ),
                        **with_interval(
                            "auroc_gain",
                            point[cd] - point[cb],
                            resampled[:, cd] - resampled[:, cb],
                            confidence,
                        ),
                        "p_gain": bootstrap_p_value(resampled[:, cd] - resampled[:, cb]),
                        "n_rows": len(scored) / len(folds),
                        "n_wrong": positive.sum() / len(folds),
                        "n_right": (~positive).sum() / len(folds),
                        "n_folds": len(folds),
                        "n_images": int(scored["image_index"].nunique()),
                        "n_excluded": int((~keep).sum()),
                    }
                    rows.append(row)
                    resampled_by_row.append(resampled[:, d])
    detection = pd.DataFrame(rows)
    if detection.empty:
        return detection, pd.DataFrame()
    family = ["dataset", "target", "kind"]
    detection["q_difference"] = add_q_values(detection, "p_difference", family)
    detection["q_gain"] = add_q_values(detection, "p_gain", family)
    comparison = _method_comparison(detection, resampled_by_row, confidence)
    return detection, comparison


def _method_comparison(
    detection: pd.DataFrame, resampled: list[np.ndarray], confidence: float
) -> pd.DataFrame:
    """Every pair of methods' best detector per (dataset, arch, family, target, kind), as a
    paired bootstrap difference of AUROCs (the same resamples for both methods)."""
    rows = []
    group_keys = ["dataset", "arch", "family", "target", "kind"]
    for key, group in detection.groupby(group_keys, sort=True):
        best = (
            group.dropna(subset=["auroc"]).sort_values("auroc", ascending=False)
            .drop_duplicates("method").sort_values("method")
        )  # fmt: skip
        records = list(best.itertuples())
        for i, a in enumerate(records):
            for b in records[i + 1 :]:
                difference = resampled[a.Index] - resampled[b.Index]
                rows.append(
                    {
                        **dict(zip(group_keys, key, strict=True)),
                        "method_a": a.method,
                        "score_a": a.score,
                        "auroc_a": a.auroc,
                        "method_b": b.method,
                        "score_b": b.score,
                        "auroc_b": b.auroc,
                        **with_interval(
                            "auroc_difference", a.auroc - b.auroc, difference, confidence
                        ),
                        "p_value": bootstrap_p_value(difference),
                    }
                )
    comparison = pd.DataFrame(rows)
    if not comparison.empty:
        comparison["q_value"] = add_q_values(comparison, "p_value", ["dataset", "target", "kind"])
    return comparison
