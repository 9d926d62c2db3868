"""MedMNIST-C robustness scores: formulas on a hand-made table, and on real evaluation
metrics of a ResNet-18 trained on real BreastMNIST."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from saliency_robustness.evaluation import evaluate_model
from saliency_robustness.perturbations import perturb_all_severities
from saliency_robustness.robustness import balanced_errors, robustness_scores, robustness_summary


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
