"""Map comparison metrics, per-image change tables, summaries and detection AUROC."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from saliency_robustness.analysis.map_similarity import (
    map_entropy,
    map_gini,
    normalise_maps,
    rmse,
    spearman,
    ssim,
    top_k_iou,
    top_k_mask,
    top_k_weights,
)
from saliency_robustness.analysis.saliency_change import (
    saliency_change,
    severity_trends,
    summarise_change,
    variance_decomposition,
)
from saliency_robustness.attribution.table import saliency_schema

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
    assert change["is_constant"].tolist() == [False, False, True, False]
    assert change["collapsed"].tolist() == [False, False, True, False]
    assert not change["clean_is_constant"].any()
    # a collapse is a result, not missing data (metrics module doc)
    collapsed = change.iloc[2]
    clean = normalise_maps(random_maps(4, seed=0))[2]
    assert collapsed["spearman"] == 0.0  # no rank association with a constant map
    assert collapsed["rmse"] == pytest.approx(np.sqrt((clean**2).mean()))  # all mass vanished
    k = round(H * W * 0.1)
    assert collapsed["topk_iou"] == pytest.approx(k / (2 * H * W - k))  # chance overlap
    assert collapsed["ssim"] < 0.1
    assert np.isfinite(change[["ssim", "rmse", "spearman", "topk_iou"]].to_numpy()).all()


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


def test_saliency_change_separates_induced_from_already_wrong_errors(hand_table):
    change = saliency_change(hand_table, top_k_percent=10)
    # image 1: right when clean, wrong when perturbed (induced); image 2 was wrong when clean
    assert change["clean_wrong"].tolist() == [False, False, True, False]
    assert change["induced"].tolist() == [False, True, False, False]
    np.testing.assert_allclose(change["msp"], [0.8, 0.7, 0.7, 0.55], atol=1e-6)


def test_saliency_change_multi_label_confidence_is_the_predicted_state(hand_table):
    change = saliency_change(hand_table, top_k_percent=10, multi_label=True)
    p = change["target_probability"].to_numpy()
    np.testing.assert_allclose(change["msp"], np.maximum(p, 1 - p))


def test_two_constant_maps_are_unchanged_and_a_collapse_is_a_complete_change(hand_table):
    table = hand_table.copy()
    zero = [np.zeros(H * W, np.float32)]
    clean2 = (table["severity"] == 0) & (table["image_index"] == 2)
    table.loc[clean2, "saliency"] = pd.Series(zero, index=table.index[clean2])
    table.loc[clean2, "is_constant"] = True
    change = saliency_change(table, top_k_percent=10).set_index("image_index")
    both = change.loc[2]
    assert not both["collapsed"] and both["clean_is_constant"] and both["is_constant"]
    assert (both["rmse"], both["ssim"], both["spearman"], both["topk_iou"]) == (0, 1, 1, 1)
    assert np.isfinite(change[["rmse", "ssim", "spearman", "topk_iou"]].to_numpy()).all()


# --- tie-aware top-k ---------------------------------------------------------------------------


def test_top_k_weights_do_not_depend_on_pixel_order():
    rng = np.random.default_rng(0)
    maps = np.round(rng.random((5, H, W)), 1)  # many ties at every value
    order = rng.permutation(H * W)
    permuted = maps.reshape(5, -1)[:, order].reshape(maps.shape)
    weights = top_k_weights(maps, 10).reshape(5, -1)
    np.testing.assert_allclose(top_k_weights(permuted, 10).reshape(5, -1), weights[:, order])
    np.testing.assert_allclose(weights.sum(axis=1), round(H * W * 0.1))
    assert top_k_iou(maps, permuted, 10).min() < 1  # different maps
    np.testing.assert_allclose(top_k_iou(maps, maps, 10), 1.0)


def test_top_k_weights_of_a_constant_map_spread_evenly():
    weights = top_k_weights(np.zeros((1, H, W)), 10)
    np.testing.assert_allclose(weights, round(H * W * 0.1) / (H * W))
    # without ties the weights are the usual 0/1 mask of the k highest pixels
    distinct = np.arange(H * W, dtype=float).reshape(1, H, W)
    assert set(np.unique(top_k_weights(distinct, 10))) == {0.0, 1.0}


def test_top_k_iou_is_stable_under_float16_rounding():
    """Grad-CAM-like maps (4x4 upsampled to 28x28, many near-ties): rounding the stored maps
    to float16 changes the tie-aware IoU by at most 1e-3 on average."""
    from skimage.transform import resize

    rng = np.random.default_rng(1)
    coarse = rng.random((200, 4, 4))
    maps = np.stack([resize(c, (H, W), order=1) for c in coarse])
    other = np.stack([resize(c + rng.normal(0, 0.2, c.shape), (H, W), order=1) for c in coarse])
    exact = top_k_iou(normalise_maps(maps), normalise_maps(other), 10)
    rounded = top_k_iou(
        normalise_maps(maps.astype(np.float16)), normalise_maps(other.astype(np.float16)), 10
    )
    assert np.abs(exact - rounded).mean() <= 1e-3


def test_map_entropy_and_gini_on_known_maps():
    flat = np.ones((1, H, W))
    peak = np.zeros((1, H, W))
    peak[0, 3, 3] = 1.0
    np.testing.assert_allclose(map_entropy(flat), 1.0)
    np.testing.assert_allclose(map_entropy(np.zeros((1, H, W))), 1.0)
    np.testing.assert_allclose(map_entropy(peak), 0.0, atol=1e-12)
    np.testing.assert_allclose(map_gini(flat), 0.0, atol=1e-12)
    np.testing.assert_allclose(map_gini(peak), 1 - 1 / (H * W))
    half = np.zeros((1, H * W))
    half[0, : H * W // 2] = 1.0  # two-point distribution: Gini 0.5
    np.testing.assert_allclose(map_gini(half.reshape(1, H, W)), 0.5)


# --- summaries --------------------------------------------------------------------------------


def _change_rows(fold, rmse_values, wrong):
    n = len(rmse_values)
    return pd.DataFrame(
        {
            "dataset": "breastmnist",
            "arch": "resnet18",
            "fold": fold,
            "method": "saliency",
            "perturbation": "gaussian_noise",
            "severity": 1,
            "image_index": np.arange(n),
            "rmse": rmse_values,
            "ssim": 1 - np.asarray(rmse_values),
            "spearman": 0.5,
            "topk_iou": 0.25,
            "wrong": wrong,
            "induced": wrong,
            "flipped": wrong,
            "collapsed": False,
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
    summary = summarise_change(change, n_resamples=200)
    row = summary[summary["prediction"] == "all"].iloc[0]
    assert row["rmse_mean"] == pytest.approx(0.3)  # mean of fold means, not of images (0.2667)
    assert row["rmse_std"] == pytest.approx(math.sqrt(0.02))  # sample SD of (0.2, 0.4)
    assert row["ssim_mean"] == pytest.approx(0.7)
    assert row["wrong_mean"] == pytest.approx(0.25)
    assert row["flipped_share"] == pytest.approx(0.25)
    assert row["spearman_std"] == pytest.approx(0.0)
    assert row["n_folds"] == 2
    assert row["rmse_ci_low"] <= row["rmse_mean"] <= row["rmse_ci_high"]
    assert row["rmse_ci_low"] < row["rmse_ci_high"]  # folds and images differ
    assert row["spearman_ci_low"] == row["spearman_ci_high"] == 0.5  # constant: no spread
    for column in ("dataset", "arch", "method", "perturbation", "severity"):
        assert column in summary.columns


def test_summarise_change_splits_preserved_and_flipped_predictions():
    change = _change_rows(0, [0.1, 0.2, 0.9, 0.8], [False, False, True, True])
    summary = summarise_change(change, n_resamples=200).set_index("prediction")
    assert summary.loc["preserved", "rmse_mean"] == pytest.approx(0.15)
    assert summary.loc["flipped", "rmse_mean"] == pytest.approx(0.85)
    assert summary.loc["all", "rmse_mean"] == pytest.approx(0.5)
    np.testing.assert_allclose(summary["flipped_share"], 0.5)


def test_summarise_change_keeps_groups_apart():
    a = _change_rows(0, [0.1], [False])
    b = _change_rows(0, [0.5], [True]).assign(severity=2)
    summary = summarise_change(pd.concat([a, b], ignore_index=True), n_resamples=100)
    summary = summary[summary["prediction"] == "all"]
    assert summary["severity"].tolist() == [1, 2]
    assert summary["rmse_mean"].tolist() == pytest.approx([0.1, 0.5])
    assert summary["n_folds"].tolist() == [1, 1]
    assert summary["rmse_std"].isna().all()  # one fold: no spread to report


def test_severity_trends_find_a_rising_change_and_no_trend_in_noise():
    rng = np.random.default_rng(0)
    rows = []
    for fold in range(3):
        for image in range(20):
            for severity in range(1, 6):
                rows.append(
                    {
                        "dataset": "d", "arch": "a", "fold": fold, "method": "m",
                        "image_index": image, "target": 0, "severity": severity,
                        "perturbation": "rising", "ssim": 1 - 0.1 * severity
                        + rng.normal(0, 0.02), "rmse": rng.random(), "spearman": 0.5,
                        "topk_iou": 0.5,
                    }
                )  # fmt: skip
    trends = severity_trends(pd.DataFrame(rows), n_resamples=300).set_index("score")
    assert trends.loc["1 - SSIM", "trend"] > 0.8 and trends.loc["1 - SSIM", "q_value"] < 0.05
    assert abs(trends.loc["RMSE", "trend"]) < 0.2 and trends.loc["RMSE", "q_value"] > 0.05
    assert trends.loc["1 - Spearman", "trend"] == 0.0  # constant: no trend
    assert (trends["trend_ci_low"] <= trends["trend"]).all()
    assert (trends["trend"] <= trends["trend_ci_high"]).all()


def test_variance_decomposition_matches_a_hand_computed_one_way_eta_squared():
    rng = np.random.default_rng(0)
    n = 30
    table = pd.DataFrame(
        {
            "dataset": "d",
            "method": np.repeat(["a", "b", "c"], n),
            "arch": "resnet18",  # one level
            "perturbation": "noise",
            "severity": 1,
            "ssim": np.repeat([0.2, 0.5, 0.9], n) + rng.normal(0, 0.1, 3 * n),
            "rmse": rng.random(3 * n),
            "spearman": rng.random(3 * n),
            "topk_iou": rng.random(3 * n),
        }
    )
    result = variance_decomposition(table)
    ssim_rows = result[result["score"] == "1 - SSIM"].set_index("factor")
    y = -table["ssim"]
    between = sum(len(g) * (g.mean() - y.mean()) ** 2 for _, g in y.groupby(table["method"]))
    assert ssim_rows.loc["method", "eta_squared"] == pytest.approx(
        between / ((y - y.mean()) ** 2).sum()
    )
    assert ssim_rows.loc["arch", "eta_squared"] == 0.0 and ssim_rows.loc["arch", "df"] == 0
    assert ssim_rows["eta_squared"].sum() == pytest.approx(1.0)
