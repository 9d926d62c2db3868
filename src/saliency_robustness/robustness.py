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
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KEYS = ["dataset", "arch", "fold"]


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
        .groupby(KEYS)["be"]
        .mean()  # clean rows repeat under every perturbation: all equal
        .rename("be_clean")
    )
    perturbed = table[table["severity"] > 0]
    if perturbed.empty:
        raise ValueError("The evaluation metrics have no perturbed rows (severity > 0).")
    per = (
        perturbed.groupby([*KEYS, "perturbation"])["be"]
        .agg(be_sum="sum", be="mean", n_severities="count")
        .reset_index()
    )
    return per.join(clean, on=KEYS)


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
    columns = [*KEYS, "perturbation", "n_severities", "be_clean", "be", "ce", "rbe"]
    return out[[*columns, "baseline_arch"]].astype({"fold": "int64", "n_severities": "int64"})


def robustness_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """mCE-style summary per (dataset, arch, fold): the mean of be, ce and rbe over the
    perturbations, and the clean BE."""
    summary = (
        scores.groupby([*KEYS, "baseline_arch"])
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
