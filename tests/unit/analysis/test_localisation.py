"""Localisation scores against lesion masks: exact cases, a quantus cross-check, and a model
trained on the synthetic lesions whose Grad-CAM finds them far better than the controls."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from saliency_robustness.analysis.localisation import (
    localisation,
    localisation_scores,
    summarise_localisation,
)
from saliency_robustness.attribution.maps import compute_maps
from saliency_robustness.attribution.registry import method_params
from saliency_robustness.attribution.table import attribute_clean, attribute_perturbed
from saliency_robustness.datasets.synthetic import make_synthetic
from saliency_robustness.evaluation import predict_proba
from saliency_robustness.tables import with_clean_rows
from saliency_robustness.training import TrainSettings, train_classifier


def _square_mask(n: int, size: int = 28) -> np.ndarray:
    masks = np.zeros((n, size, size), dtype=bool)
    masks[:, 5:12, 5:12] = True  # 49 px
    return masks


def test_exact_scores_of_hand_made_maps() -> None:
    masks = _square_mask(3)
    inside = np.zeros((28, 28))
    inside[5:12, 5:12] = 1.0  # the mask itself
    inside[6, 6] = 2.0  # peak inside
    outside = np.zeros((28, 28))
    outside[20:27, 20:27] = -1.0  # signed: magnitude counts
    constant = np.full((28, 28), 0.3)
    scores = localisation_scores(np.stack([inside, outside, constant]), masks, 100 * 49 / 784)
    np.testing.assert_allclose(scores["hit"][:2], [1.0, 0.0])
    assert np.isnan(scores["hit"][2])  # a constant map has no maximum to point with
    np.testing.assert_allclose(scores["energy"], [1.0, 0.0, 49 / 784])
    np.testing.assert_allclose(scores["iou"][:2], [1.0, 0.0])  # top 49 px = the mask exactly
    np.testing.assert_allclose(scores["dice"][:2], [1.0, 0.0])
    np.testing.assert_allclose(scores["mask_fraction"], 49 / 784)


def _layer_masks(n: int) -> np.ndarray:
    """Levels: 1 on the 7x7 lesion at 5:12, 2 on the 2-pixel band around it (3:14), 0 else."""
    levels = np.zeros((n, 28, 28), dtype=np.uint8)
    levels[:, 3:14, 3:14] = 2
    levels[:, 5:12, 5:12] = 1
    return levels


def _peak_at(*pixels: tuple[int, int]) -> np.ndarray:
    """A map of small noise-free background values with its maximum at ``pixels``."""
    values = np.linspace(0.0, 0.5, 28 * 28).reshape(28, 28)
    for row, col in pixels:
        values[row, col] = 1.0
    return values


def test_graded_hit_scores_the_level_of_the_peak() -> None:
    levels = _layer_masks(6)
    maps = np.stack(
        [
            _peak_at((8, 8)),  # lesion (level 1): 3
            _peak_at((3, 10)),  # band around it (level 2): 2
            _peak_at((20, 20)),  # background: -1
            np.full((28, 28), 0.3),  # constant: no peak, NaN as for hit
            _peak_at((8, 8), (20, 20)),  # tie lesion / background: mean (3 - 1) / 2
            _peak_at((3, 3), (4, 4), (8, 8)),  # tie of two band pixels and one lesion pixel
        ]
    )
    scores = localisation_scores(maps, levels, 10)
    np.testing.assert_array_equal(scores["graded_hit"][[0, 1, 2, 4, 5]], [3, 2, -1, 1, 7 / 3])
    assert np.isnan(scores["graded_hit"][3])
    # hit counts every level >= 1 as inside; the first maximum in row-major order decides
    np.testing.assert_array_equal(scores["hit"][[0, 1, 2, 4, 5]], [1, 1, 0, 1, 1])
    n_lesion, n_band = 49, 121 - 49
    chance = (3 * n_lesion + 2 * n_band - 1 * (784 - 121)) / 784
    np.testing.assert_allclose(scores["graded_hit_chance"], chance)
    np.testing.assert_allclose(scores["mask_fraction"], 121 / 784)
    # the other scores see the levels as one mask: the same as its boolean version
    binary = localisation_scores(maps, levels > 0, 10)
    for name in ("hit", "energy", "iou", "dice", "mask_fraction"):
        np.testing.assert_array_equal(scores[name], binary[name], err_msg=name)
    # a binary mask (the lesion alone): 3 inside, -1 outside
    lesion_only = localisation_scores(maps, levels == 1, 10)
    np.testing.assert_array_equal(lesion_only["graded_hit"][[0, 1, 2]], [3, -1, -1])
    # the score table is configurable (localisation.graded_hit_scores / _background)
    custom = localisation_scores(maps, levels, 10, graded_scores=[1, 0.5], graded_background=0)
    np.testing.assert_array_equal(custom["graded_hit"][[0, 1, 2, 4]], [1, 0.5, 0, 0.5])


def test_graded_hit_needs_a_score_for_every_level() -> None:
    levels = _layer_masks(1)
    levels[0, 0, 0] = 3
    with pytest.raises(ValueError, match="level 3 but localisation.graded_hit_scores gives "):
        localisation_scores(_peak_at((8, 8))[None], levels, 10, graded_scores=[3, 2])
    with pytest.raises(ValueError, match="whole numbers"):
        localisation_scores(_peak_at((8, 8))[None], levels * 0.5, 10)


def test_empty_mask_is_refused() -> None:
    masks = _square_mask(2)
    masks[1] = False
    with pytest.raises(ValueError, match="at least one lesion pixel"):
        localisation_scores(np.ones((2, 28, 28)), masks, 10)


def test_agrees_with_quantus() -> None:
    """Pointing game and energy (quantus: AttributionLocalisation) on synthetic masks."""
    quantus = pytest.importorskip("quantus")
    data = make_synthetic(12, 28, 1, 5, "multi-class")
    masks = data["test_masks"].astype(bool)
    rng = np.random.default_rng(0)
    maps = rng.random(masks.shape) + 0.8 * masks * rng.random((len(masks), 1, 1))
    ours = localisation_scores(maps, masks, 10)
    batch = {
        "model": None,
        "x_batch": data["test_images"][:, None].astype(np.float32),
        "y_batch": data["test_labels"][:, 0],
        "a_batch": maps[:, None],
        "s_batch": masks[:, None].astype(float),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pointing = quantus.PointingGame(disable_warnings=True)(**batch)
        energy = quantus.AttributionLocalisation(disable_warnings=True)(**batch)
    np.testing.assert_array_equal(ours["hit"], np.asarray(pointing, dtype=float))
    np.testing.assert_allclose(ours["energy"], energy, rtol=1e-6)


def _saliency_rows(n: int, masks: np.ndarray) -> pd.DataFrame:
    """A saliency table (as the attribute stage writes it) whose maps are the masks."""
    return pd.DataFrame(
        {
            "dataset": "lesions",
            "arch": "resnet18",
            "fold": 0,
            "method": "oracle",
            "perturbation": "contrast",
            "severity": np.repeat([0, 3], n),
            "image_index": np.tile(np.arange(n), 2),
            "label": 0,
            "target": 0,
            "predicted": 0,
            "is_constant": False,
            "height": 28,
            "width": 28,
            "saliency": list(np.tile(masks.reshape(n, -1).astype(np.float32), (2, 1))),
        }
    )


def test_table_skips_images_without_a_lesion_and_summarises() -> None:
    data = make_synthetic(10, 28, 1, 0, "binary-class")
    masks = data["test_masks"]
    table = localisation(_saliency_rows(10, masks), masks, 10)
    n_lesions = int(masks.reshape(10, -1).any(axis=1).sum())
    assert 0 < n_lesions < 10
    assert len(table) == 2 * n_lesions  # lesion-free images have nothing to point at
    assert (table["hit"] == 1).all() and np.allclose(table["energy"], 1.0)
    summary = summarise_localisation(table)
    assert list(summary["severity"]) == [0, 3]
    assert summary["hit_mean"].eq(1).all() and summary["n_images"].eq(n_lesions).all()
    with pytest.raises(ValueError, match="has 4 masks"):
        localisation(_saliency_rows(10, masks), masks[:4], 10)


def test_ring_masks_grade_a_map_that_peaks_next_to_the_lesion() -> None:
    """Synthetic lesions with a 2-pixel ring (level 2): a map that is the ring scores 2, one
    that is the lesion 3, in the per-image table and its summary."""
    data = make_synthetic(10, 28, 1, 0, "binary-class", ring_width=2)
    levels = data["test_masks"]
    n_lesions = int((levels == 1).reshape(10, -1).any(axis=1).sum())
    on_ring = localisation(_saliency_rows(10, levels == 2), levels, 10)
    on_lesion = localisation(_saliency_rows(10, levels == 1), levels, 10)
    assert len(on_ring) == 2 * n_lesions  # lesion-free images are skipped as before
    assert (on_ring["graded_hit"] == 2).all() and (on_lesion["graded_hit"] == 3).all()
    assert (on_ring["hit"] == 1).all()  # the ring is inside the mask for the pointing game
    summary = summarise_localisation(on_ring, n_resamples=100)
    np.testing.assert_array_equal(summary["graded_hit_mean"], 2.0)
    np.testing.assert_array_equal(summary[["graded_hit_ci_low", "graded_hit_ci_high"]], 2.0)
    lesion = (levels == 1).reshape(10, -1).any(axis=1)
    by_hand = np.where(levels == 1, 3, np.where(levels == 2, 2, -1))[lesion].mean(axis=(1, 2))
    np.testing.assert_allclose(summary["graded_hit_chance_mean"], by_hand.mean())


def test_localisation_figure_has_the_graded_hit_rate_on_its_own_scale(monkeypatch, tmp_path):
    from saliency_robustness import plots

    data = make_synthetic(10, 28, 1, 0, "binary-class", ring_width=2)
    levels = data["test_masks"]
    summary = summarise_localisation(
        localisation(_saliency_rows(10, levels == 1), levels, 10), n_resamples=100
    )
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path, dpi: figures.append(figure))
    plots.localisation_vs_severity_figure(summary, tmp_path / "localisation.png")
    limits = [ax.get_ylim() for ax in figures[0].axes]  # four scores x one perturbation
    assert len(limits) == 4 and limits[:3] == [(0, 1.02)] * 3
    chance = summary["graded_hit_chance_mean"].mean()
    assert limits[3][0] < chance < 3 < limits[3][1]  # graded row: own scale, chance line shown
    plots.localisation_vs_severity_figure(
        summary.drop(columns=["graded_hit_mean"]), tmp_path / "old.png"
    )
    assert len(figures[1].axes) == 3  # summaries from before the graded hit rate still plot


def _score_rows(n_images: int, n_folds: int = 3, seed: int = 0) -> pd.DataFrame:
    """A localisation table (per image) of three folds: random hits and IoU, a constant
    mask fraction, clean and one severity."""
    rng = np.random.default_rng(seed)
    frames = [
        pd.DataFrame(
            {
                "dataset": "lesions",
                "arch": "resnet18",
                "fold": fold,
                "method": "gradcam",
                "perturbation": "contrast",
                "severity": severity,
                "image_index": np.arange(n_images),
                "hit": (rng.random(n_images) < 0.7 - 0.1 * severity).astype(float),
                "energy": rng.random(n_images),
                "iou": rng.random(n_images),
                "dice": rng.random(n_images),
                "mask_fraction": 0.1,
            }
        )
        for fold in range(n_folds)
        for severity in (0, 3)
    ]
    return pd.concat(frames, ignore_index=True)


def test_localisation_summary_intervals():
    table = _score_rows(40)
    summary = summarise_localisation(table, n_resamples=200, seed=0)
    assert list(summary["severity"]) == [0, 3] and (summary["n_folds"] == 3).all()
    per_fold = table.groupby(["severity", "fold"])["hit"].mean().groupby("severity")
    np.testing.assert_allclose(summary["hit_mean"], per_fold.mean())
    np.testing.assert_allclose(summary["hit_sd"], per_fold.std())
    for score in ("hit", "energy", "iou", "dice", "mask_fraction"):
        assert (summary[f"{score}_ci_low"] <= summary[f"{score}_mean"]).all(), score
        assert (summary[f"{score}_mean"] <= summary[f"{score}_ci_high"]).all(), score
    # known answer: a constant score has a zero-width interval
    np.testing.assert_allclose(summary[["mask_fraction_ci_low", "mask_fraction_ci_high"]], 0.1)
    large = summarise_localisation(_score_rows(800), n_resamples=200, seed=0)

    def width(s):
        return (s["iou_ci_high"] - s["iou_ci_low"]).to_numpy()

    assert (width(large) < width(summary) / 2).all()


# --- a real model on the synthetic lesions --------------------------------------------------


@pytest.fixture(scope="module")
def lesion_model() -> tuple[torch.nn.Module, dict]:
    """ResNet-18 trained briefly (CPU, 5 epochs of 384 images, about a minute) to tell blob,
    ring and bar apart; many small batches, so it learns the shapes before the texture."""
    data = make_synthetic({"train": 384, "val": 64, "test": 64}, 28, 1, 0, "multi-class")
    result = train_classifier(
        "resnet18",
        (data["train_images"], data["train_labels"]),
        (data["val_images"], data["val_labels"]),
        3,
        TrainSettings(epochs=5, batch_size=16, seed=0),
        torch.device("cpu"),
    )
    return result.model.eval(), data


# Grad-CAM from layer2 (14x14 at 28 px): layer4's 4x4 map is too coarse for lesions a few
# pixels wide (measured on this model: pointing game 0.19 at layer4, 0.44 at layer2).
CAM = {"cam_layer": "layer2"}


def _hit_and_energy(model, data, method: str, params: dict) -> tuple[float, float]:
    labels = data["test_labels"][:, 0]
    maps = compute_maps(model, data["test_images"], labels, method, params, 32, "cpu", seed=0)
    scores = localisation_scores(maps, data["test_masks"], 10)
    return float(np.nanmean(scores["hit"])), float(np.nanmean(scores["energy"]))


def test_trained_model_beats_chance_and_its_maps_find_the_lesion(lesion_model) -> None:
    model, data = lesion_model
    images, labels, masks = data["test_images"], data["test_labels"][:, 0], data["test_masks"]
    accuracy = (predict_proba(model, images).argmax(axis=1) == labels).mean()
    assert accuracy >= 0.5, accuracy  # chance: 1/3 (measured: 0.61)
    chance = masks.mean()
    gradcam = _hit_and_energy(model, data, "gradcam", method_params("gradcam", CAM))
    saliency = _hit_and_energy(model, data, "saliency", {})
    random = _hit_and_energy(model, data, "random", {})
    sobel = _hit_and_energy(model, data, "sobel", {})
    print(
        f"acc {accuracy:.3f} chance {chance:.3f} (hit, energy): gradcam {gradcam} "
        f"saliency {saliency} sobel {sobel} random {random}"
    )
    assert random[0] < 2.5 * chance and abs(random[1] - chance) < 0.02  # a map unrelated to it
    assert gradcam[0] >= 0.35 and gradcam[0] > random[0] + 0.2, (gradcam, random)
    assert gradcam[1] > 2 * chance, gradcam
    assert saliency[0] >= 0.45 and saliency[0] > random[0] + 0.3, (saliency, random)
    assert saliency[0] > sobel[0] + 0.15, (saliency, sobel)  # edges alone do not find it


def test_perturbed_maps_are_scored_against_the_clean_masks(lesion_model) -> None:
    model, data = lesion_model
    images, masks = data["test_images"], data["test_masks"]
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 40, images.shape), 0, 255)
    perturbed = {"gaussian_noise": ([5], noisy.astype(np.uint8)[None])}
    params = method_params("gradcam", CAM)
    keys = {"dataset": "lesions", "arch": "resnet18", "fold": 0}
    clean = attribute_clean(model, images, data["test_labels"], "gradcam", params, keys)
    rows = [clean, attribute_perturbed(model, clean, perturbed, "gradcam", params)]
    saliency = with_clean_rows(pd.concat([part.to_pandas() for part in rows], ignore_index=True))
    table = localisation(saliency, masks, 10)
    assert sorted(table["severity"].unique()) == [0, 5] and len(table) == 2 * len(images)
    by_severity = table.groupby("severity")["energy"].mean()
    assert by_severity[0] > 1.5 * masks.mean()  # clean Grad-CAM concentrates on the lesion
    assert np.isfinite(by_severity[5])


def test_graded_hit_and_ring_keys_are_checked_by_the_schema() -> None:
    from pathlib import Path

    from saliency_robustness.config_schema import load_schema, schema_errors

    schema = load_schema(
        Path(__file__).resolve().parents[3] / "workflow/schemas/config.schema.yaml"
    )
    good = {
        "localisation": {"graded_hit_scores": [3, 2.5], "graded_hit_background": -2},
        "data": {"custom": {"lesions": {"source": "synthetic", "ring_width": 3}}},
    }
    assert schema_errors(good, schema) == []
    bad = {
        "localisation": {"graded_hit_scores": [], "graded_hit_background": "low"},
        "data": {"custom": {"lesions": {"source": "synthetic", "ring_width": -1}}},
    }
    errors = schema_errors(bad, schema)
    assert any(
        e.startswith("localisation.graded_hit_scores: [] should be non-empty") for e in errors
    )
    assert any(e.startswith("localisation.graded_hit_background: 'low' is not") for e in errors)
    assert any(e.startswith("data.custom.lesions.ring_width: -1 is less than") for e in errors)


def test_a_synthetic_ring_needs_a_level_2_score_at_config_time() -> None:
    from saliency_robustness.config_checks import graded_hit_config_errors

    ringed = {"source": "synthetic", "ring_width": 2}
    config = {
        "data": {"datasets": ["lesions"], "custom": {"lesions": ringed}},
        "localisation": {"graded_hit_scores": [3], "graded_hit_background": -1},
    }
    assert graded_hit_config_errors(config) == [
        "localisation.graded_hit_scores lists 1 score(s) but data.custom.lesions.ring_width "
        "makes mask level 2 (the ring); list a score for level 2 as well, e.g. [3, 2]."
    ]
    config["localisation"]["graded_hit_scores"] = [3, 2]
    assert graded_hit_config_errors(config) == []
    config["localisation"]["graded_hit_scores"] = [3]
    config["data"]["custom"]["lesions"]["ring_width"] = 0  # binary masks: level 1 only
    assert graded_hit_config_errors(config) == []
