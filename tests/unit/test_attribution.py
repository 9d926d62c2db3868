"""Saliency methods on a small ResNet-18 trained on real BreastMNIST images."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from saliency_robustness.attribution import (
    BLACK,
    METHODS,
    attribute_clean_and_perturbed,
    compute_maps,
    is_constant,
    method_params,
    saliency_schema,
)
from saliency_robustness.evaluation import predict_proba
from saliency_robustness.models import get_architecture, images_to_tensor
from saliency_robustness.tables import maps_from_table, read_parquet, write_parquet

NAMES = sorted(METHODS)
CAM_LAYER = get_architecture("resnet18").cam_layer
# Fewer integration steps where a test is about shapes and batching, not accuracy.
FAST = {"integrated_gradients": {"n_steps": 4}}
KEYS = {"dataset": "breastmnist", "arch": "resnet18", "fold": 2}


def fast_params(name: str) -> dict:
    return method_params(name, FAST.get(name), CAM_LAYER)


@pytest.fixture(scope="module")
def images(clean_test_images) -> np.ndarray:
    return clean_test_images[:8]


@pytest.fixture(scope="module")
def predicted(model, images) -> np.ndarray:
    return predict_proba(model, images).argmax(axis=1)


@pytest.mark.parametrize("name", NAMES)
def test_maps_are_finite_with_input_shape_and_independent_of_batch_size(
    model, images, predicted, name
):
    params = fast_params(name)
    batched = compute_maps(model, images, predicted, name, params, batch_size=8)
    single = compute_maps(model, images, predicted, name, params, batch_size=1)
    assert batched.shape == (8, 28, 28)
    assert batched.dtype == np.float32
    assert np.isfinite(batched).all()
    scale = np.abs(batched).max()
    assert scale > 0
    np.testing.assert_allclose(single, batched, rtol=1e-4, atol=1e-5 * scale)
    if not METHODS[name].signed:
        assert (batched >= 0).all()


def test_integrated_gradients_completeness(model, images, predicted):
    """Sum of attributions = logit(x) - logit(black baseline) for the target class."""
    x, targets = images[:2], predicted[:2]
    params = method_params("integrated_gradients", {"n_steps": 50}, CAM_LAYER)
    maps = compute_maps(model, x, targets, "integrated_gradients", params, batch_size=2)
    inputs = images_to_tensor(x)
    rows = np.arange(len(x))
    with torch.no_grad():
        logits = model(inputs).numpy()[rows, targets]
        baseline = model(torch.full_like(inputs, BLACK)).numpy()[rows, targets]
    expected = logits - baseline
    total = maps.reshape(len(x), -1).sum(axis=1)
    assert np.all(np.abs(expected) > 1e-3), expected  # a meaningful difference to explain
    np.testing.assert_allclose(total, expected, rtol=0.03, atol=1e-3)


def test_gradcam_at_the_default_layer_is_not_constant(model, clean_test_images):
    images = clean_test_images[:12]
    targets = predict_proba(model, images).argmax(axis=1)
    params = method_params("gradcam", {}, CAM_LAYER)
    maps = compute_maps(model, images, targets, "gradcam", params, batch_size=12)
    assert maps.shape == (12, 28, 28)
    constant = is_constant(maps)
    assert constant.mean() < 0.5, f"{constant.sum()} of 12 Grad-CAM maps are constant"
    varied = maps[~constant]
    assert (varied.min(axis=(1, 2)) >= 0).all() and (varied.max(axis=(1, 2)) <= 1 + 1e-6).all()


def test_gradcam_rejects_an_unknown_layer(model, images, predicted):
    params = method_params("gradcam", {"cam_layer": "layer9"}, CAM_LAYER)
    with pytest.raises(KeyError, match="layer9"):
        compute_maps(model, images[:2], predicted[:2], "gradcam", params, 2)


# --- method parameters ------------------------------------------------------------------------


def test_method_params_merges_defaults_and_config():
    assert method_params("saliency", None, CAM_LAYER) == {}
    merged = method_params("integrated_gradients", {"n_steps": 20}, CAM_LAYER)
    assert merged == {**METHODS["integrated_gradients"].defaults, "n_steps": 20}
    assert method_params("gradcam", None, "layer3") == {"cam_layer": "layer3"}
    assert method_params("gradcam", {"cam_layer": "layer2"}, "layer4") == {"cam_layer": "layer2"}


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("saliency", {"n_steps": 5}),
        ("integrated_gradients", {"steps": 5}),
        ("integrated_gradients", {"cam_layer": "layer4"}),
        ("gradcam", {"n_steps": 5}),
    ],
)
def test_method_params_rejects_unknown_keys(name, params):
    with pytest.raises(ValueError, match=rf"attribute\.params\.{name}: unknown keys") as excinfo:
        method_params(name, params, CAM_LAYER)
    assert repr(next(iter(params))) in str(excinfo.value)


def test_unknown_method_lists_valid_names():
    with pytest.raises(KeyError) as excinfo:
        method_params("lime", None, CAM_LAYER)
    for name in NAMES:
        assert name in str(excinfo.value)


# --- is_constant ------------------------------------------------------------------------------


def test_is_constant_flags_constant_maps():
    maps = np.zeros((5, 28, 28), np.float32)
    maps[1] = 3.5
    maps[2, 10, 10] = 1.0
    maps[3] = 1e6
    maps[3, 0, 0] += 1.0
    maps[4] = np.random.default_rng(0).normal(size=(28, 28))
    assert is_constant(maps).tolist() == [True, True, False, False, False]


# --- clean and perturbed table ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_set(clean_test_images, breast):
    clean = clean_test_images[:6]
    labels = breast["test_labels"][:6]
    perturbed = {
        "gaussian_noise": ([1, 5], np.stack([255 - clean, clean // 4])),
        "contrast": ([3], np.stack([clean // 2 + 64])),
    }
    return clean, labels, perturbed


@pytest.fixture(scope="module")
def saliency_table(model, small_set) -> pa.Table:
    clean, labels, perturbed = small_set
    return attribute_clean_and_perturbed(
        model, clean, labels, perturbed, "saliency", {}, KEYS, batch_size=4
    )


def test_table_matches_the_saliency_schema(saliency_table):
    assert saliency_table.schema.equals(saliency_schema(28, 28, 2))
    assert saliency_table.num_rows == 6 * (2 + 3)


def test_table_rows_and_order(saliency_table):
    frame = saliency_table.to_pandas()
    levels = frame[["perturbation", "severity"]].drop_duplicates().values.tolist()
    assert levels == [["gaussian_noise", 0], ["gaussian_noise", 1], ["gaussian_noise", 5],
                      ["contrast", 0], ["contrast", 3]]  # fmt: skip
    for _, group in frame.groupby(["perturbation", "severity"]):
        assert group["image_index"].tolist() == list(range(6))
    assert set(frame["dataset"]) == {"breastmnist"}
    assert set(frame["arch"]) == {"resnet18"}
    assert set(frame["fold"]) == {2}
    assert set(frame["method"]) == {"saliency"}
    assert not frame["signed"].any()
    assert set(frame["height"]) == {28} and set(frame["width"]) == {28}


def test_clean_rows_repeat_under_each_perturbation_with_equal_maps(
    model, saliency_table, small_set
):
    clean, labels, _ = small_set
    frame = saliency_table.to_pandas()
    clean_rows = frame[frame["severity"] == 0]
    noise = clean_rows[clean_rows["perturbation"] == "gaussian_noise"]
    contrast = clean_rows[clean_rows["perturbation"] == "contrast"]
    np.testing.assert_array_equal(maps_from_table(noise), maps_from_table(contrast))
    for column in ("predicted", "target", "target_probability", "label", "is_constant"):
        np.testing.assert_array_equal(noise[column].to_numpy(), contrast[column].to_numpy())
    probs = predict_proba(model, clean, 4)
    direct = compute_maps(model, clean, probs.argmax(axis=1), "saliency", {}, 4)
    np.testing.assert_allclose(maps_from_table(noise), direct, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(noise["label"], labels.reshape(-1))


def test_target_is_fixed_from_the_clean_prediction(model, saliency_table, small_set):
    clean, _, perturbed = small_set
    frame = saliency_table.to_pandas()
    clean_probs = predict_proba(model, clean, 4)
    clean_predicted = clean_probs.argmax(axis=1)
    for _, group in frame.groupby(["perturbation", "severity"]):
        np.testing.assert_array_equal(group["target"].to_numpy(), clean_predicted)
    inverted = frame[(frame["perturbation"] == "gaussian_noise") & (frame["severity"] == 1)]
    probs = predict_proba(model, perturbed["gaussian_noise"][1][0], 4)
    np.testing.assert_array_equal(inverted["predicted"].to_numpy(), probs.argmax(axis=1))
    np.testing.assert_allclose(
        inverted["target_probability"].to_numpy(), probs[np.arange(6), clean_predicted], atol=1e-6
    )
    np.testing.assert_allclose(np.stack(inverted["probabilities"]), probs, atol=1e-6)


def test_table_is_nan_free(saliency_table):
    frame = saliency_table.to_pandas()
    assert np.isfinite(maps_from_table(frame)).all()
    assert np.isfinite(np.stack(frame["probabilities"])).all()
    assert np.isfinite(frame["target_probability"]).all()
    for column in saliency_table.column_names:
        assert saliency_table.column(column).null_count == 0, column


def test_is_constant_column_matches_the_maps(saliency_table):
    frame = saliency_table.to_pandas()
    np.testing.assert_array_equal(frame["is_constant"], is_constant(maps_from_table(frame)))


def test_table_round_trips_through_parquet(tmp_path, saliency_table):
    path = tmp_path / "saliency.parquet"
    write_parquet(saliency_table, path)
    frame = read_parquet(path)
    np.testing.assert_array_equal(
        maps_from_table(frame), maps_from_table(saliency_table.to_pandas())
    )
    assert frame["severity"].dtype == np.int8


def test_true_label_as_target(model, small_set):
    clean, labels, perturbed = small_set
    table = attribute_clean_and_perturbed(
        model, clean, labels, {"contrast": perturbed["contrast"]}, "saliency", {}, KEYS,
        target="label", batch_size=6,
    )  # fmt: skip
    frame = table.to_pandas()
    for _, group in frame.groupby("severity"):
        np.testing.assert_array_equal(group["target"].to_numpy(), labels.reshape(-1))


@pytest.mark.parametrize("name", NAMES)
def test_every_method_builds_a_schema_conform_table(model, small_set, name):
    clean, labels, perturbed = small_set
    table = attribute_clean_and_perturbed(
        model, clean[:3], labels[:3], {"contrast": ([3], perturbed["contrast"][1][:, :3])},
        name, fast_params(name), KEYS, batch_size=3,
    )  # fmt: skip
    assert table.schema.equals(saliency_schema(28, 28, 2))
    frame = table.to_pandas()
    assert frame["severity"].tolist() == [0, 0, 0, 3, 3, 3]
    assert set(frame["signed"]) == {METHODS[name].signed}
    assert np.isfinite(maps_from_table(frame)).all()


def test_no_perturbations_gives_clean_rows_named_none(model, small_set):
    clean, labels, _ = small_set
    table = attribute_clean_and_perturbed(model, clean, labels, {}, "saliency", {}, KEYS)
    frame = table.to_pandas()
    assert frame["perturbation"].unique().tolist() == ["none"]
    assert frame["severity"].unique().tolist() == [0]
    assert len(frame) == 6


def test_same_configuration_gives_the_same_table(model, small_set, saliency_table):
    clean, labels, perturbed = small_set
    again = attribute_clean_and_perturbed(
        model, clean, labels, perturbed, "saliency", {}, KEYS, batch_size=4
    )
    assert again.equals(saliency_table)
