"""The shap package's explainers in the method registry (shap_partition, shap_gradient,
shap_kernel) on small models whose answer is known by construction: a linear model (the
Shapley value of a pixel is weight x (pixel - black)) and a model whose class-0 logit sees
only the top-left quadrant and whose class-1 logit only the bottom-right one. Their maps
are checked against those answers and against captum's methods on the same models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from saliency_robustness.attribution.inputs import BLACK
from saliency_robustness.attribution.maps import compute_maps
from saliency_robustness.attribution.perturbation_methods import superpixels
from saliency_robustness.attribution.registry import (
    METHODS,
    ChannelReduction,
    channel_reduction,
    is_signed,
    method_params,
)
from saliency_robustness.models.build import build_model
from saliency_robustness.models.ensemble import Ensemble
from saliency_robustness.models.tensors import images_to_tensor

SHAP = ("shap_partition", "shap_gradient", "shap_kernel")
SIZE = 28
HALF = SIZE // 2
TOP_LEFT = np.zeros((SIZE, SIZE), bool)
TOP_LEFT[:HALF, :HALF] = True
BOTTOM_RIGHT = np.zeros((SIZE, SIZE), bool)
BOTTOM_RIGHT[HALF:, HALF:] = True
QUADRANT = {0: TOP_LEFT, 1: BOTTOM_RIGHT}  # the region each class's logit sees
# Partition with both contexts evaluates 2 x 4^d masks at depth d of its binary tree, so it
# splits every group of an 8 x 8 image (64 features, depth 6) down to single pixels within
# 2 x (1 + 4 + ... + 4^5) = 2730 evaluations (4 x 4 x 3 = 48 features: the same): its Owen
# values are then exact. (At 28 px the default 500 stop far earlier.)
SMALL = 8
FULL_PARTITION = 2800


def _branch() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 1),
    )


class TwoQuadrants(nn.Module):
    """Two logits: class 0 from the top-left quadrant only, class 1 from the bottom-right."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.top_left, self.bottom_right = _branch(), _branch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        return torch.cat([self.top_left(x[..., :h, :w]), self.bottom_right(x[..., h:, w:])], dim=1)


def _linear(channels: int, size: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 2)).eval()


def _true_linear_map(model: nn.Module, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Shapley values of a linear model against the black image, summed over channels:
    weight x (pixel - black), per pixel."""
    x = images_to_tensor(images)
    weights = model[1].weight.detach().reshape(2, *x.shape[1:])[torch.as_tensor(targets)]
    return (weights * (x - BLACK)).sum(dim=1).numpy()


def _output_gap(model: nn.Module, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """model(x)[target] - model(black)[target]: the output every method attributes."""
    x = images_to_tensor(images)
    with torch.no_grad():
        outputs, black = model(x), model(torch.full_like(x, BLACK))
    rows = torch.arange(len(x))
    return (outputs[rows, targets] - black[rows, targets]).double().numpy()


def _superpixel_values(maps: np.ndarray, images: np.ndarray, params: dict) -> list[np.ndarray]:
    """Each image's superpixel values (a shap_kernel pixel shows its superpixel's value)."""
    segments = superpixels(images_to_tensor(images), params["n_segments"], params["compactness"])
    values = []
    for image_map, segment in zip(maps, segments[:, 0].numpy(), strict=True):
        values.append(np.array([image_map[segment == s].mean() for s in np.unique(segment)]))
    return values


def _outside_share(maps: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per map, the share of its absolute mass outside ``region``."""
    mass = np.abs(maps).reshape(len(maps), -1).astype(np.float64)
    return mass[:, ~region.reshape(-1)].sum(axis=1) / mass.sum(axis=1)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b, strict=True)])


@pytest.fixture(scope="module")
def images(clean_test_images) -> np.ndarray:
    return clean_test_images[:4]


@pytest.fixture(scope="module")
def quadrants() -> nn.Module:
    return TwoQuadrants(0).eval()


def _maps(model, images, targets, name, params=None, batch_size=4, seed=0) -> np.ndarray:
    return compute_maps(
        model, images, np.asarray(targets), name, method_params(name, params), batch_size,
        seed=seed,
    )  # fmt: skip


# --- the registry -----------------------------------------------------------------------------


def test_entries_are_signed_shap_methods_with_checked_names():
    for name in SHAP:
        assert METHODS[name].library == "shap" and is_signed(name), name
    # Partition and Gradient attribute every channel (summed); a Kernel SHAP superpixel spans
    # them all, so its maps come reduced
    assert channel_reduction("shap_partition") == ChannelReduction.SUM
    assert channel_reduction("shap_gradient") == ChannelReduction.SUM
    assert channel_reduction("shap_kernel") == ChannelReduction.NONE
    # Partition draws nothing but its queue's tie-breaks (seeded with a constant).
    assert not METHODS["shap_partition"].stochastic
    assert METHODS["shap_gradient"].stochastic and METHODS["shap_kernel"].stochastic
    # shap_kernel samples and segments as captum's kernel_shap does
    kernel, captum_kernel = METHODS["shap_kernel"].defaults, METHODS["kernel_shap"].defaults
    for key in ("n_samples", "n_segments", "compactness"):
        assert kernel[key] == captum_kernel[key], key
    with pytest.raises(ValueError, match=r"shap_partition\.masker.*'mean'.*blur, black"):
        method_params("shap_partition", {"masker": "mean"})
    with pytest.raises(ValueError, match=r"shap_gradient\.background.*'training'"):
        method_params("shap_gradient", {"background": "training"})
    with pytest.raises(ValueError, match=r"shap_kernel: unknown keys \['l1_reg'\]"):
        method_params("shap_kernel", {"l1_reg": "aic"})


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("shap_partition", {"max_evals": 2}, "max_evals"),
        ("shap_partition", {"max_evals": "auto"}, "max_evals"),
        ("shap_partition", {"masker": "blur", "blur_kernel": 0}, "blur_kernel"),
        ("shap_gradient", {"n_samples": 0}, "n_samples"),
        ("shap_gradient", {"local_smoothing": -0.1}, "local_smoothing"),
        ("shap_kernel", {"batch_size": 2.5}, "batch_size"),
    ],
)
def test_bad_numbers_are_stopped_naming_the_key(images, quadrants, name, params, key):
    with pytest.raises(ValueError, match=rf"attribute\.params\.{name}\.{key} is"):
        _maps(quadrants, images[:1], [0], name, params)


# --- known answers: a linear model ------------------------------------------------------------


def test_linear_model_maps_are_weight_times_input_and_match_captum(images):
    model = _linear(1, SIZE)
    targets = np.array([0, 1, 1, 0])
    truth = _true_linear_map(model, images, targets)
    scale = np.abs(truth).max()

    # Expected gradients from black: the gradient is constant, every sample is exact.
    gradient = _maps(model, images, targets, "shap_gradient", {"background": "black"})
    np.testing.assert_allclose(gradient, truth, atol=1e-5 * scale)
    ig = _maps(model, images, targets, "integrated_gradients")
    np.testing.assert_allclose(gradient, ig, atol=1e-5 * scale)

    # Owen values of a linear game are its Shapley values once every group is split:
    # 8 x 8 crops, so that the budget splits them all.
    small, small_model = images[:, 10 : 10 + SMALL, 10 : 10 + SMALL], _linear(1, SMALL)
    small_truth = _true_linear_map(small_model, small, targets)
    partition = _maps(
        small_model, small, targets, "shap_partition",
        {"masker": "black", "max_evals": FULL_PARTITION},
    )  # fmt: skip
    np.testing.assert_allclose(partition, small_truth, atol=1e-5 * np.abs(small_truth).max())
    occlusion = _maps(small_model, small, targets, "occlusion", {"window": 1, "stride": 1})
    np.testing.assert_allclose(partition, occlusion, atol=1e-5 * np.abs(small_truth).max())
    # At 28 px with the default budget, large groups keep their (exact) total, spread evenly.
    coarse = _maps(model, images, targets, "shap_partition", {"masker": "black"})
    for rows, columns in [(slice(0, HALF), slice(0, HALF)), (slice(HALF, SIZE), slice(0, SIZE))]:
        np.testing.assert_allclose(
            coarse[:, rows, columns].sum(axis=(1, 2)),
            truth[:, rows, columns].sum(axis=(1, 2)),
            atol=1e-4 * np.abs(truth).sum(axis=(1, 2)).max(),
        )

    # Kernel SHAP over superpixels: a superpixel's value is the sum of its pixels' values.
    params = method_params("shap_kernel", {})
    kernel = _maps(model, images, targets, "shap_kernel")
    segments = superpixels(images_to_tensor(images), params["n_segments"], params["compactness"])
    for image_map, image_truth, segment in zip(kernel, truth, segments[:, 0].numpy(), strict=True):
        for s in np.unique(segment):
            inside = segment == s
            np.testing.assert_allclose(image_map[inside], image_truth[inside].sum(), atol=1e-3)
    np.testing.assert_allclose(kernel, _maps(model, images, targets, "kernel_shap"), atol=1e-3)


def test_colour_images_sum_the_channels():
    """RGB: shap's (H, W, C) layout and back; a pixel's value sums its three channels."""
    size = 4
    rgb = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    model = _linear(3, size, seed=1)
    targets = np.array([1, 0])
    truth = _true_linear_map(model, rgb, targets)
    scale = np.abs(truth).max()
    partition = _maps(
        model, rgb, targets, "shap_partition", {"masker": "black", "max_evals": FULL_PARTITION}
    )
    np.testing.assert_allclose(partition, truth, atol=1e-4 * scale)
    gradient = _maps(model, rgb, targets, "shap_gradient", {"background": "black"})
    np.testing.assert_allclose(gradient, truth, atol=1e-5 * scale)
    kernel = _maps(model, rgb, targets, "shap_kernel", {"n_segments": 4})
    assert kernel.shape == (2, size, size) and np.isfinite(kernel).all()
    blurred = _maps(model, rgb, targets, "shap_partition", {"max_evals": 64})  # default masker
    assert blurred.shape == (2, size, size) and np.abs(blurred).max() > 0


# --- known answers: a model that sees one quadrant per class ----------------------------------


@pytest.mark.parametrize("target", [0, 1])
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("shap_partition", {}),  # default masker: blur
        ("shap_partition", {"masker": "black"}),
        ("shap_gradient", {}),  # default background: blurred copies of the image
        ("shap_gradient", {"background": "noise"}),
    ],
)
def test_map_lies_in_the_quadrant_the_target_class_sees(images, quadrants, name, params, target):
    maps = _maps(quadrants, images, [target] * len(images), name, params)
    assert (np.abs(maps).reshape(len(maps), -1).max(axis=1) > 0).all()
    np.testing.assert_allclose(_outside_share(maps, QUADRANT[target]), 0, atol=1e-5)


@pytest.mark.parametrize("target", [0, 1])
def test_kernel_map_lies_in_the_superpixels_that_touch_the_quadrant(images, quadrants, target):
    params = method_params("shap_kernel", {})
    maps = _maps(quadrants, images, [target] * len(images), "shap_kernel")
    segments = superpixels(images_to_tensor(images), params["n_segments"], params["compactness"])
    for image_map, segment in zip(maps, segments[:, 0].numpy(), strict=True):
        touching = np.isin(segment, np.unique(segment[QUADRANT[target]]))
        assert _outside_share(image_map[None], touching)[0] < 0.2  # at most 0.09 seen here
        # and almost nothing where the other class looks
        other = QUADRANT[1 - target] & ~touching
        assert _outside_share(image_map[None], ~other)[0] < 0.1  # at most 0.04 seen here


def test_inpainting_masker_credits_pixels_the_model_ignores(images, quadrants):
    """Why blur, not inpainting, is shap_partition's default masker: inpainted pixels are
    filled from the visible pixels around them, so hiding pixels the model never sees
    changes what it sees (config/README.md)."""
    maps = _maps(
        quadrants, images, [0] * len(images), "shap_partition", {"masker": "inpaint_telea"}
    )
    assert _outside_share(maps, TOP_LEFT).min() > 0.2


def test_maps_correlate_with_captums_on_a_nonlinear_model(images, quadrants):
    for target in (0, 1):
        targets = [target] * len(images)
        kernel = _maps(quadrants, images, targets, "shap_kernel")
        assert _pearson(kernel, _maps(quadrants, images, targets, "kernel_shap")).min() > 0.95
        partition = _maps(quadrants, images, targets, "shap_partition", {"masker": "black"})
        occlusion = _maps(quadrants, images, targets, "occlusion", {"window": 4, "stride": 2})
        assert _pearson(partition, occlusion).min() > 0.6
        gradient = _maps(
            quadrants, images, targets, "shap_gradient", {"background": "black", "n_samples": 256}
        )
        ig = _maps(quadrants, images, targets, "integrated_gradients")
        assert _pearson(gradient, ig).min() > 0.95


# --- the attributed output: the target's logit, an ensemble's output --------------------------


def _models() -> list[tuple[str, nn.Module]]:
    members = [TwoQuadrants(0), TwoQuadrants(1)]
    return [
        ("single", TwoQuadrants(0).eval()),
        ("softmax ensemble", Ensemble(members, ["a", "b"]).eval()),
        ("sigmoid ensemble", Ensemble(members, ["a", "b"], output="sigmoid").eval()),
    ]


MODELS = _models()


@pytest.mark.parametrize(("kind", "model"), MODELS, ids=[kind for kind, _ in MODELS])
def test_values_add_up_to_the_change_of_the_attributed_output(images, kind, model):
    """Kernel SHAP (efficiency enforced) and Partition (Owen values) sum to f(x) - f(black)
    for f = model(x)[target], the output captum attributes: the logit, or an ensemble's
    log mean probability / logit of the mean sigmoid, not a probability."""
    targets = np.array([0, 1, 0, 1])
    gap = _output_gap(model, images, targets)
    assert np.abs(gap).min() > 1e-3
    params = method_params("shap_kernel", {})
    kernel = _maps(model, images, targets, "shap_kernel")
    sums = [values.sum() for values in _superpixel_values(kernel, images, params)]
    np.testing.assert_allclose(sums, gap, rtol=1e-4, atol=1e-6)
    partition = _maps(model, images, targets, "shap_partition", {"masker": "black"})
    np.testing.assert_allclose(partition.reshape(4, -1).sum(axis=1), gap, rtol=1e-4, atol=1e-6)
    # The map follows the target class. A softmax ensemble's log mean probability of one
    # class depends on both logits, so both quadrants; a sigmoid one's only on its own.
    for target in (0, 1):
        maps = _maps(model, images, [target] * 4, "shap_gradient")
        outside = _outside_share(maps, QUADRANT[target])
        if kind == "softmax ensemble":
            assert outside.min() > 0.05
        else:
            np.testing.assert_allclose(outside, 0, atol=1e-5)


# --- seeds and batches ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHAP)
def test_maps_are_fixed_by_the_seed_and_independent_of_the_batch(images, quadrants, name):
    params = {"max_evals": 100} if name == "shap_partition" else {"n_samples": 64}
    targets = [0, 1, 1, 0]
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    first = _maps(quadrants, images, targets, name, params, batch_size=4, seed=5)
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)
    torch.rand(3), np.random.rand(3)  # noqa: B018 - moving the global state changes nothing
    np.testing.assert_array_equal(
        _maps(quadrants, images, targets, name, params, batch_size=1, seed=5), first
    )
    # the third image alone: its map does not depend on its neighbours
    np.testing.assert_array_equal(
        _maps(quadrants, images[2:3], targets[2:3], name, params, batch_size=1, seed=5), first[2:3]
    )
    other_seed = _maps(quadrants, images, targets, name, params, batch_size=4, seed=6)
    if METHODS[name].stochastic:
        assert not np.array_equal(other_seed, first)
    else:
        np.testing.assert_array_equal(other_seed, first)


def test_a_resnet_gives_finite_nonconstant_maps_without_progress_bars(images, capsys):
    torch.manual_seed(0)
    model = build_model("resnet18", 1, 2, SIZE).eval()
    fast = {
        "shap_partition": {"max_evals": 64},
        "shap_gradient": {"n_samples": 8, "batch_size": 4},
        "shap_kernel": {"n_samples": 64, "batch_size": 16},
    }
    for name in SHAP:
        maps = _maps(model, images[:2], [0, 1], name, fast[name], batch_size=2)
        assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32, name
        assert np.isfinite(maps).all() and (maps.reshape(2, -1).std(axis=1) > 0).all(), name
    err = capsys.readouterr().err
    assert "it/s" not in err and "%|" not in err, err
