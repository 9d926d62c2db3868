"""Misclassification detection per perturbation family, beyond the confidence drop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from saliency_robustness.metrics import detection_by_family


def change_table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < 0.3
    drop = rng.normal(size=n) + 0.5 * wrong  # the baseline is informative, not perfect
    return pd.DataFrame(
        {
            "dataset": "breastmnist",
            "arch": "resnet18",
            "fold": 0,
            "method": "saliency",
            "perturbation": np.where(np.arange(n) % 2 == 0, "gaussian_noise", "motion_blur"),
            "wrong": wrong,
            "confidence_drop": drop,
            "ssim": np.where(wrong, 0.2, 0.8) + rng.normal(scale=0.01, size=n),  # separates
            "rmse": rng.random(n),  # noise
            "spearman": rng.random(n),
            "topk_iou": rng.random(n),
        }
    )


def test_a_separating_score_gains_beyond_the_baseline_and_noise_does_not():
    families = {"gaussian_noise": "noise", "motion_blur": "blur"}
    result = detection_by_family(change_table(), families).set_index(["family", "score"])
    assert set(result.index.get_level_values("family")) == {"noise", "blur", "all"}
    ssim = result.loc[("all", "1 - SSIM")]
    assert ssim["auroc"] == pytest.approx(1.0)
    assert 0.5 < ssim["auroc_cv_baseline"] < 0.9 and ssim["auroc_gain"] > 0.1
    assert abs(result.loc[("all", "RMSE"), "auroc_gain"]) < 0.1
    with pytest.raises(KeyError, match="family"):
        detection_by_family(change_table(), {"gaussian_noise": "noise"})


def test_too_few_errors_give_nan_not_an_error():
    table = change_table().assign(wrong=False)
    table.loc[0, "wrong"] = True
    result = detection_by_family(table, {"gaussian_noise": "n", "motion_blur": "b"})
    assert result["auroc_gain"].isna().all()
