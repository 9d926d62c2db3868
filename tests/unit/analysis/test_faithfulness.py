"""Faithfulness metrics: known answers on a linear model, and the real trained ResNet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from saliency_robustness.analysis.faithfulness import (
    FaithfulnessSettings,
    binary_mask_confidence_change,
    confidence_change,
    curve_auc,
    deletion_insertion_curves,
    faithfulness,
    infidelity_scores,
    road_scores,
    sensitivity,
    target_probability,
)
from saliency_robustness.analysis.faithfulness_summary import (
    FAITHFULNESS_METRICS,
    faithfulness_over_folds,
    summarise_faithfulness,
)
from saliency_robustness.attribution.maps import compute_maps
from saliency_robustness.models.tensors import images_to_tensor

SIZE = 8


class Linear(nn.Module):
    """logits = W x + b on flattened 1-channel images."""

    def __init__(self, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.layer = nn.Linear(SIZE * SIZE, 2)
        with torch.no_grad():
            self.layer.weight.copy_(torch.rand((2, SIZE * SIZE), generator=generator) * scale)
            self.layer.weight[0] = 0.0  # class 0's logit is constant
            self.layer.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.flatten(1))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE), dtype=np.uint8)


def test_gradient_map_of_a_linear_model_gives_the_known_deletion_curve(images):
    model = Linear(scale=0.2).eval()
    targets = np.ones(len(images), int)
    maps = compute_maps(model, images, targets, "saliency", {}, batch_size=5)
    weights = model.layer.weight[1].detach().numpy()
    assert np.allclose(maps, np.abs(weights).reshape(SIZE, SIZE)[None], atol=1e-6)
    steps = 4
    deletion, insertion = deletion_insertion_curves(
        model, images_to_tensor(images), maps, targets, steps
    )
    # by hand: the k largest weights' pixels set to black (-1), logit 1 - logit 0 = w.x
    x = images_to_tensor(images).flatten(1).numpy().astype(np.float64)
    order = np.argsort(-weights, kind="stable")
    for step, count in enumerate(np.round(np.linspace(0, SIZE * SIZE, steps + 1)).astype(int)):
        deleted, inserted = x.copy(), np.full_like(x, -1.0)
        deleted[:, order[:count]] = -1.0
        inserted[:, order[:count]] = x[:, order[:count]]
        for curve, image in ((deletion, deleted), (insertion, inserted)):
            expected = 1.0 / (1.0 + np.exp(-(image @ weights)))
            assert np.allclose(curve[:, step], expected, atol=1e-5)
    assert (np.diff(deletion, axis=1) <= 1e-7).all()  # w >= 0 and pixels >= black
    assert np.allclose(deletion[:, -1], insertion[:, 0])
    assert np.allclose(curve_auc(np.ones((1, 5))), 1.0)
    # the gradient order deletes faster than the reverse order
    reverse, _ = deletion_insertion_curves(
        model, images_to_tensor(images), maps.max() - maps, targets, steps
    )
    assert (curve_auc(deletion) < curve_auc(reverse)).all()


def test_confidence_change_darkens_the_image_by_the_map(images):
    model = Linear(scale=0.1).eval()
    targets = np.ones(len(images), int)
    maps = np.random.default_rng(1).random((len(images), SIZE, SIZE)).astype(np.float32)
    inputs = images_to_tensor(images)
    darkened = ((inputs + 1) / 2 * torch.as_tensor(maps)[:, None]) * 2 - 1
    expected = target_probability(model, darkened, targets) - target_probability(
        model, inputs, targets
    )
    assert np.allclose(confidence_change(model, inputs, maps, targets), expected, atol=1e-6)


def test_road_removes_the_bright_evidence_first():
    # the class-1 evidence is a bright square; everything else is black and weighs little
    model = Linear(scale=0.0)
    with torch.no_grad():
        model.layer.weight[1] = 0.01
        model.layer.weight[1].view(SIZE, SIZE)[3:6, 3:6] = 1.0
    images = np.zeros((3, SIZE, SIZE), np.uint8)
    images[:, 3:6, 3:6] = 255
    targets = np.ones(3, int)
    evidence = model.layer.weight[1].detach().numpy().reshape(SIZE, SIZE)
    maps = np.broadcast_to(evidence / evidence.max(), images.shape).copy()
    morf, lerf = road_scores(model.eval(), images_to_tensor(images), maps, targets, (50,), 0)
    # MoRF imputes the square from its black surround: the probability falls from ~1 to ~0.5
    assert (morf < -0.4).all()
    # LeRF imputes black background from black neighbours: (almost) nothing changes
    assert np.abs(lerf).max() < 0.05


def test_infidelity_and_sensitivity_rank_the_true_map_first(images):
    model = Linear(scale=0.05).eval()  # small logits: softmax is nearly linear
    targets = np.ones(len(images), int)
    inputs = images_to_tensor(images)
    weights = model.layer.weight[1].detach().numpy().reshape(SIZE, SIZE)
    true_map = np.broadcast_to(weights, (len(images), SIZE, SIZE)).copy()
    noise = np.random.default_rng(2).random(true_map.shape)
    # the gradient of the (nearly linear) target probability is w: infidelity close to 0
    good = infidelity_scores(model, inputs, true_map, targets, 16, 0.1, 0)
    bad = infidelity_scores(model, inputs, noise, targets, 16, 0.1, 0)
    assert (good < 0.05 * bad).all()
    # a linear model's gradient does not depend on the input: sensitivity 0
    settings = FaithfulnessSettings(sensitivity_samples=3)
    assert np.allclose(sensitivity(model, images, targets, "saliency", {}, settings), 0, atol=1e-6)


def test_faithfulness_on_the_trained_resnet(model, clean_test_images):
    images = clean_test_images[:6]
    targets = np.ones(len(images), int)
    maps = compute_maps(model, images, targets, "saliency", {}, batch_size=6)
    settings = FaithfulnessSettings(steps=4, road_percentiles=(50,), infidelity_samples=2)
    table = faithfulness(model, images, maps, targets, settings)
    assert len(table) == 6 and table["deletion_curve"].iloc[0].shape == (5,)
    assert table[["deletion_auc", "insertion_auc"]].apply(lambda c: c.between(0, 1).all()).all()
    assert np.isfinite(table["infidelity"]).all()
    assert (table["drop_in_confidence"] >= 0).all()
    with pytest.raises(ValueError, match="one map and one target"):
        faithfulness(model, images, maps[:3], targets, settings)
    with pytest.raises(ValueError, match="percentiles"):
        FaithfulnessSettings(road_percentiles=(0, 50))


def test_road_equals_pytorch_grad_cams_averaging_classes(model, clean_test_images):
    from pytorch_grad_cam.metrics.road import (
        ROADLeastRelevantFirstAverage,
        ROADMostRelevantFirstAverage,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    images = clean_test_images[:3]
    targets = np.array([0, 1, 1])
    inputs = images_to_tensor(images)
    maps = np.random.default_rng(3).random((3, 28, 28)).astype(np.float32)
    morf, lerf = road_scores(model, inputs, maps, targets, (30, 70), seed=5)
    cam_targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    torch.manual_seed(5)
    with torch.no_grad():
        expected_morf = ROADMostRelevantFirstAverage([30, 70])(inputs, maps, cam_targets, model)
        expected_lerf = ROADLeastRelevantFirstAverage([30, 70])(inputs, maps, cam_targets, model)
    assert np.allclose(morf, expected_morf, atol=1e-6)
    assert np.allclose(lerf, expected_lerf, atol=1e-6)


# --- summaries with bootstrap intervals (hand-made per-image tables) -------------------------


def faithfulness_rows(n_images: int, n_folds: int = 3, seed: int = 0) -> pd.DataFrame:
    """A per-image faithfulness table: clean ('none', 0) and one perturbation at severity 5;
    ``deletion_auc`` random, ``infidelity`` constant, ``increase_in_confidence`` boolean."""
    rng = np.random.default_rng(seed)
    frames = []
    for fold in range(n_folds):
        for perturbation, severity in (("none", 0), ("noise", 5)):
            frames.append(
                pd.DataFrame(
                    {
                        "dataset": "d",
                        "arch": "resnet18",
                        "fold": fold,
                        "method": "saliency",
                        "perturbation": perturbation,
                        "severity": np.int8(severity),
                        "image_index": np.arange(n_images),
                        "deletion_auc": rng.random(n_images) * (1 + severity / 5),
                        "infidelity": 0.25,
                        "increase_in_confidence": rng.random(n_images) < 0.5,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def test_faithfulness_summaries_hold_intervals_that_narrow_with_more_images():
    table = faithfulness_rows(30)
    per_fold = summarise_faithfulness(table, n_resamples=200, seed=0)
    assert len(per_fold) == 3 * 2 * 3  # folds x conditions x metrics
    deletion = per_fold[per_fold["metric"] == "deletion_auc"]
    expected = table.groupby(["fold", "perturbation"])["deletion_auc"].agg(["mean", "std"])
    np.testing.assert_allclose(deletion["mean"], expected["mean"])
    np.testing.assert_allclose(deletion["std"], expected["std"])
    over = faithfulness_over_folds(table, n_resamples=200, seed=0)
    assert (over["n_folds"] == 3).all() and (over["n_images"] == 30).all()
    for summary in (per_fold, over):
        assert (summary["mean_ci_low"] <= summary["mean"]).all()
        assert (summary["mean"] <= summary["mean_ci_high"]).all()
        constant = summary[summary["metric"] == "infidelity"]  # known answer: zero width
        np.testing.assert_allclose(constant[["mean", "mean_ci_low", "mean_ci_high"]], 0.25)
    over_deletion = over[over["metric"] == "deletion_auc"].set_index("perturbation")["mean"]
    np.testing.assert_allclose(over_deletion, expected["mean"].groupby("perturbation").mean())
    large = faithfulness_over_folds(faithfulness_rows(600), n_resamples=200, seed=0)

    def width(s):
        rows = s[s["metric"] == "deletion_auc"]
        return (rows["mean_ci_high"] - rows["mean_ci_low"]).to_numpy()

    assert (width(large) < width(over) / 2).all()


# --- covering modes: darken (default) and binary_mask ---------------------------------------


CONFIDENCE = ["confidence_change", "drop_in_confidence", "increase_in_confidence"]


def _region_model() -> Linear:
    """Class 1's logit depends only on the 3x3 region at rows/columns 3:6."""
    model = Linear(scale=0.0)
    with torch.no_grad():
        model.layer.weight[1].view(SIZE, SIZE)[3:6, 3:6] = 0.5
    return model.eval()


def test_binary_mask_covering_drops_confidence_only_over_the_evidence():
    model = _region_model()
    images = np.full((3, SIZE, SIZE), 200, np.uint8)
    targets = np.ones(3, int)
    inputs = images_to_tensor(images)
    maps = np.zeros((3, SIZE, SIZE), np.float32)
    maps[0, 3:6, 3:6] = 1.0  # the region the model reads
    maps[1, 0:2, :] = 1.0  # elsewhere
    maps[1, 3:6, 3:6] = 0.49  # just below the threshold: kept
    maps[2, 3:6, 3:6] = 0.5  # at the threshold: covered (>=)
    change = binary_mask_confidence_change(model, inputs, maps, targets, threshold=0.5)
    # by hand: the covered pixels set to black (-1); p1 = sigmoid(w . x) for two classes
    x = inputs.flatten(1).numpy().astype(np.float64)
    weights = model.layer.weight[1].detach().numpy().astype(np.float64)
    covered = np.where(maps.reshape(3, -1) >= 0.5, -1.0, x)
    expected = 1 / (1 + np.exp(-(covered @ weights))) - 1 / (1 + np.exp(-(x @ weights)))
    np.testing.assert_allclose(change, expected, atol=1e-6)
    assert change[0] < -0.5 and change[2] < -0.5  # evidence removed: confidence drops
    assert abs(change[1]) < 1e-6  # covering pixels the model ignores changes nothing
    # darkening by the same maps is the other mode: it keeps the salient pixels
    darken = confidence_change(model, inputs, maps, targets)
    assert abs(darken[0]) < 0.01 and darken[1] < -0.5


def test_covering_modes_in_the_table_and_summaries(images):
    model = _region_model()
    targets = np.ones(len(images), int)
    maps = np.random.default_rng(4).random((len(images), SIZE, SIZE)).astype(np.float32)
    base = {"steps": 2, "road_percentiles": (50,), "infidelity_samples": 0}
    default = faithfulness(model, images, maps, targets, FaithfulnessSettings(**base))
    both = faithfulness(
        model,
        images,
        maps,
        targets,
        FaithfulnessSettings(**base, covering=("darken", "binary_mask"), binary_threshold=0.7),
    )
    suffixed = [f"{m}_binary_mask" for m in CONFIDENCE]
    assert not set(suffixed) & set(default.columns)  # the default table is today's
    pd.testing.assert_frame_equal(both.drop(columns=suffixed), default)
    by_hand = binary_mask_confidence_change(
        model, images_to_tensor(images), maps, targets, threshold=0.7
    )
    np.testing.assert_allclose(both["confidence_change_binary_mask"], by_hand)
    np.testing.assert_allclose(both["drop_in_confidence_binary_mask"], np.maximum(-by_hand, 0))
    assert (both["increase_in_confidence_binary_mask"] == (by_hand > 0)).all()
    only = faithfulness(
        model, images, maps, targets, FaithfulnessSettings(**base, covering=("binary_mask",))
    )
    assert not set(CONFIDENCE) & set(only.columns) and set(suffixed) <= set(only.columns)
    keys = {"dataset": "d", "arch": "a", "fold": 0, "method": "m", "perturbation": "none"}
    table = both.assign(**keys, severity=np.int8(0), image_index=np.arange(len(images)))
    summary = summarise_faithfulness(table, n_resamples=100)
    drops = summary.set_index("metric")["mean"]
    np.testing.assert_allclose(
        drops["drop_in_confidence_binary_mask"], np.maximum(-by_hand, 0).mean(), rtol=1e-6
    )
    assert {"drop_in_confidence", "drop_in_confidence_binary_mask"} <= set(drops.index)
    assert FAITHFULNESS_METRICS["drop_in_confidence_binary_mask"] is True  # removal: drop is good


def test_faithfulness_figure_shows_the_binary_mask_drop(monkeypatch, tmp_path):
    from saliency_robustness import plots

    rows = faithfulness_rows(8)
    rows["drop_in_confidence_binary_mask"] = 0.3
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path, dpi: figures.append(figure))
    plots.faithfulness_vs_severity_figure(
        summarise_faithfulness(rows, n_resamples=100), tmp_path / "f"
    )
    titles = {ax.get_title() for ax in figures[0].axes}
    assert {"deletion_auc", "drop_in_confidence_binary_mask", "infidelity"} <= titles


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"covering": ("blur",)}, "covering: unknown or no modes \\['blur'\\]"),
        ({"covering": ()}, "covering: unknown or no modes"),
        ({"binary_threshold": 0.0}, "binary_threshold must lie in \\(0, 1\\]"),
        ({"binary_threshold": 1.5}, "binary_threshold must lie in \\(0, 1\\]"),
    ],
)
def test_bad_covering_settings_are_named(settings: dict, message: str):
    with pytest.raises(ValueError, match=message):
        FaithfulnessSettings(**settings)


def test_covering_keys_are_checked_by_the_schema():
    from pathlib import Path

    from saliency_robustness.config_schema import load_schema, schema_errors

    repo = Path(__file__).resolve().parents[3]
    schema = load_schema(repo / "workflow" / "schemas" / "config.schema.yaml")
    good = {"analysis": {"faithfulness": {"covering": ["darken", "binary_mask"]}}}
    assert schema_errors(good, schema) == []
    bad = {"analysis": {"faithfulness": {"covering": ["blur"], "binary_threshold": 0}}}
    errors = schema_errors(bad, schema)
    assert any(
        e.startswith("analysis.faithfulness.covering.0: 'blur' is not one of") for e in errors
    )
    assert any(
        e.startswith("analysis.faithfulness.binary_threshold: 0 is less than") for e in errors
    )
