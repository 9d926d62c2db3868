"""Saliency maps of every method on a small ResNet-18 trained on real BreastMNIST images:
shapes, finiteness and batch independence, the registered channel reduction, completeness
(convergence deltas), the controls, seeds, superpixels and multi-label targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import DeepLift, IntegratedGradients
from skimage.filters import sobel

from saliency_robustness.analysis.map_similarity import constant_maps as is_constant
from saliency_robustness.attribution.inputs import BLACK, image_seeds
from saliency_robustness.attribution.maps import (
    compute_maps,
    compute_maps_and_completeness,
    input_maps,
    top_k_targets,
)
from saliency_robustness.attribution.perturbation_methods import superpixels
from saliency_robustness.attribution.registry import (
    METHODS,
    ChannelReduction,
    channel_reduction,
    has_completeness,
    is_signed,
    method_params,
)
from saliency_robustness.attribution.surgery import unshared_copy
from saliency_robustness.attribution.table import attribute_clean
from saliency_robustness.models.build import build_model
from saliency_robustness.models.registry import get_architecture
from saliency_robustness.models.tensors import images_to_tensor

NAMES = sorted(METHODS)
STOCHASTIC = sorted(name for name, method in METHODS.items() if method.stochastic)
CAM_LAYER = get_architecture("resnet18").cam_layer
# Methods that cost a forward pass per channel of the CAM layer run on fewer images.
PER_CHANNEL = {"scorecam", "ablationcam"}
KEYS = {"dataset": "breastmnist", "arch": "resnet18", "fold": 2}


@pytest.mark.parametrize("name", NAMES)
def test_maps_are_finite_with_input_shape_and_independent_of_batch_size(
    model, images, predicted, name, capsys, fast_params
):
    n = 2 if name in PER_CHANNEL else 8
    params = fast_params(name)
    batched = compute_maps(model, images[:n], predicted[:n], name, params, batch_size=8, seed=3)
    single = compute_maps(model, images[:n], predicted[:n], name, params, batch_size=1, seed=3)
    assert batched.shape == (n, 28, 28)
    assert batched.dtype == np.float32
    assert np.isfinite(batched).all()
    scale = np.abs(batched).max()
    assert scale > 0
    np.testing.assert_allclose(single, batched, rtol=1e-4, atol=1e-5 * scale)
    if not is_signed(name, params):
        assert (batched >= 0).all()
    assert not is_constant(batched).all()
    err = capsys.readouterr().err
    assert "it/s" not in err and "%|" not in err, err  # no progress bars (ScoreCAM, ...)


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


def test_is_constant_flags_constant_maps():
    maps = np.zeros((5, 28, 28), np.float32)
    maps[1] = 3.5
    maps[2, 10, 10] = 1.0
    maps[3] = 1e6
    maps[3, 0, 0] += 1.0
    maps[4] = np.random.default_rng(0).normal(size=(28, 28))
    assert is_constant(maps).tolist() == [True, True, False, False, False]


# --- channel reduction --------------------------------------------------------------------------


def _reference_reduction(reduction: ChannelReduction, attributions: np.ndarray) -> np.ndarray:
    """The registered rule, written out here in NumPy float64."""
    if reduction == ChannelReduction.ABS_SUM:
        return np.abs(attributions).sum(axis=1)
    if reduction == ChannelReduction.SUM:
        return attributions.sum(axis=1)
    assert reduction == ChannelReduction.MEAN, reduction
    return attributions.mean(axis=1)


@pytest.fixture(scope="module")
def rgb_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", 3, 2, 28).eval()


@pytest.fixture(scope="module")
def rgb_images(clean_test_images) -> np.ndarray:
    """Two real images as RGB with three different channels (so SLIC finds superpixels)."""
    gray = clean_test_images[:2]
    return np.stack([gray, 255 - gray, gray // 2 + 64], axis=-1)


@pytest.mark.parametrize("name", [*NAMES, "smoothgrad:input_x_gradient"])
def test_maps_are_the_registered_reduction_of_the_raw_attributions(
    name, rgb_model, rgb_images, fast_params
):
    """On 3-channel inputs an implementation returns attributions (N, 3, H, W), and the map
    is the registered reduction of them (``none``: the implementation's maps (N, H, W)).
    The delta of a method with completeness is that of the unreduced attributions."""
    name, _, base = name.partition(":")
    params = {**fast_params(name), "base": base} if base else fast_params(name)
    reduction = channel_reduction(name, params)
    targets = np.array([0, 1])
    maps, check = compute_maps_and_completeness(
        rgb_model, rgb_images, targets, name, params, batch_size=2, seed=3
    )
    inputs = images_to_tensor(rgb_images).requires_grad_(True)
    kwargs = {"seeds": image_seeds(inputs, 3)} if METHODS[name].stochastic else {}
    if check is not None:
        kwargs["return_completeness"] = True
    raw = METHODS[name].implementation()(
        rgb_model, inputs, torch.as_tensor(targets), **kwargs, **params
    )
    if check is not None:
        raw, _ = raw
    raw = raw.detach().double().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
    if reduction == ChannelReduction.NONE:
        assert raw.shape == (2, 28, 28)
        expected = raw
    else:
        assert raw.shape == (2, 3, 28, 28)
        expected = _reference_reduction(reduction, raw)
    if reduction == ChannelReduction.MEAN:  # regions span every channel: equal channels
        np.testing.assert_allclose(raw, np.repeat(raw[:, :1], 3, axis=1), rtol=1e-6)
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6 * scale)
    assert has_completeness(name, params) == (check is not None)
    if check is not None:
        total = raw.sum(axis=(1, 2, 3))
        np.testing.assert_allclose(check.delta + check.gap, total, rtol=1e-3, atol=1e-5)


def test_input_maps_are_the_maps_of_one_batch(model, images, predicted):
    """The entry point for callers that hold model inputs (faithfulness, Quantus)."""
    for name in ("saliency", "gradient_shap", "gradcam"):
        params = method_params(name, None, CAM_LAYER)
        expected = compute_maps(model, images[:3], predicted[:3], name, params, 3, seed=4)
        inputs = images_to_tensor(images[:3]).requires_grad_(True)
        targets = torch.as_tensor(predicted[:3]).long()
        maps = input_maps(model, inputs, targets, name, params, seed=4)
        np.testing.assert_array_equal(maps, expected)


# --- completeness: convergence delta and relative error ---------------------------------------


def _logit_gap(model, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """f(x) - f(black) of the target logits, from forward passes here."""
    inputs = images_to_tensor(x)
    rows = np.arange(len(x))
    with torch.no_grad():
        logits = model(inputs).double().numpy()[rows, targets]
        baseline = model(torch.full_like(inputs, BLACK)).double().numpy()[rows, targets]
    return logits - baseline


def test_integrated_gradients_convergence_delta_is_the_residual_of_the_unreduced_map(
    model, images, predicted
):
    """Known answer: the stored delta is sum(captum's attributions before the channel
    sum) - (f(x) - f(black)), f the target logit; the error is |delta| / |that gap|."""
    x, targets = images[:3], predicted[:3]
    params = method_params("integrated_gradients", {"n_steps": 8})
    maps, check = compute_maps_and_completeness(
        model, x, targets, "integrated_gradients", params, batch_size=2
    )
    np.testing.assert_array_equal(
        maps, compute_maps(model, x, targets, "integrated_gradients", params, batch_size=2)
    )
    inputs = images_to_tensor(x).requires_grad_(True)
    attributions, captum_delta = IntegratedGradients(model).attribute(
        inputs, baselines=torch.full_like(inputs, BLACK), target=torch.as_tensor(targets),
        n_steps=8, return_convergence_delta=True,
    )  # fmt: skip
    total = attributions.detach().double().sum(dim=(1, 2, 3)).numpy()
    gap = _logit_gap(model, x, targets)
    np.testing.assert_allclose(check.gap, gap, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(check.delta, total - gap, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(check.delta, captum_delta.double().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(check.error, np.abs(total - gap) / np.abs(gap), rtol=1e-3)
    assert np.all(np.abs(check.delta) > 1e-6)  # 8 steps leave a residual to measure
    # the table stores the same values per row (clean rows)
    table = attribute_clean(
        model, x, np.zeros(3, int), "integrated_gradients", params, KEYS, batch_size=2
    ).to_pandas()
    np.testing.assert_allclose(table["convergence_delta"], check.delta, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(table["completeness_error"], check.error, rtol=1e-5)


def test_completeness_error_shrinks_with_more_integrated_gradients_steps(model, images, predicted):
    x, targets = images[:6], predicted[:6]
    errors = {}
    for steps in (4, 64):
        params = method_params("integrated_gradients", {"n_steps": steps})
        _, check = compute_maps_and_completeness(
            model, x, targets, "integrated_gradients", params, batch_size=6
        )
        errors[steps] = check.error
    assert np.isfinite(errors[4]).all() and np.isfinite(errors[64]).all()
    assert np.median(errors[64]) < np.median(errors[4]) / 4, errors
    assert errors[64].max() < errors[4].max(), errors
    assert np.median(errors[64]) < 0.05, errors


@pytest.mark.filterwarnings("ignore::UserWarning")  # captum's notices on the direct call
def test_deeplift_convergence_delta_equals_captums(model, images, predicted):
    x, targets = images[:3], predicted[:3]
    params = method_params("deeplift", {"internal_batch_size": 2})
    maps, check = compute_maps_and_completeness(model, x, targets, "deeplift", params, 3)
    inputs = images_to_tensor(x)
    attributions, captum_delta = DeepLift(unshared_copy(model, inputs)).attribute(
        inputs, baselines=torch.full_like(inputs, BLACK), target=torch.as_tensor(targets),
        return_convergence_delta=True,
    )  # fmt: skip
    np.testing.assert_allclose(maps, attributions.detach().sum(dim=1).numpy(), atol=1e-6)
    np.testing.assert_allclose(check.gap, _logit_gap(model, x, targets), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(check.delta, captum_delta.double().numpy(), atol=1e-4)
    assert np.all(check.error < 1e-3)  # summation-to-delta holds at 28 px


def test_smoothgrad_over_integrated_gradients_stores_the_mean_delta(
    model, images, predicted, fast_params
):
    x, targets = images[:2], predicted[:2]
    params = method_params(
        "smoothgrad",
        {"base": "integrated_gradients", "nt_samples": 3, "n_steps": 4, "internal_batch_size": 8},
    )
    assert has_completeness("smoothgrad", params)
    assert not has_completeness("smoothgrad", fast_params("smoothgrad"))  # base saliency
    maps, check = compute_maps_and_completeness(model, x, targets, "smoothgrad", params, 2, seed=1)
    np.testing.assert_array_equal(
        maps, compute_maps(model, x, targets, "smoothgrad", params, 2, seed=1)
    )
    # gap: mean f(x + noise) - f(black), near the clean gap for small noise; delta: residual
    np.testing.assert_allclose(check.gap + check.delta, maps.reshape(2, -1).sum(axis=1), rtol=1e-4)
    np.testing.assert_allclose(check.gap, _logit_gap(model, x, targets), rtol=0.5)
    assert np.isfinite(check.error).all()


def test_completeness_error_is_nan_where_the_output_does_not_change(model):
    """A black image is its own baseline: f(x) - f(black) = 0, no relative error."""
    black = np.zeros((2, 28, 28), np.uint8)
    params = method_params("integrated_gradients", {"n_steps": 4})
    _, check = compute_maps_and_completeness(
        model, black, np.array([0, 1]), "integrated_gradients", params, 2
    )
    np.testing.assert_allclose(check.gap, [0.0, 0.0], atol=1e-6)  # batch of 2 vs 1 image
    np.testing.assert_allclose(check.delta, [0.0, 0.0], atol=1e-7)
    assert np.isnan(check.error).all()


# --- controls -----------------------------------------------------------------------------------


def test_sobel_control_is_skimage_sobel_of_the_image(model, clean_test_images):
    images = clean_test_images[:5]
    maps = compute_maps(model, images, np.zeros(5, int), "sobel", {}, batch_size=2)
    expected = np.stack([sobel(image) for image in images]).astype(np.float32)
    np.testing.assert_array_equal(maps, expected)


def test_random_control_is_seeded_and_unrelated_between_clean_and_perturbed(model, images):
    targets = np.zeros(len(images), int)
    maps = compute_maps(model, images, targets, "random", {}, batch_size=3, seed=1)
    assert ((maps >= 0) & (maps < 1)).all()
    again = compute_maps(model, images, targets, "random", {}, batch_size=8, seed=1)
    np.testing.assert_array_equal(maps, again)
    darker = compute_maps(model, images // 2, targets, "random", {}, batch_size=8, seed=1)
    for a, b in zip(maps, darker, strict=True):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.2


# --- seeds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_methods_are_fixed_by_the_seed(model, images, predicted, name, fast_params):
    x, targets = images[:2], predicted[:2]
    params = fast_params(name)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    first = compute_maps(model, x, targets, name, params, batch_size=2, seed=5)
    # The global generators are neither reseeded nor advanced by an explicit seed.
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)
    torch.rand(10), np.random.rand(10)  # noqa: B018 - moving the global state changes nothing
    np.testing.assert_array_equal(
        compute_maps(model, x, targets, name, params, batch_size=1, seed=5), first
    )
    assert not np.array_equal(
        compute_maps(model, x, targets, name, params, batch_size=2, seed=6), first
    )
    torch.manual_seed(5)  # without a seed: fixed by torch.manual_seed, as in the workflow
    unseeded = compute_maps(model, x, targets, name, params, batch_size=2)
    torch.manual_seed(5)
    np.testing.assert_array_equal(
        compute_maps(model, x, targets, name, params, batch_size=2), unseeded
    )


# --- superpixels and targets ------------------------------------------------------------------


def test_slic_gives_enough_superpixels_on_real_28px_images(clean_test_images):
    defaults = METHODS["lime"].defaults
    assert METHODS["kernel_shap"].defaults["n_segments"] == defaults["n_segments"]
    masks = superpixels(
        images_to_tensor(clean_test_images), defaults["n_segments"], defaults["compactness"]
    ).numpy()
    assert masks.shape == (len(clean_test_images), 1, 28, 28)
    counts = np.array([len(np.unique(mask)) for mask in masks])
    assert counts.min() >= 20, np.sort(counts)[:10]
    for mask, count in zip(masks, counts, strict=True):  # ids 0..count-1 (start_label=0)
        assert mask.min() == 0 and mask.max() == count - 1


def test_top_k_targets_gives_one_row_per_image_and_target():
    scores = np.array([[0.1, 0.9, 0.5], [0.7, 0.7, 0.2]])
    image_index, targets = top_k_targets(scores, 2)
    assert image_index.tolist() == [0, 0, 1, 1]
    assert targets.tolist() == [1, 2, 0, 1]  # by decreasing score, ties: lower class first
    with pytest.raises(ValueError, match="1 <= k"):
        top_k_targets(scores, 4)
