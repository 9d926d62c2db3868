"""MedMNIST-C robustness scores: formulas on a hand-made table, and on real evaluation
metrics of a ResNet-18 trained on real BreastMNIST."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from saliency_robustness.analysis.robustness import (
    attach_intervals,
    balanced_errors,
    robustness_bootstrap,
    robustness_scores,
    robustness_summary,
)
from saliency_robustness.evaluation import evaluate_model, metric_rows, prediction_rows
from saliency_robustness.perturbations.apply import perturb_all_severities


def _rows(arch: str, fold: int, clean: float, per: dict[str, list[float]]) -> list[dict]:
    rows = []
    for name, accs in per.items():
        rows.append({"perturbation": name, "severity": 0, "balanced_acc": clean})
        rows += [
            {"perturbation": name, "severity": s, "balanced_acc": a}
            for s, a in enumerate(accs, start=1)
        ]
    return [{"dataset": "breastmnist", "arch": arch, "fold": fold, **r} for r in rows]


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame(
        _rows("base", 0, 0.9, {"noise": [0.8, 0.6], "blur": [0.9, 0.9]})
        + _rows("base", 1, 0.8, {"noise": [0.7, 0.5], "blur": [0.8, 0.8]})
        + _rows("other", 0, 0.95, {"noise": [0.9, 0.85], "blur": [0.6, 0.5]})
    )


def test_scores_follow_the_medmnist_c_definitions(table):
    scores = robustness_scores(table, "base").set_index(["arch", "fold", "perturbation"])
    other = scores.loc[("other", 0, "noise")]
    assert other["be"] == pytest.approx((0.1 + 0.15) / 2)
    assert other["be_clean"] == pytest.approx(0.05)
    # Baseline over its folds: sum BE on noise = mean(0.2+0.4, 0.3+0.5) = 0.7; degradation
    # = mean(0.6 - 2*0.1, 0.8 - 2*0.2) = 0.4.
    assert other["ce"] == pytest.approx(0.25 / 0.7)
    assert other["rbe"] == pytest.approx((0.25 - 2 * 0.05) / 0.4)
    # Blur does not degrade the baseline at all: relative BE is undefined, not infinite.
    assert np.isnan(scores.loc[("other", 0, "blur"), "rbe"])
    assert scores.loc[("base", 0, "noise"), "ce"] == pytest.approx(0.6 / 0.7)
    summary = robustness_summary(scores.reset_index()).set_index(["arch", "fold"])
    assert summary.loc[("other", 0), "mbe"] == pytest.approx((0.125 + 0.45) / 2)
    assert summary.loc[("other", 0), "mce"] == pytest.approx((0.25 / 0.7 + 0.9 / 0.3) / 2)
    assert summary.loc[("other", 0), "n_perturbations"] == 2


def test_multi_label_tables_use_the_aggregate_rows(table):
    labelled = pd.concat([table.assign(label="all"), table.assign(label="mass", balanced_acc=0.1)])
    pd.testing.assert_frame_equal(balanced_errors(labelled), balanced_errors(table))


def test_bad_inputs(table):
    with pytest.raises(ValueError, match="Baseline architecture 'vgg'"):
        robustness_scores(table, "vgg")
    with pytest.raises(ValueError, match="lacks columns"):
        robustness_scores(table.drop(columns="balanced_acc"), "base")
    with pytest.raises(ValueError, match="no perturbed rows"):
        robustness_scores(table[table["severity"] == 0], "base")


def test_on_real_evaluation_metrics(model, breast):
    images, labels = breast["test_images"], breast["test_labels"]
    perturbed = {
        name: ([1, 5], perturb_all_severities(images, name, [1, 5], seed=0))
        for name in ("gaussian_noise", "contrast")
    }
    _, metrics = evaluate_model(model, images, labels, perturbed, 256, torch.device("cpu"))
    metrics = metrics.assign(dataset="breastmnist", arch="resnet18", fold=0)
    scores = robustness_scores(metrics, "resnet18")
    assert set(scores["perturbation"]) == {"gaussian_noise", "contrast"}
    np.testing.assert_allclose(scores["ce"], 1.0)  # its own baseline, one fold
    for row in scores.itertuples():
        rows = metrics[(metrics["perturbation"] == row.perturbation) & (metrics["severity"] > 0)]
        assert row.be == pytest.approx(1 - rows["balanced_acc"].mean())
        assert 0 <= row.be <= 1 and 0 <= row.be_clean <= 1


# --- intervals from per-image predictions ----------------------------------------------------


def predictions_and_metrics(n_images: int, seed: int = 0, perfect: bool = False):
    """Per-image predictions (and their metrics tables) of two architectures x three folds
    on one binary test set: clean, and two perturbations at severities 1 and 2."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n_images)
    predictions, metrics = [], []
    for arch, skill in (("base", 1.5), ("other", 1.0)):
        for fold in range(3):
            for name, severity in [("noise", 0), ("noise", 1), ("noise", 2), ("blur", 0),
                                   ("blur", 1), ("blur", 2)]:  # fmt: skip
                logits = rng.normal(size=(n_images, 2))
                logits[np.arange(n_images), labels] += 100 if perfect else skill / (1 + severity)
                probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
                probabilities /= probabilities.sum(axis=1, keepdims=True)
                keys = {"dataset": "d", "arch": arch, "fold": fold}
                predictions.append(
                    prediction_rows(labels, probabilities, name, severity).assign(**keys)
                )
                metrics += [
                    {**keys, "perturbation": name, "severity": severity, **row}
                    for row in metric_rows(labels, probabilities)
                ]
    return pd.concat(predictions, ignore_index=True), pd.DataFrame(metrics)


def test_bootstrap_points_equal_the_scores_and_contain_them():
    predictions, metrics = predictions_and_metrics(80)
    scores = robustness_scores(metrics, "base")
    summary = robustness_summary(scores)
    per_fold, per_summary, over = robustness_bootstrap(predictions, "base", 200, seed=0)
    scored = attach_intervals(scores, per_fold)
    summarised = attach_intervals(summary, per_summary)
    assert len(scored) == len(scores) and len(summarised) == len(summary)
    for table, names in ((scored, ["be_clean", "be", "ce", "rbe"]),
                         (summarised, ["be_clean", "mbe", "mce", "mrbe"])):  # fmt: skip
        for name in names:
            rows = table.dropna(subset=[name])
            assert len(rows), name
            assert (rows[f"{name}_ci_low"] <= rows[name]).all(), name
            assert (rows[name] <= rows[f"{name}_ci_high"]).all(), name
    over = over.set_index(["arch", "perturbation"])
    means = scores.groupby(["arch", "perturbation"])[["be", "ce", "rbe"]].mean()
    for (arch, perturbation), row in means.iterrows():
        for name in ("be", "ce", "rbe"):
            assert over.loc[(arch, perturbation), f"{name}_mean"] == pytest.approx(row[name])
    folds_mean = summary.groupby("arch")[["mbe", "mce"]].mean()
    assert over.loc[("other", "all"), "be_mean"] == pytest.approx(folds_mean.loc["other", "mbe"])
    assert over.loc[("other", "all"), "ce_mean"] == pytest.approx(folds_mean.loc["other", "mce"])
    for name in ("be", "ce", "rbe", "be_clean"):
        assert (over[f"{name}_ci_low"] <= over[f"{name}_mean"]).all(), name
        assert (over[f"{name}_mean"] <= over[f"{name}_ci_high"]).all(), name
    # Known answer: over folds, the baseline's normalised BE is 1 in every resample (its
    # reference is its own mean over the drawn folds).
    base = over.loc["base"]
    np.testing.assert_allclose(base[["ce_mean", "ce_ci_low", "ce_ci_high"]], 1.0)
    assert (over["n_folds"] == 3).all() and (over["n_images"] == 80).all()


def test_bootstrap_intervals_narrow_with_more_images_and_vanish_without_errors():
    small = robustness_bootstrap(predictions_and_metrics(60)[0], "base", 200, seed=0)[2]
    large = robustness_bootstrap(predictions_and_metrics(600)[0], "base", 200, seed=0)[2]

    def width(table):
        return (table["be_ci_high"] - table["be_ci_low"]).to_numpy()

    assert (width(large) < width(small) / 1.5).all()
    perfect = predictions_and_metrics(30, perfect=True)[0]
    per_fold, _, over = robustness_bootstrap(perfect, "base", 50, seed=0)
    assert (per_fold[["be_ci_low", "be_ci_high"]] == 0).all().all()
    assert (over[["be_mean", "be_ci_low", "be_ci_high"]] == 0).all().all()
    with pytest.raises(ValueError, match="Baseline architecture 'vgg'"):
        robustness_bootstrap(perfect, "vgg", 10)
