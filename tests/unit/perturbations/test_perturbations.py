"""Every registered perturbation on real BreastMNIST and PneumoniaMNIST test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from skimage.transform import resize

from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.perturbations.apply import (
    calibration,
    image_seed,
    perturb_all_severities,
    perturb_images,
)
from saliency_robustness.perturbations.registry import (
    DATASET_MODALITY,
    FAMILIES,
    PERTURBATIONS,
    RGB_ONLY,
    SEVERITIES,
    get_perturbation,
    resolve_perturbations,
    severity_table_markdown,
)

REPO = Path(__file__).resolve().parents[3]
NAMES = sorted(PERTURBATIONS)
GRAY_NAMES = [n for n in NAMES if 1 in PERTURBATIONS[n].channels]
RGB_ONLY_NAMES = [n for n in NAMES if PERTURBATIONS[n].channels == RGB_ONLY]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
SETS_SCHEMA = SCHEMA["properties"]["perturb"]["properties"]["sets"]["properties"]
DEFAULT_SETS = {modality: spec["default"] for modality, spec in SETS_SCHEMA.items()}


def _rgb(gray: np.ndarray) -> np.ndarray:
    """Real grayscale images coloured like an H&E slide (pink-purple), so colour
    perturbations have hue and saturation to act on."""
    x = gray.astype(np.float64) / 255
    tint = np.stack([0.55 + 0.45 * x, 0.25 + 0.6 * x, 0.5 + 0.45 * x], axis=-1)
    return np.clip(np.rint(tint * 255), 0, 255).astype(np.uint8)


def _upsample(images: np.ndarray, side: int) -> np.ndarray:
    return np.stack(
        [
            np.clip(np.rint(resize(i.astype(np.float64), (side, side), order=1)), 0, 255)
            for i in images.astype(np.float64)
        ]
    ).astype(np.uint8)


@pytest.fixture(scope="module")
def images(clean_test_images) -> np.ndarray:
    return clean_test_images[:12]


@pytest.fixture(scope="module")
def rgb_images(clean_test_images) -> np.ndarray:
    return _rgb(clean_test_images[:6])


@pytest.fixture(scope="module")
def pneumonia(medmnist_dir) -> np.ndarray:
    return load_npz(medmnist_dir / "pneumoniamnist.npz", "pneumoniamnist")["test_images"]


def test_registry_entries_are_complete():
    assert len(NAMES) >= 20
    for name, spec in PERTURBATIONS.items():
        assert spec.name == name
        assert len(spec.severity_table) == len(SEVERITIES), name
        assert spec.family in FAMILIES, name
        assert spec.backend and spec.parameter and spec.description, name
        assert set(spec.channels) <= {1, 3} and spec.channels, name
    families = {spec.family for spec in PERTURBATIONS.values()}
    assert families == set(FAMILIES)
    backends = {spec.backend for spec in PERTURBATIONS.values()}
    assert {"imgaug", "torchio"} <= backends


@pytest.mark.parametrize("name", GRAY_NAMES)
@pytest.mark.parametrize("severity", [1, 5])
def test_uint8_in_uint8_out_same_shape(images, name, severity):
    out = perturb_images(images, name, severity, seed=0)
    assert out.dtype == np.uint8
    assert out.shape == images.shape
    assert not np.array_equal(out, images)


@pytest.mark.parametrize("name", NAMES)
def test_rgb_images_keep_their_shape_and_change(rgb_images, name):
    out = perturb_images(rgb_images, name, 3, seed=0)
    assert out.dtype == np.uint8
    assert out.shape == rgb_images.shape
    assert not np.array_equal(out, rgb_images)


@pytest.mark.parametrize("side", [64, 224])
@pytest.mark.parametrize("name", NAMES)
def test_larger_images(clean_test_images, name, side):
    gray = _upsample(clean_test_images[:2], side)
    batch = _rgb(gray) if name in RGB_ONLY_NAMES else gray
    out = perturb_images(batch, name, 2, seed=0)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    assert not np.array_equal(out, batch)


@pytest.mark.parametrize("name", RGB_ONLY_NAMES)
def test_rgb_only_perturbations_reject_grayscale(images, name):
    with pytest.raises(ValueError, match="RGB-only"):
        perturb_images(images, name, 1, seed=0)


@pytest.mark.parametrize("name", GRAY_NAMES)
def test_input_is_not_modified(images, name):
    before = images.copy()
    perturb_images(images, name, 4, seed=0)
    np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize("name", GRAY_NAMES)
def test_deterministic(images, name):
    first = perturb_images(images, name, 3, seed=7)
    second = perturb_images(images, name, 3, seed=7)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", GRAY_NAMES)
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


@pytest.mark.parametrize("name", RGB_ONLY_NAMES)
def test_rgb_only_deterministic_and_batch_independent(rgb_images, name):
    full = perturb_images(rgb_images, name, 4, seed=0)
    np.testing.assert_array_equal(full, perturb_images(rgb_images, name, 4, seed=0))
    part = perturb_images(rgb_images[[2, 4]], name, 4, seed=0, image_indices=[2, 4])
    np.testing.assert_array_equal(part, full[[2, 4]])


@pytest.mark.parametrize("name", GRAY_NAMES)
def test_perturb_all_severities_stacks_each_severity(images, name):
    stack = perturb_all_severities(images, name, [2, 5], seed=0)
    assert stack.shape == (2, *images.shape)
    np.testing.assert_array_equal(stack[0], perturb_images(images, name, 2, seed=0))
    np.testing.assert_array_equal(stack[1], perturb_images(images, name, 5, seed=0))


@pytest.mark.parametrize("name", NAMES)
def test_seed_dependence_matches_the_registry(images, rgb_images, name):
    batch = rgb_images if name in RGB_ONLY_NAMES else images
    seed0 = perturb_images(batch, name, 3, seed=0)
    seed1 = perturb_images(batch, name, 3, seed=1)
    if PERTURBATIONS[name].stochastic:
        assert not np.array_equal(seed0, seed1)
    else:
        np.testing.assert_array_equal(seed0, seed1)


def test_noise_differs_between_images_and_severities(images):
    same_image = np.repeat(images[:1], 2, axis=0)
    out = perturb_images(same_image, "gaussian_noise", 3, seed=0)
    assert not np.array_equal(out[0], out[1])  # each image gets its own random state
    assert image_seed(0, "gaussian_noise", 3, 0) != image_seed(0, "gaussian_noise", 3, 1)
    assert image_seed(0, "gaussian_noise", 3, 0) != image_seed(0, "gaussian_noise", 4, 0)
    assert image_seed(0, "gaussian_noise", 3, 0) == image_seed(0, "gaussian_noise", 3, 0)


def _mean_ssim(clean: np.ndarray, name: str) -> np.ndarray:
    stack = perturb_all_severities(clean, name, SEVERITIES, seed=0)
    return np.array([row["ssim"] for row in calibration(clean, stack, SEVERITIES)])


@pytest.mark.parametrize("name", GRAY_NAMES)
def test_ssim_decreases_strictly_with_severity(clean_test_images, pneumonia, name):
    """The calibration rule: on real BreastMNIST and PneumoniaMNIST test images, at 28 px
    and upsampled (bilinear) to 128 px, mean SSIM to the clean image strictly decreases
    from severity 1 to 5 and is below 1 at severity 1."""
    for dataset in (clean_test_images, pneumonia):
        for clean in (dataset[:48], _upsample(dataset[:32], 128)):
            ssim = _mean_ssim(clean, name)
            assert ssim[0] < 1.0, (name, clean.shape, ssim)
            assert np.all(np.diff(ssim) < 0), (name, clean.shape, ssim)


@pytest.mark.parametrize("name", NAMES)
def test_ssim_decreases_on_rgb_images(clean_test_images, name):
    ssim = _mean_ssim(_rgb(clean_test_images[:24]), name)
    assert np.all(np.diff(ssim) < 0), (name, ssim)


def test_calibration_rows(images):
    stack = perturb_all_severities(images, "gaussian_noise", [1, 3], seed=0)
    rows = calibration(images, stack, [1, 3])
    assert [r["severity"] for r in rows] == [1, 3]
    assert rows[0]["psnr"] > rows[1]["psnr"] > 0
    same = calibration(images, np.stack([images]), [1])
    assert same[0]["ssim"] == pytest.approx(1.0) and same[0]["psnr"] == 100.0


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
    with pytest.raises(ValueError, match="Expected images of shape"):
        perturb_images(np.zeros((2, 28, 28, 5), np.uint8), "contrast", 1, seed=0)


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


def test_wrong_severity_table_length_is_rejected(images):
    with pytest.raises(ValueError, match="severity_table needs 5"):
        perturb_images(images, "contrast", 1, seed=0, severity_table=[0.5, 0.4])


# ------------------------------------------------------------- modality sets


def test_default_modality_sets_use_registered_names_and_cover_every_flag():
    assert set(DATASET_MODALITY.values()) <= set(DEFAULT_SETS)
    assert "mri" in DEFAULT_SETS
    for modality, names in DEFAULT_SETS.items():
        assert names, modality
        assert set(names) <= set(PERTURBATIONS), (modality, set(names) - set(PERTURBATIONS))
    mri = {PERTURBATIONS[n].family for n in DEFAULT_SETS["mri"]}
    assert mri == {"MRI acquisition"}


def test_auto_picks_the_modality_set():
    config = {"perturbations": "auto", "sets": DEFAULT_SETS, "modality": {}}
    assert resolve_perturbations(config, "breastmnist", 1) == DEFAULT_SETS["ultrasound"]
    assert "speckle_noise" in DEFAULT_SETS["ultrasound"]
    assert resolve_perturbations(config, "pneumoniamnist", 1) == DEFAULT_SETS["xray"]
    # tissuemnist is grayscale microscopy: the RGB-only members of the set are left out.
    tissue = resolve_perturbations(config, "tissuemnist", 1)
    blood = resolve_perturbations(config, "bloodmnist", 3)
    assert set(blood) - set(tissue) == set(DEFAULT_SETS["microscopy"]) & set(RGB_ONLY_NAMES)
    assert set(RGB_ONLY_NAMES) & set(DEFAULT_SETS["microscopy"])


def test_explicit_list_is_kept():
    config = {"perturbations": ["spike", "contrast"], "sets": DEFAULT_SETS}
    assert resolve_perturbations(config, "anything", None) == ["spike", "contrast"]


def test_auto_for_unknown_dataset_needs_a_modality():
    config = {"perturbations": "auto", "sets": DEFAULT_SETS, "modality": {}}
    with pytest.raises(ValueError, match="perturb: {modality: {ownscans: mri}}"):
        resolve_perturbations(config, "ownscans", None)
    config["modality"] = {"ownscans": "mri"}
    assert resolve_perturbations(config, "ownscans", None) == DEFAULT_SETS["mri"]
    config["modality"] = {"ownscans": "pet"}
    with pytest.raises(ValueError, match="no set for modality 'pet'"):
        resolve_perturbations(config, "ownscans", None)


# ------------------------------------------------------------- env and docs


def test_imgaug_env_import_path():
    """The perturb env pins imaug (the maintained imgaug fork, import name ``imgaug``) with a
    NumPy 2 it supports, and the pinned pair imports and runs here (the same versions as
    requirements.txt, checked by tests/test_envs.py)."""
    import importlib.metadata

    import imgaug.augmenters as iaa

    env = yaml.safe_load((REPO / "envs" / "perturb.yaml").read_text())
    pins = dict(p.split(";")[0].split("==") for p in env["dependencies"][-1]["pip"])
    assert pins["imaug"] == importlib.metadata.version("imaug")
    assert pins["numpy"] == np.__version__ and int(np.__version__.split(".")[0]) == 2
    assert "torchio" in pins and "scipy" in pins
    out = iaa.JpegCompression(compression=50).augment_image(np.zeros((8, 8), np.uint8))
    assert out.shape == (8, 8)


def test_config_readme_lists_every_severity_table():
    readme = (REPO / "config" / "README.md").read_text()
    assert severity_table_markdown() in readme, (
        "config/README.md severity tables are out of date: paste "
        "saliency_robustness.perturbations.severity_table_markdown() there"
    )


@pytest.mark.parametrize("factor", [0.08, 0.5, 1.8])
def test_saturation_matches_scikit_image_hsv(rgb_images, factor):
    """The closed-form hsv_saturation equals scaling S in scikit-image's HSV (up to rounding)."""
    from skimage.color import hsv2rgb, rgb2hsv

    from saliency_robustness.perturbations.registry import get_perturbation

    ours = np.stack(
        [get_perturbation("hsv_saturation").transform(factor)(im, 0) for im in rgb_images]
    )
    reference = []
    for image in rgb_images:
        hsv = rgb2hsv(image)
        hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0, 1)
        reference.append(np.clip(np.rint(hsv2rgb(hsv) * 255), 0, 255))
    assert np.abs(ours.astype(int) - np.array(reference).astype(int)).max() <= 1
