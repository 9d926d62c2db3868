"""Every registered perturbation on real BreastMNIST test images."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from saliency_robustness.perturbations import (
    PERTURBATIONS,
    SEVERITIES,
    get_perturbation,
    image_seed,
    perturb_all_severities,
    perturb_images,
)

NAMES = sorted(PERTURBATIONS)
# Perturbations whose transform has no random part (fixed kernel or factor): the seed cannot
# change them. Every other registered perturbation must depend on the seed.
SEED_FREE = {"motion_blur", "contrast"}


@pytest.fixture(scope="module")
def images(clean_test_images) -> np.ndarray:
    return clean_test_images[:12]


@pytest.fixture(scope="module")
def stacks(clean_test_images) -> dict[str, np.ndarray]:
    """Every perturbation at every severity on the whole real test set (seed 0)."""
    return {name: perturb_all_severities(clean_test_images, name, SEVERITIES, 0) for name in NAMES}


def test_registry_entries_are_complete():
    assert NAMES, "no perturbation registered"
    for name, spec in PERTURBATIONS.items():
        assert len(spec.severity_table) == len(SEVERITIES), name
        assert spec.family and spec.backend and spec.parameter, name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("severity", [1, 5])
def test_uint8_in_uint8_out_same_shape(images, name, severity):
    out = perturb_images(images, name, severity, seed=0)
    assert out.dtype == np.uint8
    assert out.shape == images.shape
    assert not np.array_equal(out, images)


@pytest.mark.parametrize("name", NAMES)
def test_rgb_images_keep_their_shape(images, name):
    rgb = np.repeat(images[:3, :, :, None], 3, axis=-1)
    out = perturb_images(rgb, name, 3, seed=0)
    assert out.dtype == np.uint8
    assert out.shape == rgb.shape


@pytest.mark.parametrize("name", NAMES)
def test_input_is_not_modified(images, name):
    before = images.copy()
    perturb_images(images, name, 4, seed=0)
    np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(images, name):
    first = perturb_images(images, name, 3, seed=7)
    second = perturb_images(images, name, 3, seed=7)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", NAMES)
def test_independent_of_batch_and_subset(images, name):
    full = perturb_images(images, name, 4, seed=0)
    subset = [1, 5, 6, 11]
    part = perturb_images(images[subset], name, 4, seed=0, image_indices=subset)
    np.testing.assert_array_equal(part, full[subset])
    reversed_order = perturb_images(images[::-1], name, 4, seed=0, image_indices=range(11, -1, -1))
    np.testing.assert_array_equal(reversed_order, full[::-1])
    one_by_one = np.concatenate(
        [perturb_images(images[i : i + 1], name, 4, seed=0, image_indices=[i]) for i in range(12)]
    )
    np.testing.assert_array_equal(one_by_one, full)


@pytest.mark.parametrize("name", NAMES)
def test_perturb_all_severities_stacks_each_severity(images, name):
    stack = perturb_all_severities(images, name, [2, 5], seed=0)
    assert stack.shape == (2, *images.shape)
    np.testing.assert_array_equal(stack[0], perturb_images(images, name, 2, seed=0))
    np.testing.assert_array_equal(stack[1], perturb_images(images, name, 5, seed=0))


@pytest.mark.parametrize("name", NAMES)
def test_seed_dependence(images, name):
    seed0 = perturb_images(images, name, 3, seed=0)
    seed1 = perturb_images(images, name, 3, seed=1)
    if name in SEED_FREE:
        np.testing.assert_array_equal(seed0, seed1)
    else:
        assert not np.array_equal(seed0, seed1)


def test_noise_differs_between_images_and_severities(images):
    same_image = np.repeat(images[:1], 2, axis=0)
    out = perturb_images(same_image, "gaussian_noise", 3, seed=0)
    assert not np.array_equal(out[0], out[1])  # each image gets its own random state
    assert image_seed(0, "gaussian_noise", 3, 0) != image_seed(0, "gaussian_noise", 3, 1)
    assert image_seed(0, "gaussian_noise", 3, 0) != image_seed(0, "gaussian_noise", 4, 0)
    assert image_seed(0, "gaussian_noise", 3, 0) == image_seed(0, "gaussian_noise", 3, 0)


@pytest.mark.parametrize("name", NAMES)
def test_ssim_to_clean_decreases_strictly_with_severity(clean_test_images, stacks, name):
    ssim = np.array(
        [
            [
                structural_similarity(c, p, data_range=255)
                for c, p in zip(clean_test_images, level, strict=True)
            ]
            for level in stacks[name]
        ]
    )  # (severity, image)
    mean = ssim.mean(axis=1)
    assert mean[0] < 1.0
    assert np.all(np.diff(mean) < 0), mean
    per_image = np.all(np.diff(ssim, axis=0) < 0, axis=0)
    assert per_image.mean() >= 0.95, per_image.mean()


def test_float_images_are_rejected(images):
    with pytest.raises(TypeError, match="uint8"):
        perturb_images(images.astype(np.float32) / 255, "gaussian_noise", 1, seed=0)


@pytest.mark.parametrize("severity", [0, 6, -1])
def test_severity_outside_one_to_five_is_rejected(images, severity):
    with pytest.raises(ValueError, match="Severity must be one of"):
        perturb_images(images, "gaussian_noise", severity, seed=0)


def test_image_with_wrong_dimensions_is_rejected(images):
    with pytest.raises(ValueError, match="Expected images of shape"):
        perturb_images(images[0], "contrast", 1, seed=0)


def test_unknown_perturbation_lists_valid_names(images):
    with pytest.raises(KeyError) as excinfo:
        perturb_images(images, "fog", 1, seed=0)
    message = str(excinfo.value)
    assert "fog" in message
    for name in NAMES:
        assert name in message
    with pytest.raises(KeyError, match="gaussian_noise"):
        get_perturbation("gaussian-noise")


def test_image_indices_of_the_wrong_length_are_rejected(images):
    with pytest.raises(ValueError):
        perturb_images(images[:4], "gaussian_noise", 1, seed=0, image_indices=[0, 1])
