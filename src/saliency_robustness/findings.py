"""The headline answers in words, generated from the summary tables (never written by hand).

One row per finding: the sentence (``statement``), the number it is about (``value``) with its
interval (``ci_low``, ``ci_high``) and, where it is a test, its Benjamini-Hochberg ``q_value``;
the keys say which model, method, perturbation family and target it concerns and ``source``
which table it comes from. Every configured method gets its detection findings, also where
its AUROC is undefined (too few errors), so a missing answer is visible.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from saliency_robustness.tables import MAP_KEYS, over_folds

TARGET_WORDS = {
    "wrong": "wrong predictions",
    "induced": "errors the perturbation induced (images right when clean)",
}
COLUMNS = [
    "dataset", "topic", "arch", "method", "family", "target", "kind", "score", "statement",
    "value", "ci_low", "ci_high", "q_value", "source",
]  # fmt: skip


def _number(value: float, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "undefined"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _with_interval(row, name: str, signed: bool = False) -> str:
    value = row[name]
    if not math.isfinite(value):
        return "undefined"
    stem = name.removesuffix("_mean")  # summary tables: <value>_mean with <value>_ci_low
    low, high = row[f"{stem}_ci_low"], row[f"{stem}_ci_high"]
    return f"{_number(value, signed)} [{_number(low, signed)}, {_number(high, signed)}]"


def _q(value: float) -> str:
    if not math.isfinite(value):
        return "q undefined"
    return "q < 0.001" if value < 0.001 else f"q = {value:.3f}"


def detection_findings(detection: pd.DataFrame, methods: list[str]) -> list[dict]:
    """Per (arch, method, family, target, kind): the best detector by AUROC, against its
    baseline (paired difference) and beyond it (cross-validated gain)."""
    rows = []
    for (dataset, arch, method, family, target, kind), group in detection.groupby(
        ["dataset", "arch", "method", "family", "target", "kind"], sort=True
    ):
        ranked = group.assign(_order=group["auroc"].fillna(-1.0))
        best = ranked.sort_values("_order", ascending=False).iloc[0]
        where = "every perturbation" if family == "all" else f"{family} perturbations"
        n_scores = len(group)
        statement = (
            f"{arch} / {method}: {best['score']} detects {TARGET_WORDS[target]} under {where} "
            f"with AUROC {_with_interval(best, 'auroc')} (best of {n_scores} "
            f"{kind} scores); {best['baseline']} alone "
            f"{_with_interval(best, 'auroc_baseline')}; difference "
            f"{_with_interval(best, 'auroc_difference', True)}, {_q(best['q_difference'])}; "
            f"gain of [{best['baseline']}, score] over {best['baseline']} "
            f"{_with_interval(best, 'auroc_gain', True)}, {_q(best['q_gain'])} "
            f"(n = {best['n_rows']:.0f} rows per fold, {best['n_wrong']:.0f} positive, "
            f"{best['n_folds']} folds)."
        )
        if (
            target == "induced"
            and best["baseline"] == "confidence drop"
            and best["auroc_baseline"] >= 0.95
        ):
            statement += (
                " The confidence drop nearly decides induced errors by construction (a "
                "prediction flips when its probability crosses the decision threshold)."
            )
        rows.append(
            {
                "dataset": dataset,
                "topic": f"detection ({kind})",
                "arch": arch,
                "method": method,
                "family": family,
                "target": target,
                "kind": kind,
                "score": best["score"],
                "statement": statement,
                "value": best["auroc"],
                "ci_low": best["auroc_ci_low"],
                "ci_high": best["auroc_ci_high"],
                "q_value": best["q_difference"],
                "source": "detection_by_family",
            }
        )
    missing = sorted(set(methods) - set(detection["method"])) if len(detection) else methods
    for method in missing:
        rows.append(
            {
                "topic": "detection (change)",
                "method": method,
                "statement": f"{method}: no detection result (no perturbed rows were scored).",
                "source": "detection_by_family",
            }
        )
    return rows


def change_findings(summary: pd.DataFrame) -> list[dict]:
    """Map change (SSIM to the clean map) at each perturbation's highest severity, for
    preserved and flipped predictions, with the flipped share."""
    rows = []
    highest = summary.groupby("perturbation")["severity"].transform("max")
    top = summary[summary["severity"] == highest]
    for (dataset, arch, method, perturbation), group in top.groupby(
        [*over_folds(MAP_KEYS), "perturbation"], sort=True
    ):
        by = group.set_index("prediction")
        parts = [
            f"{_with_interval(by.loc[subset], 'ssim_mean')} where the prediction {words}"
            for subset, words in (("preserved", "is preserved"), ("flipped", "flipped"))
            if subset in by.index
        ]
        every = by.loc["all"]
        severity = int(every["severity"])
        statement = (
            f"{arch} / {method}, {perturbation} at severity {severity}: SSIM to the clean map "
            f"{_with_interval(every, 'ssim_mean')} over all images"
            + (f" ({'; '.join(parts)})" if parts else "")
            + f"; flipped share {_with_interval(every, 'flipped_mean')}; collapsed maps "
            f"{_number(every['collapsed_mean'])}."
        )
        rows.append(
            {
                "dataset": dataset,
                "topic": "map change",
                "arch": arch,
                "method": method,
                "family": perturbation,
                "score": "SSIM",
                "statement": statement,
                "value": every["ssim_mean"],
                "ci_low": every["ssim_ci_low"],
                "ci_high": every["ssim_ci_high"],
                "source": "saliency_change",
            }
        )
    return rows


def trend_findings(trends: pd.DataFrame, alpha: float) -> list[dict]:
    """Per (arch, method, score): for how many perturbations map change grows with severity."""
    rows = []
    if trends.empty:
        return rows
    for (dataset, arch, method, score), group in trends.groupby(
        ["dataset", "arch", "method", "score"], sort=True
    ):
        rising = group[(group["q_value"] < alpha) & (group["trend"] > 0)]
        statement = (
            f"{arch} / {method}: {score} rises monotonically with severity (per-image "
            f"Spearman trend, q < {alpha:g}) for {len(rising)} of {len(group)} "
            f"perturbations; mean trend {_number(group['trend'].mean())} "
            f"(range {_number(group['trend'].min())} to {_number(group['trend'].max())})."
        )
        rows.append(
            {
                "dataset": dataset,
                "topic": "severity trend",
                "arch": arch,
                "method": method,
                "score": score,
                "statement": statement,
                "value": float(len(rising)),
                "source": "severity_trends",
            }
        )
    return rows


def variance_findings(decomposition: pd.DataFrame) -> list[dict]:
    rows = []
    for (dataset, score), group in decomposition.groupby(["dataset", "score"], sort=True):
        shares = ", ".join(
            f"{row.factor} {row.eta_squared:.3f}" + (" (one level)" if row.df == 0 else "")
            for row in group.itertuples()
        )
        rows.append(
            {
                "dataset": dataset,
                "topic": "what drives map change",
                "score": score,
                "statement": f"η² of {score} (main-effects ANOVA): {shares}.",
                "value": float(group.loc[group["factor"] == "method", "eta_squared"].sum()),
                "source": "variance_decomposition",
            }
        )
    return rows


def method_findings(comparison: pd.DataFrame, alpha: float) -> list[dict]:
    rows = []
    for row in comparison.itertuples():
        significant = math.isfinite(row.q_value) and row.q_value < alpha
        verdict = "differ" if significant else "do not differ"
        rows.append(
            {
                "dataset": row.dataset,
                "topic": "method vs method",
                "arch": row.arch,
                "method": f"{row.method_a} vs {row.method_b}",
                "family": row.family,
                "target": row.target,
                "kind": row.kind,
                "statement": (
                    f"{row.arch}, {row.family}, {TARGET_WORDS[row.target]} ({row.kind}): "
                    f"{row.method_a} ({row.score_a}, AUROC {_number(row.auroc_a)}) and "
                    f"{row.method_b} ({row.score_b}, {_number(row.auroc_b)}) {verdict} at "
                    f"q < {alpha:g}: difference {_number(row.auroc_difference, True)} "
                    f"[{_number(row.auroc_difference_ci_low, True)}, "
                    f"{_number(row.auroc_difference_ci_high, True)}], {_q(row.q_value)}."
                ),
                "value": row.auroc_difference,
                "ci_low": row.auroc_difference_ci_low,
                "ci_high": row.auroc_difference_ci_high,
                "q_value": row.q_value,
                "source": "method_comparison",
            }
        )
    return rows


def findings(
    detection: pd.DataFrame,
    method_comparison: pd.DataFrame,
    saliency_change: pd.DataFrame,
    severity_trends: pd.DataFrame,
    variance_decomposition: pd.DataFrame,
    methods: list[str],
    confidence: float = 0.95,
) -> pd.DataFrame:
    """All findings of one dataset (module doc); tests at level 1 - confidence."""
    alpha = 1 - confidence
    rows = (
        detection_findings(detection, methods)
        + method_findings(method_comparison, alpha)
        + change_findings(saliency_change)
        + trend_findings(severity_trends, alpha)
        + variance_findings(variance_decomposition)
    )
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def findings_page(table: pd.DataFrame, confidence: float = 0.95) -> str:
    """A small self-contained HTML page of the findings, grouped by topic."""
    dataset = ", ".join(sorted(set(table["dataset"].dropna())))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Findings: {html.escape(dataset)}</title></head><body>",
        f"<h1>Findings: {html.escape(dataset)}</h1>",
        f"<p>Numbers in brackets are {confidence:.0%} hierarchical-bootstrap intervals "
        "(folds, then test images); q-values are Benjamini-Hochberg within each family of "
        "tests. Generated from the summary tables by the findings rule.</p>",
    ]
    for topic, group in table.groupby("topic", sort=False):
        parts.append(f"<h2>{html.escape(str(topic))}</h2><ul>")
        parts += [f"<li>{html.escape(str(s))}</li>" for s in group["statement"]]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
