"""Robustness scores of classifiers under perturbations, as in MedMNIST-C.

Di Salvo, Doerrich & Ledig (2024), "MedMNIST-C: Comprehensive benchmark and improved
classifier robustness by simulating realistic image corruptions" (arXiv:2406.17536), score
a model f on corruption c by its balanced error BE = 1 - balanced accuracy (robust to the
class imbalance of MedMNIST), and adapt ImageNet-C's corruption error (Hendrycks &
Dietterich 2019) to it:

- ``be``: BE averaged over the severities 1..5 of the perturbation;
- ``ce`` (normalised BE): sum_s BE^f_{s,c} / sum_s BE^base_{s,c}, the model's errors
  relative to a baseline architecture's on the same perturbation (ResNet-18 in the paper);
- ``rbe`` (relative BE): sum_s (BE^f_{s,c} - BE^f_clean) / sum_s (BE^base_{s,c} -
  BE^base_clean), the degradation caused by the perturbation relative to the baseline's
  degradation (ImageNet-C's "relative mCE" idea); NaN when the baseline does not degrade.

The summary averages each score over perturbations (``mbe``, ``mce``, ``mrbe``: the
mCE-style numbers). The baseline's scores are the mean over its folds, so every fold of
every model is compared with the same reference.

The scores above come from the per-fold evaluation metrics; their intervals
(``robustness_bootstrap``) come from the per-image predictions, where the balanced error can
be recomputed for every resample of the test images (``statistics.HierarchicalBootstrap``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from saliency_robustness.analysis.classification_summary import table_metrics
from saliency_robustness.analysis.statistics import HierarchicalBootstrap, interval, with_interval
from saliency_robustness.tables import MODEL_KEYS


def _overall_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Aggregate rows only (multi-label tables add per-label rows under ``label``)."""
    required = {"dataset", "arch", "fold", "perturbation", "severity", "balanced_acc"}
    missing = required - set(metrics.columns)
    if missing:
        raise ValueError(f"Evaluation metrics table lacks columns {sorted(missing)}.")
    if "label" in metrics.columns:
        metrics = metrics[metrics["label"] == "all"]
    return metrics


def balanced_errors(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, arch, fold, perturbation): clean BE, BE summed and averaged over the
    perturbed severities, and how many severities went into it."""
    table = _overall_rows(metrics).assign(be=lambda t: 1.0 - t["balanced_acc"])
    clean = (
        table[table["severity"] == 0]
        .groupby(MODEL_KEYS)["be"]
        .mean()  # clean rows repeat under every perturbation: all equal
        .rename("be_clean")
    )
    perturbed = table[table["severity"] > 0]
    if perturbed.empty:
        raise ValueError("The evaluation metrics have no perturbed rows (severity > 0).")
    per = (
        perturbed.groupby([*MODEL_KEYS, "perturbation"])["be"]
        .agg(be_sum="sum", be="mean", n_severities="count")
        .reset_index()
    )
    return per.join(clean, on=MODEL_KEYS)


def robustness_scores(metrics: pd.DataFrame, baseline_arch: str) -> pd.DataFrame:
    """Per (dataset, arch, fold, perturbation): be, be_clean, ce and rbe (see module doc)."""
    per = balanced_errors(metrics)
    if baseline_arch not in set(per["arch"]):
        raise ValueError(
            f"Baseline architecture '{baseline_arch}' has no evaluation metrics; "
            f"architectures present: {', '.join(sorted(set(per['arch'])))}."
        )
    base = (
        per[per["arch"] == baseline_arch]
        .assign(degradation=lambda t: t["be_sum"] - t["n_severities"] * t["be_clean"])
        .groupby(["dataset", "perturbation"])[["be_sum", "degradation"]]
        .mean()
        .rename(columns={"be_sum": "base_be_sum", "degradation": "base_degradation"})
    )
    out = per.join(base, on=["dataset", "perturbation"])
    degradation = out["be_sum"] - out["n_severities"] * out["be_clean"]
    out["ce"] = out["be_sum"] / out["base_be_sum"].replace(0.0, np.nan)
    out["rbe"] = degradation / out["base_degradation"].where(out["base_degradation"] > 0)
    out["baseline_arch"] = baseline_arch
    columns = [*MODEL_KEYS, "perturbation", "n_severities", "be_clean", "be", "ce", "rbe"]
    return out[[*columns, "baseline_arch"]].astype({"fold": "int64", "n_severities": "int64"})


def robustness_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """mCE-style summary per (dataset, arch, fold): the mean of be, ce and rbe over the
    perturbations, and the clean BE."""
    summary = (
        scores.groupby([*MODEL_KEYS, "baseline_arch"])
        .agg(
            be_clean=("be_clean", "first"),
            mbe=("be", "mean"),
            mce=("ce", "mean"),
            mrbe=("rbe", "mean"),
            n_perturbations=("perturbation", "nunique"),
        )
        .reset_index()
    )
    return summary


# --- intervals from the per-image predictions ----------------------------------------------

SCORE_NAMES = ("be_clean", "be", "ce", "rbe")
SUMMARY_NAMES = {"be_clean": "be_clean", "be": "mbe", "ce": "mce", "rbe": "mrbe"}
ALL_PERTURBATIONS = "all"  # perturbation of the over-folds rows that average over them


def _balanced_errors_resampled(
    predictions: pd.DataFrame, bootstrap: HierarchicalBootstrap
) -> dict[tuple, np.ndarray]:
    """BE per (dataset, arch, fold, perturbation, severity) as a (1 + B,) array: the point
    (unit weights) first, then one value per resample of the test images."""
    out = {}
    for key, rows in predictions.groupby([*MODEL_KEYS, "perturbation", "severity"], sort=True):
        weights = np.vstack(
            [np.ones((1, len(rows))), bootstrap.row_weights(rows["image_index"].to_numpy())]
        )
        out[key] = 1.0 - table_metrics(rows, weights, ("balanced_acc",))[:, 0]
    return out


def _nanmean_stack(arrays: list[np.ndarray]) -> np.ndarray:
    stacked = np.stack(arrays)
    finite = np.isfinite(stacked)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(finite, stacked, 0.0).sum(axis=0) / count, np.nan)


def _fold_weighted(
    bootstrap: HierarchicalBootstrap, by_fold: dict[int, np.ndarray]
) -> tuple[float, np.ndarray]:
    """Point (mean over folds of the fold values, entry 0) and (B,) resamples (entry 1..B
    of each fold, weighted by how often the fold is drawn; non-finite values left out)."""
    folds = sorted(by_fold)
    values = np.stack([by_fold[f] for f in folds], axis=1)  # (1 + B, F')
    counts = bootstrap.fold_counts[:, np.searchsorted(bootstrap.folds, folds)].astype(float)
    point = float(_nanmean_stack(list(values[0])))
    resampled = values[1:]
    finite = np.isfinite(resampled)
    total = np.where(finite, counts, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, resampled * counts, 0.0).sum(axis=1) / total
    return point, np.where(total > 0, mean, np.nan)


def robustness_bootstrap(
    predictions: pd.DataFrame,
    baseline_arch: str,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Intervals of the robustness scores from per-image predictions of every model.

    The balanced errors of every (arch, fold, perturbation, severity) are recomputed on each
    resample of the hierarchical bootstrap's test images (one draw for all models, so every
    perturbation and severity of an image moves together, and the baseline's errors in a
    ratio are those of the same resample). Returns three tables:

    * per (dataset, arch, fold, perturbation): ``<score>_ci_low``/``_ci_high`` of
      ``be_clean``, ``be``, ``ce``, ``rbe`` with the fold's model fixed (images resampled;
      the baseline reference stays the mean over all its folds);
    * per (dataset, arch, fold): the same for ``be_clean``, ``mbe``, ``mce``, ``mrbe``;
    * over folds, per (dataset, arch, baseline_arch, perturbation): ``<score>_mean`` (mean
      over folds), ``<score>_std`` (SD over folds) and the hierarchical interval (folds
      drawn with replacement, the baseline reference recomputed on the drawn folds), with
      perturbation ``all`` holding the means over perturbations (mBE, mCE, relative mCE
      under the names ``be``, ``ce``, ``rbe``); ``n_folds``, ``n_images``.
    """
    bootstrap = HierarchicalBootstrap.for_table(predictions, n_resamples, seed)
    errors = _balanced_errors_resampled(predictions, bootstrap)
    clean: dict[tuple, list[np.ndarray]] = {}
    perturbed: dict[tuple, list[np.ndarray]] = {}
    for (dataset, arch, fold, perturbation, severity), values in errors.items():
        if severity == 0:
            clean.setdefault((dataset, arch, fold), []).append(values)
        else:
            perturbed.setdefault((dataset, arch, fold, perturbation), []).append(values)
    if not perturbed:
        raise ValueError("The predictions have no perturbed rows (severity > 0).")
    clean_be = {key: np.mean(values, axis=0) for key, values in clean.items()}
    if baseline_arch not in {key[1] for key in perturbed}:
        raise ValueError(f"Baseline architecture '{baseline_arch}' has no predictions.")
    # per model and perturbation: (1 + B,) sums, means and degradations of BE
    per = {}
    for key, values in perturbed.items():
        be_clean = clean_be.get(key[:3], np.full(bootstrap.n_resamples + 1, np.nan))
        be_sum = np.sum(values, axis=0)
        per[key] = {
            "be_clean": be_clean,
            "be": be_sum / len(values),
            "be_sum": be_sum,
            "degradation": be_sum - len(values) * be_clean,
        }
    # the baseline's reference per (dataset, perturbation): mean over all its folds (points,
    # per-fold intervals: entry 0 and the image resamples) and over the drawn folds
    # (hierarchical resamples)
    baseline_folds: dict[tuple, list] = {}
    for dataset, arch, fold, perturbation in per:
        if arch == baseline_arch:
            baseline_folds.setdefault((dataset, perturbation), []).append(fold)
    reference, drawn = {}, {}
    for (dataset, perturbation), folds in baseline_folds.items():
        reference[(dataset, perturbation)], drawn[(dataset, perturbation)] = {}, {}
        for name in ("be_sum", "degradation"):
            by_fold = {f: per[(dataset, baseline_arch, f, perturbation)][name] for f in folds}
            mean = _nanmean_stack(list(by_fold.values()))
            _, resampled = _fold_weighted(bootstrap, by_fold)
            reference[(dataset, perturbation)][name] = mean
            drawn[(dataset, perturbation)][name] = np.r_[mean[0], resampled]

    def ratios(scores: dict, ref: dict) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            ce = np.where(ref["be_sum"] != 0, scores["be_sum"] / ref["be_sum"], np.nan)
            degradation = ref["degradation"]
            rbe = np.where(degradation > 0, scores["degradation"] / degradation, np.nan)
        return {"be_clean": scores["be_clean"], "be": scores["be"], "ce": ce, "rbe": rbe}

    fixed, hierarchical = {}, {}  # (dataset, arch, fold, perturbation) -> {score: (1 + B,)}
    for key, scores in per.items():
        dataset, _, _, perturbation = key
        if (dataset, perturbation) not in reference:
            continue
        fixed[key] = ratios(scores, reference[(dataset, perturbation)])
        hierarchical[key] = ratios(scores, drawn[(dataset, perturbation)])
    for table in (fixed, hierarchical):  # means over perturbations, per model
        for model in {key[:3] for key in table}:
            models = [v for k, v in table.items() if k[:3] == model]
            table[(*model, ALL_PERTURBATIONS)] = {
                name: _nanmean_stack([m[name] for m in models]) for name in SCORE_NAMES
            }

    def fold_interval(values: np.ndarray) -> tuple[float, float]:
        return interval(values[1:], confidence)

    score_rows, summary_rows = [], []
    for (dataset, arch, fold, perturbation), scores in sorted(fixed.items()):
        keys = {"dataset": dataset, "arch": arch, "fold": fold}
        if perturbation == ALL_PERTURBATIONS:
            row = dict(keys)
            for name, column in SUMMARY_NAMES.items():
                row[f"{column}_ci_low"], row[f"{column}_ci_high"] = fold_interval(scores[name])
            summary_rows.append(row)
        else:
            row = {**keys, "perturbation": perturbation}
            for name in SCORE_NAMES:
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = fold_interval(scores[name])
            score_rows.append(row)
    n_images = predictions.groupby(MODEL_KEYS)["image_index"].nunique()
    n_images = n_images.groupby(level=["dataset", "arch"]).mean()
    over_rows = []
    groups = sorted({(k[0], k[1], k[3]) for k in hierarchical})
    for dataset, arch, perturbation in groups:
        folds = {
            k[2]: v for k, v in hierarchical.items() if k == (dataset, arch, k[2], perturbation)
        }
        row = {
            "dataset": dataset,
            "arch": arch,
            "baseline_arch": baseline_arch,
            "perturbation": perturbation,
        }
        for name in SCORE_NAMES:
            by_fold = {fold: scores[name] for fold, scores in folds.items()}
            point, resampled = _fold_weighted(bootstrap, by_fold)
            values = np.array([v[0] for v in by_fold.values()])
            values = values[np.isfinite(values)]
            low_high = with_interval(name, point, resampled, confidence)
            row[f"{name}_mean"] = low_high[name]
            row[f"{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else np.nan
            row[f"{name}_ci_low"] = low_high[f"{name}_ci_low"]
            row[f"{name}_ci_high"] = low_high[f"{name}_ci_high"]
        row["n_folds"] = len(folds)
        row["n_images"] = float(n_images.loc[(dataset, arch)])
        over_rows.append(row)
    return (
        pd.DataFrame(score_rows).astype({"fold": "int64"}),
        pd.DataFrame(summary_rows).astype({"fold": "int64"}),
        pd.DataFrame(over_rows).astype({"n_folds": "int32"}),
    )


def attach_intervals(table: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """``table`` (robustness_scores or robustness_summary) with the matching interval
    columns of ``robustness_bootstrap``, each widened to contain the table's value (computed
    from the evaluation metrics; equal to the predictions' value up to rounding)."""
    keys = [c for c in intervals.columns if not c.endswith(("_ci_low", "_ci_high"))]
    out = table.merge(intervals, on=keys, how="left", validate="one_to_one")
    for low in [c for c in intervals.columns if c.endswith("_ci_low")]:
        name, high = low.removesuffix("_ci_low"), low.replace("_ci_low", "_ci_high")
        finite = out[name].notna() & out[low].notna()
        out.loc[finite, low] = np.minimum(out.loc[finite, low], out.loc[finite, name])
        out.loc[finite, high] = np.maximum(out.loc[finite, high], out.loc[finite, name])
    return out
