"""Uncertainty for the summary tables: hierarchical bootstrap, paired tests, FDR, trends, η².

Design (one engine for every interval, so every comparison is paired):

* **Hierarchical bootstrap over folds and test images.** The folds are the k models of one
  cross-validation; the test images are the official test split, the *same* images for every
  fold. A resample draws k folds with replacement and, once, the test images with
  replacement; every row of a drawn image (all its perturbations, severities and targets, in
  every fold) moves with it. Drawing the images once (not per fold) keeps the correlation of
  one image across the folds' models, as a crossed ("pigeonhole") bootstrap does. A statistic
  is computed per fold on the weighted rows and averaged over the drawn folds, which mirrors
  the point estimate: the mean over folds of the per-fold statistic.
* **Intervals** are 95 % percentile intervals of the resampled statistic.
* **Paired tests** compare two statistics on the same resamples: the p-value is the two-sided
  percentile-bootstrap p of their difference, ``2 * min(P(d <= 0), P(d >= 0))`` with the
  (1 + count) / (1 + B) correction. Used instead of DeLong's test because DeLong assumes
  independent rows, and here one image contributes every perturbation and severity.
* **Multiple testing**: Benjamini-Hochberg q-values (``statsmodels.stats.multitest``).
* **η²** from a linear model's ANOVA (``statsmodels``).

Light module: numpy, pandas, scipy and statsmodels; no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

CONFIDENCE = 0.95


@dataclass(frozen=True)
class HierarchicalBootstrap:
    """Seeded resamples of folds and test images (see the module doc).

    ``fold_counts[b, f]``: how often fold ``folds[f]`` is drawn in resample ``b``;
    ``image_weights[b, i]``: how often image ``images[i]`` is drawn.
    """

    folds: np.ndarray
    images: np.ndarray
    fold_counts: np.ndarray
    image_weights: np.ndarray

    @classmethod
    def draw(
        cls, folds: Sequence[int], images: Sequence[int], n_resamples: int, seed: int
    ) -> HierarchicalBootstrap:
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1, got {n_resamples}.")
        folds = np.unique(np.asarray(folds))
        images = np.unique(np.asarray(images))
        if not len(folds) or not len(images):
            raise ValueError("The bootstrap needs at least one fold and one image.")
        rng = np.random.default_rng(seed)
        fold_draws = rng.integers(0, len(folds), size=(n_resamples, len(folds)))
        image_draws = rng.integers(0, len(images), size=(n_resamples, len(images)))
        return cls(
            folds=folds,
            images=images,
            fold_counts=_counts(fold_draws, len(folds)),
            image_weights=_counts(image_draws, len(images)).astype(np.float64),
        )

    @classmethod
    def for_table(cls, table: pd.DataFrame, n_resamples: int, seed: int) -> HierarchicalBootstrap:
        return cls.draw(table["fold"], table["image_index"], n_resamples, seed)

    @property
    def n_resamples(self) -> int:
        return len(self.fold_counts)

    def row_weights(self, image_index: np.ndarray) -> np.ndarray:
        """(B, n) weights of rows with these image indices."""
        position = np.searchsorted(self.images, np.asarray(image_index))
        if len(position) and (
            position.max() >= len(self.images)
            or not np.array_equal(self.images[position], image_index)
        ):
            raise ValueError("Rows refer to images outside this bootstrap's image set.")
        return self.image_weights[:, position]

    def statistic(
        self,
        table: pd.DataFrame,
        compute: Callable[[pd.DataFrame, np.ndarray], np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Point estimate and (B, ...) resamples of a per-fold statistic averaged over folds.

        ``compute(rows, weights)`` gets one fold's rows and a (R, n) weight matrix and returns
        R values (or R x m); it is called once with all-ones weights (the point estimate) and
        once with the resampled weights. A fold without rows, or a statistic that is NaN in a
        resample (e.g. an AUROC with no error drawn), is left out of that resample's mean.
        """
        point_per_fold, resampled_per_fold = [], []
        for fold in self.folds:
            rows = table[table["fold"].to_numpy() == fold]
            if rows.empty:
                point_per_fold.append(None)
                resampled_per_fold.append(None)
                continue
            image_index = rows["image_index"].to_numpy()
            point_per_fold.append(np.asarray(compute(rows, np.ones((1, len(rows)))))[0])
            resampled_per_fold.append(np.asarray(compute(rows, self.row_weights(image_index))))
        present = [i for i, value in enumerate(point_per_fold) if value is not None]
        if not present:
            raise ValueError("No rows in any fold of this bootstrap.")
        points = np.stack([point_per_fold[i] for i in present]).astype(float)
        finite_points = np.isfinite(points)
        with np.errstate(invalid="ignore", divide="ignore"):
            point = np.where(finite_points, points, 0.0).sum(axis=0) / finite_points.sum(axis=0)
        resampled = np.stack([resampled_per_fold[i] for i in present], axis=1)  # (B, F', ...)
        counts = self.fold_counts[:, present].astype(np.float64)
        counts = counts.reshape(counts.shape + (1,) * (resampled.ndim - 2))
        counts = np.broadcast_to(counts, resampled.shape)
        finite = np.isfinite(resampled)
        total = np.where(finite, counts, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(finite, resampled * counts, 0.0).sum(axis=1) / total
        return point, np.where(total > 0, mean, np.nan)


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """Per-row counts of each value in 0..n-1."""
    offsets = np.arange(len(draws))[:, None] * n
    return np.bincount((draws + offsets).ravel(), minlength=len(draws) * n).reshape(len(draws), n)


def interval(resampled: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of finite resampled values (NaN if none)."""
    values = np.asarray(resampled, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_p_value(resampled_difference: np.ndarray) -> float:
    """Two-sided percentile-bootstrap p-value of a difference being zero."""
    values = np.asarray(resampled_difference, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan")
    below, above = (values <= 0).sum(), (values >= 0).sum()
    return float(min(1.0, 2 * (1 + min(below, above)) / (1 + len(values))))


def with_interval(
    name: str, point: float, resampled: np.ndarray, confidence: float = CONFIDENCE
) -> dict[str, float]:
    """``{name, name_ci_low, name_ci_high}``; the interval is widened to contain the point
    (a percentile interval of a skewed statistic can miss it by a hair)."""
    low, high = interval(resampled, confidence)
    point = float(point)
    if np.isfinite(point) and np.isfinite(low):
        low, high = min(low, point), max(high, point)
    return {name: point, f"{name}_ci_low": low, f"{name}_ci_high": high}


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per weight row: the weighted mean of the finite values."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    w = weights * finite
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, w @ np.where(finite, values, 0.0) / total, np.nan)


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney, ties count one half) per row of a (R, n) weight matrix.

    With integer weights it equals ``sklearn.metrics.roc_auc_score`` on the rows repeated by
    their weights; NaN where a weight row has no positive or no negative. Rows with a
    non-finite score must be removed by the caller (every score of a comparison uses the
    same rows).
    """
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    if not np.isfinite(scores).all():
        raise ValueError("weighted_auroc needs finite scores; select the rows first.")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = np.asarray(weights, dtype=float)[:, order]
    positive = labels[order]
    pos = np.add.reduceat(w * positive, starts, axis=1)
    neg = np.add.reduceat(w * ~positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    numerator = (pos * (below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def bh_q_values(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg q-values (statsmodels); NaN p-values stay NaN and do not count."""
    # lazy: statsmodels takes seconds to import and only q-values and trends use it
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = multipletests(p[finite], method="fdr_bh")[1]
    return q


def add_q_values(table: pd.DataFrame, p_column: str, family: Sequence[str]) -> pd.Series:
    """BH q-values of ``p_column`` computed separately within each family of tests (rows
    sharing the ``family`` columns)."""
    q = pd.Series(np.nan, index=table.index, dtype=float)
    if table.empty:
        return q
    for _, group in table.groupby(list(family), sort=False, dropna=False):
        q.loc[group.index] = bh_q_values(group[p_column].to_numpy())
    return q


def eta_squared(table: pd.DataFrame, response: str, factors: Sequence[str]) -> pd.DataFrame:
    """η² of each factor for ``response`` from a main-effects linear model (statsmodels OLS,
    type-II ANOVA): SS_factor / SS_total, with SS_total the response's total sum of squares.

    Factors with a single level are reported with η² = 0 and ``df = 0`` (they cannot explain
    variance in this study). One row per factor plus ``residual``.
    """
    # lazy: statsmodels takes seconds to import and only q-values and trends use it
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    data = table[[response, *factors]].dropna()
    if len(data) < 3:
        raise ValueError(f"η² of {response} needs at least 3 finite rows, got {len(data)}.")
    varying = [f for f in factors if data[f].nunique() > 1]
    total = float(((data[response] - data[response].mean()) ** 2).sum())
    rows = [
        {"factor": f, "eta_squared": 0.0, "df": 0, "F": np.nan, "p_value": np.nan}
        for f in factors
        if f not in varying
    ]
    columns = {f: f"x{i}" for i, f in enumerate(varying)}
    renamed = data.rename(columns={**columns, response: "y"})
    formula = "y ~ " + (" + ".join(f"C({c})" for c in columns.values()) if varying else "1")
    model = smf.ols(formula, data=renamed).fit()
    if varying:
        anova = sm.stats.anova_lm(model, typ=2)
        for factor, column in columns.items():
            line = anova.loc[f"C({column})"]
            rows.append(
                {
                    "factor": factor,
                    "eta_squared": float(line["sum_sq"]) / total if total > 0 else np.nan,
                    "df": int(line["df"]),
                    "F": float(line["F"]),
                    "p_value": float(line["PR(>F)"]),
                }
            )
    residual = float(model.ssr)
    rows.append(
        {
            "factor": "residual",
            "eta_squared": residual / total if total > 0 else np.nan,
            "df": int(model.df_resid),
            "F": np.nan,
            "p_value": np.nan,
        }
    )
    out = pd.DataFrame(rows)
    out["n_rows"] = len(data)
    return out


def per_image_trend(severity: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Spearman correlation of value with severity per image (rows of (n_images, n_levels)
    arrays); 0 where the value does not vary across severities (no trend)."""
    # lazy: scipy.stats takes 0.5 s to import and most jobs using this module never call it
    from scipy.stats import rankdata

    severity = np.asarray(severity, dtype=float)
    values = np.asarray(values, dtype=float)
    rs = rankdata(severity, axis=1)
    rv = rankdata(values, axis=1)
    rs -= rs.mean(axis=1, keepdims=True)
    rv -= rv.mean(axis=1, keepdims=True)
    denominator = np.sqrt((rs**2).sum(axis=1) * (rv**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        trend = np.where(denominator > 0, (rs * rv).sum(axis=1) / denominator, 0.0)
    return np.where(np.isfinite(values).all(axis=1), trend, np.nan)
