"""Map comparison metrics, per-image change tables, summaries and detection AUROC."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from saliency_robustness.attribution import saliency_schema
from saliency_robustness.metrics import (
    CHANGE_SCORES,
    misclassification_detection,
    normalise_maps,
    rmse,
    saliency_change,
    spearman,
    ssim,
    summarise_change,
    top_k_iou,
    top_k_mask,
)

H = W = 28


def random_maps(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, H, W))


# --- pairwise metrics -------------------------------------------------------------------------


def test_identical_maps_are_perfectly_similar():
    maps = normalise_maps(random_maps(3))
    np.testing.assert_allclose(ssim(maps, maps), 1.0)
    np.testing.assert_allclose(rmse(maps, maps), 0.0)
    np.testing.assert_allclose(spearman(maps, maps), 1.0)
    np.testing.assert_allclose(top_k_iou(maps, maps, 10), 1.0)


def test_reversed_ranking_gives_spearman_minus_one():
    a = np.arange(H * W, dtype=float).reshape(1, H, W)
    np.testing.assert_allclose(spearman(a, -a), -1.0)
    np.testing.assert_allclose(spearman(a, 2 * a + 5), 1.0)  # rank-based: monotone maps agree


def test_rmse_on_known_values():
    a = np.zeros((2, H, W))
    b = np.zeros((2, H, W))
    b[0] = 0.5
    b[1, :14] = 1.0  # half the pixels differ by 1
    np.testing.assert_allclose(rmse(a, b), [0.5, math.sqrt(0.5)])


def test_disjoint_top_k_regions_have_iou_zero():
    k = round(H * W * 10 / 100)  # 78 pixels at 10 %
    a = np.zeros((1, H * W))
    b = np.zeros((1, H * W))
    a[0, :k] = 1.0
    b[0, -k:] = 1.0
    a, b = a.reshape(1, H, W), b.reshape(1, H, W)
    assert top_k_mask(a, 10).sum() == k
    np.testing.assert_array_equal(top_k_iou(a, b, 10), [0.0])


def test_top_k_iou_of_half_overlapping_regions():
    k = 78
    a = np.zeros((1, H * W))
    b = np.zeros((1, H * W))
    a[0, :k] = np.linspace(2, 1, k)
    b[0, k // 2 : k // 2 + k] = np.linspace(2, 1, k)
    iou = top_k_iou(a.reshape(1, H, W), b.reshape(1, H, W), 10)
    np.testing.assert_allclose(iou, [(k / 2) / (k + k / 2)])


def test_top_k_mask_selects_the_highest_pixels():
    maps = random_maps(2, seed=3)
    mask = top_k_mask(maps, 5)
    k = round(H * W * 0.05)
    for m, mk in zip(maps, mask, strict=True):
        assert mk.sum() == k
        assert m[mk].min() >= m[~mk].max()


def test_normalise_maps_scales_magnitude_by_the_peak():
    maps = np.zeros((3, H, W))
    maps[1, 0, 0] = -4.0
    maps[1, 5, 5] = 2.0
    maps[2] = 7.0
    out = normalise_maps(maps)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], 0.0)  # all-zero map stays zero, no NaN
    assert out[1, 0, 0] == 1.0 and out[1, 5, 5] == 0.5
    np.testing.assert_array_equal(out[2], 1.0)
    assert out.min() >= 0 and out.max() <= 1


def test_spearman_is_nan_for_a_constant_map():
    a = random_maps(2)
    b = a.copy()
    b[0] = 0.25
    result = spearman(a, b)
    assert math.isnan(result[0])
    assert result[1] == pytest.approx(1.0)
    assert math.isnan(spearman(np.zeros((1, H, W)), np.zeros((1, H, W)))[0])


def test_ssim_drops_for_an_unrelated_map():
    a = normalise_maps(random_maps(1, seed=1))
    b = normalise_maps(random_maps(1, seed=2))
    assert ssim(a, b)[0] < 0.2
    assert ssim(np.zeros((1, H, W)), np.zeros((1, H, W)))[0] == pytest.approx(1.0)


# --- saliency_change --------------------------------------------------------------------------


def _saliency_rows(perturbation, severity, labels, targets, predicted, probs, maps):
    n = len(labels)
    return pd.DataFrame(
        {
            "dataset": "breastmnist",
            "arch": "resnet18",
            "fold": 0,
            "method": "saliency",
            "perturbation": perturbation,
            "severity": severity,
            "image_index": np.arange(n),
            "label": labels,
            "target": targets,
            "predicted": predicted,
            "target_probability": probs[np.arange(n), targets],
            "probabilities": list(probs.astype(np.float32)),
            "height": H,
            "width": W,
            "signed": False,
            "is_constant": [bool(np.ptp(m) == 0) for m in maps],
            "saliency": list(maps.reshape(n, -1).astype(np.float32)),
        }
    )


@pytest.fixture
def hand_table() -> pd.DataFrame:
    """Four images, clean and one noise severity, cast through the saliency schema."""
    labels = np.array([0, 1, 1, 0])
    clean_probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    targets = clean_probs.argmax(axis=1)  # [0, 1, 0, 0]: image 2 is wrong on clean
    # perturbed: image 0 stays right, image 1 flips to wrong, image 2 flips to right,
    # image 3 stays right but loses confidence
    noisy_probs = np.array([[0.8, 0.2], [0.7, 0.3], [0.3, 0.7], [0.55, 0.45]])
    clean_maps = random_maps(4, seed=0)
    noisy_maps = clean_maps.copy()
    noisy_maps[1] = random_maps(1, seed=9)[0]
    noisy_maps[2] = 0.0  # constant perturbed map
    noisy_maps[3] = clean_maps[3] * 3  # same after normalisation
    frame = pd.concat(
        [
            _saliency_rows("gaussian_noise", 0, labels, targets, targets, clean_probs, clean_maps),
            _saliency_rows(
                "gaussian_noise", 1, labels, targets, noisy_probs.argmax(axis=1), noisy_probs,
                noisy_maps,
            ),
        ],
        ignore_index=True,
    )  # fmt: skip
    table = pa.Table.from_pandas(frame, schema=saliency_schema(H, W, 2), preserve_index=False)
    return table.to_pandas()


def test_saliency_change_flags_wrong_and_flipped(hand_table):
    change = saliency_change(hand_table, top_k_percent=10)
    assert len(change) == 4
    assert change["severity"].tolist() == [1, 1, 1, 1]
    assert change["image_index"].tolist() == [0, 1, 2, 3]
    assert change["clean_predicted"].tolist() == [0, 1, 0, 0]
    assert change["predicted"].tolist() == [0, 0, 1, 0]
    assert change["wrong"].tolist() == [False, True, False, False]
    assert change["flipped"].tolist() == [False, True, True, False]
    np.testing.assert_allclose(change["confidence_drop"], [0.1, 0.5, 0.3, 0.15], atol=1e-6)
    np.testing.assert_allclose(change["clean_target_probability"], [0.9, 0.8, 0.6, 0.7], atol=1e-6)
    for key, value in {"dataset": "breastmnist", "arch": "resnet18", "method": "saliency"}.items():
        assert set(change[key]) == {value}


def test_saliency_change_map_metrics(hand_table):
    change = saliency_change(hand_table, top_k_percent=10)
    for image in (0, 3):  # unchanged map (image 3: scaled, equal after normalisation)
        row = change.iloc[image]
        assert row["ssim"] == pytest.approx(1.0)
        assert row["rmse"] == pytest.approx(0.0, abs=1e-6)
        assert row["spearman"] == pytest.approx(1.0)
        assert row["topk_iou"] == pytest.approx(1.0)
    assert change["ssim"].iloc[1] < 0.5
    assert change["rmse"].iloc[1] > 0.1
    assert math.isnan(change["spearman"].iloc[2])  # constant perturbed map
    assert change["is_constant"].tolist() == [False, False, True, False]
    assert not change["clean_is_constant"].any()
    assert np.isfinite(change[["ssim", "rmse", "topk_iou"]].to_numpy()).all()


def test_saliency_change_without_perturbed_rows_raises(hand_table):
    with pytest.raises(ValueError, match="no perturbed images"):
        saliency_change(hand_table[hand_table["severity"] == 0], 10)


def test_saliency_change_matches_each_perturbation_to_its_own_clean_rows(hand_table):
    other = hand_table.copy()
    other["perturbation"] = "contrast"
    # contrast's clean maps equal its perturbed maps: no change at all under contrast
    perturbed_maps = other.loc[other["severity"] == 1, "saliency"].to_list()
    other.loc[other["severity"] == 0, "saliency"] = pd.Series(
        perturbed_maps, index=other.index[other["severity"] == 0]
    )
    alone = saliency_change(hand_table, 10)
    change = saliency_change(pd.concat([hand_table, other], ignore_index=True), 10)
    assert change["perturbation"].tolist() == ["gaussian_noise"] * 4 + ["contrast"] * 4
    noise = change[change["perturbation"] == "gaussian_noise"].reset_index(drop=True)
    columns = ["wrong", "flipped", "rmse", "ssim", "topk_iou", "confidence_drop"]
    pd.testing.assert_frame_equal(noise[columns], alone[columns])
    contrast = change[change["perturbation"] == "contrast"]
    np.testing.assert_allclose(contrast["rmse"], 0.0, atol=1e-12)
    np.testing.assert_allclose(contrast["ssim"], 1.0)


# --- summaries --------------------------------------------------------------------------------


def _change_rows(fold, rmse_values, wrong):
    return pd.DataFrame(
        {
            "dataset": "breastmnist",
            "arch": "resnet18",
            "fold": fold,
            "method": "saliency",
            "perturbation": "gaussian_noise",
            "severity": 1,
            "rmse": rmse_values,
            "ssim": 1 - np.asarray(rmse_values),
            "spearman": 0.5,
            "topk_iou": 0.25,
            "wrong": wrong,
            "flipped": wrong,
            "confidence_drop": 0.0,
        }
    )


def test_summarise_change_mean_and_std_over_folds():
    change = pd.concat(
        [
            _change_rows(0, [0.1, 0.3], [True, False]),  # fold mean 0.2, wrong 0.5
            _change_rows(1, [0.4], [False]),  # fold mean 0.4, wrong 0.0
        ],
        ignore_index=True,
    )
    summary = summarise_change(change)
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["rmse_mean"] == pytest.approx(0.3)  # mean of fold means, not of images (0.2667)
    assert row["rmse_std"] == pytest.approx(math.sqrt(0.02))  # sample SD of (0.2, 0.4)
    assert row["ssim_mean"] == pytest.approx(0.7)
    assert row["wrong_mean"] == pytest.approx(0.25)
    assert row["flipped_mean"] == pytest.approx(0.25)
    assert row["spearman_std"] == pytest.approx(0.0)
    assert row["n_folds"] == 2
    for column in ("dataset", "arch", "method", "perturbation", "severity"):
        assert column in summary.columns


def test_summarise_change_keeps_groups_apart():
    a = _change_rows(0, [0.1], [False])
    b = _change_rows(0, [0.5], [True]).assign(severity=2)
    summary = summarise_change(pd.concat([a, b], ignore_index=True))
    assert summary["severity"].tolist() == [1, 2]
    assert summary["rmse_mean"].tolist() == pytest.approx([0.1, 0.5])
    assert summary["n_folds"].tolist() == [1, 1]
    assert summary["rmse_std"].isna().all()  # one fold: no spread to report


# --- misclassification detection --------------------------------------------------------------


def _separable_change(perturbation="gaussian_noise", wrong=(True, True, False, False, False)):
    wrong = np.asarray(wrong)
    change = np.where(wrong, 0.9, 0.1) + np.arange(len(wrong)) * 0.01
    return pd.DataFrame(
        {
            "dataset": "breastmnist",
            "arch": "resnet18",
            "fold": 0,
            "method": "saliency",
            "perturbation": perturbation,
            "severity": 1,
            "wrong": wrong,
            "rmse": change,
            "ssim": 1 - change,
            "spearman": 1 - change,
            "topk_iou": 1 - change,
            "confidence_drop": change,
        }
    )


def test_detection_auroc_is_one_for_a_perfectly_separating_score():
    detection = misclassification_detection(_separable_change())
    assert set(detection["score"]) == set(CHANGE_SCORES)
    assert set(detection["perturbation"]) == {"gaussian_noise", "all"}
    assert len(detection) == 2 * len(CHANGE_SCORES)
    np.testing.assert_allclose(detection["auroc"], 1.0)
    assert set(detection["n_wrong"]) == {2}
    assert set(detection["n_right"]) == {3}


def test_detection_auroc_is_zero_for_an_inverted_score():
    change = _separable_change()
    change["rmse"] = 1 - change["rmse"]
    detection = misclassification_detection(change)
    assert detection.loc[detection["score"] == "RMSE", "auroc"].tolist() == [0.0, 0.0]


def test_detection_auroc_is_nan_when_only_one_class():
    detection = misclassification_detection(_separable_change(wrong=[False] * 4))
    assert detection["auroc"].isna().all()
    assert set(detection["n_wrong"]) == {0}


def test_detection_pools_every_perturbation_under_all():
    change = pd.concat(
        [
            _separable_change("gaussian_noise", wrong=[False, False, False]),
            _separable_change("contrast", wrong=[True, False, True]),
        ],
        ignore_index=True,
    )
    detection = misclassification_detection(change)
    pooled = detection[detection["perturbation"] == "all"]
    assert len(pooled) == len(CHANGE_SCORES)
    assert set(pooled["n_wrong"]) == {2} and set(pooled["n_right"]) == {4}
    np.testing.assert_allclose(pooled["auroc"], 1.0)
    noise = detection[detection["perturbation"] == "gaussian_noise"]
    assert noise["auroc"].isna().all()


def test_detection_ignores_nan_scores():
    change = _separable_change(wrong=[True, True, False, False, False])
    change.loc[0, "spearman"] = np.nan  # e.g. a constant map
    detection = misclassification_detection(change)
    row = detection[(detection["score"] == "1 - Spearman") & (detection["perturbation"] != "all")]
    assert row["auroc"].iloc[0] == pytest.approx(1.0)
