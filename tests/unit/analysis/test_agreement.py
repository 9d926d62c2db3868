"""Agreement between models: known answers on hand-made maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from saliency_robustness.analysis.agreement import agreement, pairwise_agreement
from saliency_robustness.plots import agreement_matrix


def saliency_table(maps: np.ndarray, arch: str, fold: int, targets=None, severity: int = 0):
    n = len(maps)
    return pd.DataFrame(
        {
            "dataset": "breastmnist",
            "arch": arch,
            "fold": fold,
            "method": "saliency",
            "perturbation": "gaussian_noise",
            "severity": severity,
            "image_index": np.arange(n),
            "target": np.zeros(n, int) if targets is None else targets,
            "height": maps.shape[1],
            "width": maps.shape[2],
            "saliency": list(maps.reshape(n, -1).astype(np.float32)),
        }
    )


def test_identical_maps_agree_fully_and_disjoint_maps_not_at_all():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 10, 10))
    same = pairwise_agreement(saliency_table(maps, "a", 0), saliency_table(maps, "a", 1), 10)
    assert np.allclose(same["topk_iou"], 1.0) and np.allclose(same["spearman"], 1.0)
    left, right = np.zeros((1, 10, 10)), np.zeros((1, 10, 10))
    left[0, :, :5], right[0, :, 5:] = 1.0, 1.0  # top 10% lies in disjoint halves
    left[0, 0, :5] = right[0, 0, 5:] = 2.0
    disjoint = pairwise_agreement(saliency_table(left, "a", 0), saliency_table(right, "b", 0), 10)
    assert disjoint["topk_iou"].tolist() == [0.0]
    assert disjoint["spearman"].iloc[0] < 0


def test_agreement_pairs_kinds_targets_and_matrix():
    rng = np.random.default_rng(1)
    base = rng.random((6, 8, 8))
    tables = [
        saliency_table(base, "resnet18", 0),
        saliency_table(base, "resnet18", 1, targets=np.array([0, 0, 0, 1, 1, 1])),
        saliency_table(rng.random((6, 8, 8)), "resnet50", 0),
    ]
    result = agreement(pd.concat(tables), top_k_percent=20)
    assert set(result["pair"]) == {"folds", "architectures"}
    folds = result[(result["pair"] == "folds") & (result["metric"] == "topk_iou")]
    assert folds["mean"].tolist() == [1.0] and folds["same_target"].tolist() == [0.5]
    assert (result["n_images"] == 6).all()
    only_same = agreement(pd.concat(tables), top_k_percent=20, same_target_only=True)
    assert (only_same.loc[only_same["pair"] == "folds", "n_images"] == 3).all()
    matrix = agreement_matrix(result, "spearman")
    assert matrix.shape == (3, 3)
    assert matrix.loc["resnet18/fold0", "resnet18/fold1"] == pytest.approx(1.0)
    assert np.allclose(matrix.to_numpy(), matrix.to_numpy().T)


def test_no_shared_images_is_a_clear_error():
    maps = np.random.default_rng(2).random((2, 4, 4))
    with pytest.raises(ValueError, match="share no"):
        pairwise_agreement(
            saliency_table(maps, "a", 0, severity=0), saliency_table(maps, "a", 1, severity=3), 10
        )


def test_agreement_intervals_contain_the_mean_and_narrow_with_more_images():
    def tables(n: int, seed: int = 2) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        base = rng.random((n, 8, 8))
        noisy = base + rng.random((n, 8, 8))
        frames = []
        for severity in (0, 5):
            frames += [
                saliency_table(base, "resnet18", 0, severity=severity),
                saliency_table(noisy, "resnet18", 1, severity=severity),
            ]
        return pd.concat(frames)

    small = agreement(tables(20), top_k_percent=20, n_resamples=200, seed=0)
    assert (small["mean_ci_low"] <= small["mean"]).all()
    assert (small["mean"] <= small["mean_ci_high"]).all()
    large = agreement(tables(400), top_k_percent=20, n_resamples=200, seed=0)
    width = {
        name: (t["mean_ci_high"] - t["mean_ci_low"]).to_numpy()
        for name, t in (("small", small), ("large", large))
    }
    assert (width["large"] < width["small"] / 2).all()
    # known answer: identical maps agree fully in every resample (zero-width interval)
    rng = np.random.default_rng(3)
    maps = rng.random((5, 8, 8))
    same = agreement(
        pd.concat([saliency_table(maps, "a", 0), saliency_table(maps, "a", 1)]), 20, n_resamples=50
    )
    np.testing.assert_allclose(same[["mean", "mean_ci_low", "mean_ci_high"]], 1.0)
