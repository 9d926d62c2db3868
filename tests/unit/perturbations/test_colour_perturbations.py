"""Colour perturbations on colour test images that look like MedMNIST's RGB modalities.

Tinted grayscale images cannot show what breaks colour perturbations on real RGB data: a
fundus photograph's near-black border with noisy hue (HSV brightness paints it in colour),
a saturated red retina (HSV desaturation brightens it), bare white glass (an additive stain
shift tints it). ``saliency_robustness.colour_test_images`` makes such images; these tests
run every RGB perturbation on them at 28 and 224 px and check that the colour perturbations
behave like a camera or a slide: exposure adds light to every channel, desaturation keeps
lightness, stain changes leave glass white and opaque pixels dark.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from skimage.color import deltaE_ciede2000, rgb2hsv, rgb2lab
from skimage.transform import resize

from saliency_robustness.perturbations.apply import (
    calibration,
    perturb_all_severities,
    perturb_images,
)
from saliency_robustness.perturbations.colour_test_images import (
    DATASET_OF_KIND,
    KINDS,
    colour_calibration,
    colour_preview,
    colour_test_image,
    colour_test_images,
    mosaic,
)
from saliency_robustness.perturbations.registry import DATASET_MODALITY, PERTURBATIONS, SEVERITIES

REPO = Path(__file__).resolve().parents[3]
RGB_NAMES = sorted(name for name, spec in PERTURBATIONS.items() if 3 in spec.channels)
SIZES = (28, 224)
NEAR_BLACK = 10  # max(R, G, B) at most this: a dark border, opaque dust
NEAR_WHITE = 235  # min(R, G, B) at least this: bare glass, a blown-out highlight


def _chroma(lab: np.ndarray) -> np.ndarray:
    return np.hypot(lab[..., 1], lab[..., 2])


def _spread(images: np.ndarray) -> np.ndarray:
    """max - min over the channels: 0 for a neutral (grey) pixel."""
    x = images.astype(int)
    return x.max(axis=-1) - x.min(axis=-1)


@pytest.fixture(scope="module", params=SIZES, ids=[f"{s}px" for s in SIZES])
def colour(request) -> np.ndarray:
    """Two of each colour test image (eight images) at 28 or 224 px."""
    return colour_test_images(request.param, seed=0, per_kind=2)


@pytest.fixture(scope="module")
def colour_lab(colour) -> np.ndarray:
    return rgb2lab(colour)


# ------------------------------------------------------------- the test images


@pytest.mark.parametrize("size", SIZES)
def test_colour_test_images_are_seeded_uint8_rgb(size):
    images = colour_test_images(size, seed=3)
    assert images.shape == (len(KINDS), size, size, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, colour_test_images(size, seed=3))
    assert not np.array_equal(images, colour_test_images(size, seed=4))
    grouped = colour_test_images(size, seed=3, per_kind=2)
    assert grouped.shape[0] == 2 * len(KINDS)
    np.testing.assert_array_equal(grouped[1], colour_test_image(KINDS[0], size, 4))
    np.testing.assert_array_equal(grouped[2], colour_test_image(KINDS[1], size, 3))


def test_every_rgb_medmnist_flag_has_a_colour_test_image():
    from saliency_robustness.datasets.info import dataset_info

    assert list(DATASET_OF_KIND) == list(KINDS)
    rgb_flags = {flag for flag in DATASET_MODALITY if dataset_info(flag).n_channels == 3}
    assert set(DATASET_OF_KIND.values()) == rgb_flags


@pytest.mark.parametrize("size", SIZES)
def test_colour_test_images_carry_what_breaks_colour_perturbations(size):
    """The failure cases are present: near-black border pixels with full HSV saturation and
    noisy hue (fundus, dermatoscope corners), bare white glass and strongly saturated stain
    (H&E), a pale background with purple nuclei (blood smear)."""
    images = dict(zip(KINDS, colour_test_images(size, seed=0), strict=True))
    fundus = images["fundus"]
    dark = fundus.max(axis=-1) <= NEAR_BLACK
    assert dark.mean() > 0.15
    hsv = rgb2hsv(fundus)
    noisy_hue = dark & (hsv[..., 1] == 1.0)
    assert noisy_hue.sum() > 0.02 * size * size
    assert len(np.unique(np.argmax(fundus[noisy_hue], axis=-1))) == 3  # every hue occurs
    corners = images["dermatoscopy"][[0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.max() <= NEAR_BLACK
    pathology = images["pathology"]
    assert (pathology.min(axis=-1) >= 245).mean() > 0.03  # glass
    assert (_chroma(rgb2lab(pathology)) > 30).mean() > 0.5  # stained tissue
    blood = rgb2lab(images["blood_smear"])
    assert (blood[..., 0] > 85).mean() > 0.4  # pale background
    assert ((blood[..., 2] < -25) & (blood[..., 0] < 50)).any()  # purple (blue-violet) nucleus


def test_28px_images_show_the_same_scene_as_224px():
    for kind in KINDS:
        large = colour_test_image(kind, 224, 0).astype(float)
        small = colour_test_image(kind, 28, 0).astype(float)
        down = resize(large, (28, 28, 3), order=1, anti_aliasing=True, preserve_range=True)
        assert np.abs(down - small).mean() < 4, kind  # grey levels: pixel noise only


def test_bad_kind_and_size_are_rejected():
    with pytest.raises(ValueError, match="Valid kinds: fundus, dermatoscopy"):
        colour_test_image("xray", 28)
    with pytest.raises(ValueError, match="integer size >= 8"):
        colour_test_image("fundus", 4)
    with pytest.raises(ValueError, match="one image of each"):
        mosaic(colour_test_images(28)[:3])


def test_mosaic_tiles_the_four_images_in_reading_order():
    images = colour_test_images(28, seed=1)
    tile = mosaic(images, gap=2)
    assert tile.shape == (58, 58, 3)
    np.testing.assert_array_equal(tile[:28, :28], images[0])
    np.testing.assert_array_equal(tile[:28, 30:], images[1])
    np.testing.assert_array_equal(tile[30:, :28], images[2])
    np.testing.assert_array_equal(tile[30:, 30:], images[3])
    assert (tile[28:30] == 255).all()


# ------------------------------------------- every RGB perturbation on every image


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", RGB_NAMES)
def test_every_rgb_perturbation_runs_on_the_colour_images(name, size):
    """All four colour test images at all five severities: uint8, same shape, changed, and
    the same again for the same seed."""
    images = colour_test_images(size, seed=0)
    stack = perturb_all_severities(images, name, SEVERITIES, seed=5)
    assert stack.dtype == np.uint8 and stack.shape == (len(SEVERITIES), *images.shape)
    for level in stack:
        assert not np.array_equal(level, images), name
    np.testing.assert_array_equal(perturb_images(images, name, 3, seed=5), stack[2])


# ------------------------------------------------------------------- brightness


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_keeps_near_black_pixels_neutral(colour, severity):
    """Over-exposure lifts a near-black border to grey, not to colour: the spread between
    channels (0 for grey) cannot grow, and the Lab chroma stays that of a few grey levels."""
    dark = colour.max(axis=-1) <= NEAR_BLACK
    assert dark.sum() > 100
    out = perturb_images(colour, "brightness", severity, seed=0)
    assert (out[dark].min(axis=-1) > colour[dark].max(axis=-1)).all()  # brighter
    assert (_spread(out)[dark] <= _spread(colour)[dark]).all()
    assert _chroma(rgb2lab(out))[dark].max() < 8


@pytest.mark.parametrize("severity", [2, 3, 4, 5])
def test_the_check_catches_hsv_brightness(colour, severity):
    """The ImageNet-C definition (kept as hsv_brightness) fails the check above: a pixel such
    as (3, 1, 0) has full HSV saturation, so raising its value gives a saturated colour."""
    dark = colour.max(axis=-1) <= NEAR_BLACK
    out = perturb_images(colour, "hsv_brightness", severity, seed=0)
    assert _chroma(rgb2lab(out))[dark].max() > 30
    assert (_spread(out)[dark] > _spread(colour)[dark]).any()


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_keeps_near_white_pixels_near_white(colour, colour_lab, severity):
    light = colour.min(axis=-1) >= NEAR_WHITE
    assert light.sum() > 20
    out = perturb_images(colour, "brightness", severity, seed=0)
    assert (out[light].astype(int) >= colour[light]).all()
    assert (_spread(out)[light] <= _spread(colour)[light]).all()
    assert (_chroma(rgb2lab(out))[light] <= _chroma(colour_lab)[light] + 0.5).all()


def test_grayscale_brightness_is_unchanged(clean_test_images):
    """Grayscale studies keep their numbers: brightness on grey images is the shift it was
    (hsv_brightness, the former definition, on grey images), bit for bit, at 28 and 224 px,
    and a grey pixel of an RGB image gets the same value in every channel."""
    gray = clean_test_images[:24]
    large = np.clip(
        np.rint(np.stack([resize(i.astype(float), (224, 224), order=1) for i in gray[:4]])),
        0,
        255,
    ).astype(np.uint8)
    for images in (gray, large, gray[..., None]):
        for severity in SEVERITIES:
            new = perturb_images(images, "brightness", severity, seed=0)
            old = perturb_images(images, "hsv_brightness", severity, seed=0)
            np.testing.assert_array_equal(new, old)
            shift = PERTURBATIONS["brightness"].severity_table[severity - 1] * 255
            expected = np.clip(np.rint(images.astype(float) + shift), 0, 255)
            np.testing.assert_array_equal(new, expected)
    rgb_grey = np.repeat(gray[..., None], 3, axis=-1)
    for severity in SEVERITIES:
        out = perturb_images(rgb_grey, "brightness", severity, seed=0)
        expected = perturb_images(gray, "brightness", severity, seed=0)
        for channel in range(3):
            np.testing.assert_array_equal(out[..., channel], expected)


# ------------------------------------------------------------------- saturation


@pytest.mark.parametrize("severity", SEVERITIES)
def test_saturation_scales_chroma_at_fixed_lightness(colour, colour_lab, severity):
    """CIE Lab: L* unchanged (up to 8-bit rounding), chroma multiplied by the factor, hue
    angle kept, on every pixel with visible colour."""
    factor = PERTURBATIONS["saturation"].severity_table[severity - 1]
    out = rgb2lab(perturb_images(colour, "saturation", severity, seed=0))
    assert np.abs(out[..., 0] - colour_lab[..., 0]).max() < 0.5
    chroma = _chroma(colour_lab)
    coloured = chroma > 20  # 8-bit rounding moves the ratio of fainter colours more
    ratio = _chroma(out)[coloured] / chroma[coloured]
    assert np.abs(ratio - factor).max() < 0.05, (factor, ratio.min(), ratio.max())
    # a*, b* of the result are factor x the original's (same hue), up to 8-bit rounding.
    difference = out[..., 1:] - factor * colour_lab[..., 1:]
    error = np.hypot(difference[..., 0], difference[..., 1])
    assert error.max() < 1.0, error.max()


@pytest.mark.parametrize("severity", [2, 3, 4, 5])
def test_the_check_catches_hsv_saturation(colour, colour_lab, severity):
    """The ImageNet-C definition (hsv_saturation) keeps V = max(R, G, B): the image brightens
    as it loses colour."""
    out = rgb2lab(perturb_images(colour, "hsv_saturation", severity, seed=0))
    assert (out[..., 0] - colour_lab[..., 0]).max() > 10


# ------------------------------------------------------------------ stain shift


@pytest.mark.parametrize("name", ["stain_shift", "tellez_stain_shift"])
def test_stain_shift_keeps_glass_white_and_opaque_pixels_dark(colour, colour_lab, name):
    """Bare glass carries no stain and an opaque pixel (a black border, dust) transmits no
    light whatever the stain: neither may change colour. Tellez et al.'s additive term and
    rgb2hed's clipping break both, which is why it is kept only for comparison."""
    glass = colour.min(axis=-1) >= 248  # white up to camera noise
    dark = colour.max(axis=-1) <= NEAR_BLACK
    assert glass.sum() > 20 and dark.sum() > 100
    glass_change, dark_chroma, dark_value = [], [], []
    for severity in SEVERITIES:
        for seed in range(4):  # random stain directions
            out = perturb_images(colour, name, severity, seed=seed)
            lab = rgb2lab(out)
            glass_change.append(deltaE_ciede2000(colour_lab[glass], lab[glass]).max())
            dark_chroma.append(_chroma(lab)[dark].max())
            dark_value.append(int(out[dark].max()))
    if name == "stain_shift":
        assert max(glass_change) < 1, glass_change  # below a just noticeable difference
        assert max(dark_chroma) < 5 and max(dark_value) <= NEAR_BLACK, (dark_chroma, dark_value)
    else:
        assert max(glass_change) > 20 and max(dark_chroma) > 10, (glass_change, dark_chroma)


@pytest.mark.parametrize("size", SIZES)
def test_stain_shift_at_factor_one_returns_the_image(size):
    images = colour_test_images(size, seed=2)
    out = perturb_images(images, "stain_shift", 3, seed=0, severity_table=[0.0] * 5)
    np.testing.assert_array_equal(out, images)


def test_stain_shift_scales_the_stain_amounts():
    """On the H&E image, the haematoxylin and eosin above the noise floor change by one
    factor per stain and image: a change of staining, not of structure."""
    from saliency_robustness.perturbations.numpy_backend import _STAIN_NOISE, _stain_amounts

    image = colour_test_image("pathology", 224, 0)[None]
    before = _stain_amounts(image)
    after = _stain_amounts(perturb_images(image, "stain_shift", 4, seed=0))
    for stain, low in ((0, 0.05), (1, 0.03)):  # nuclei; stroma
        present = before[..., stain] > low
        slope = (after - before)[..., stain][present] / (before[..., stain][present] - _STAIN_NOISE)
        factor = 1 + np.median(slope)
        assert abs(np.log(factor)) > np.log(1 + 4.5) * 0.8 * 0.9, factor  # severity 4: >= x4.0
        assert np.std(slope) < 0.05 * abs(np.median(slope)), (stain, np.std(slope))


# ------------------------------------------------------ grey pixels stay grey


@pytest.mark.parametrize(
    "name", ["brightness", "saturation", "contrast", "gamma", "hsv_brightness", "hsv_saturation"]
)
def test_neutral_pixels_stay_neutral(name):
    """A perturbation of brightness, contrast or colour turns exactly grey pixels into grey
    pixels (stain shift is left out: grey tissue is a mixture of stains)."""
    ramp = np.repeat(np.linspace(0, 255, 28 * 28).reshape(1, 28, 28, 1), 3, axis=-1)
    ramp = np.rint(ramp).astype(np.uint8)
    for severity in SEVERITIES:
        out = perturb_images(ramp, name, severity, seed=0)
        assert _spread(out).max() <= 1, (name, severity)


# ------------------------------------------------------------------- calibration


def _monotone(name: str, kind: str, ssim: np.ndarray, delta: np.ndarray) -> None:
    assert ssim[0] < 1 and np.all(np.diff(ssim) < 0), (name, kind, ssim)
    assert np.all(np.diff(delta) > 0), (name, kind, delta)


@pytest.mark.parametrize("size", SIZES)
def test_brightness_and_saturation_degrade_monotonically_on_every_kind(size):
    """On the colour test images (two of each kind: both are deterministic), mean SSIM falls
    and the mean CIEDE2000 colour difference grows strictly from severity 1 to 5, per kind
    and over all."""
    rows = colour_calibration(["brightness", "saturation"], size, seed=0, per_kind=2)
    for name in ("brightness", "saturation"):
        for kind in [*KINDS, "all"]:
            mine = sorted(
                (r for r in rows if r["perturbation"] == name and r["kind"] == kind),
                key=lambda r: r["severity"],
            )
            ssim = np.array([r["ssim"] for r in mine])
            _monotone(name, kind, ssim, np.array([r["delta_e"] for r in mine]))


@pytest.mark.parametrize("size", SIZES)
def test_stain_shift_degrades_monotonically_on_stained_images(size):
    """Stain shift draws a random direction per image (more or less of each stain), so its
    levels separate in the mean over images: here the H&E and blood-smear images, eight of
    each, the modalities whose perturbation sets hold it."""
    images = np.stack(
        [colour_test_image(k, size, i) for k in ("pathology", "blood_smear") for i in range(8)]
    )
    lab = rgb2lab(images)
    stack = perturb_all_severities(images, "stain_shift", SEVERITIES, seed=0)
    ssim = np.array([row["ssim"] for row in calibration(images, stack, SEVERITIES)])
    delta = np.array([deltaE_ciede2000(lab, rgb2lab(level)).mean() for level in stack])
    _monotone("stain_shift", "pathology + blood_smear", ssim, delta)


def test_colour_preview_uses_the_study_tables():
    clean, stacks = colour_preview(
        ["brightness", "stain_shift"], [1, 5], 28, seed=7, severity_tables={"brightness": [0] * 5}
    )
    assert clean.shape == (57, 57, 3)
    assert set(stacks) == {"brightness", "stain_shift"}
    assert stacks["stain_shift"].shape == (2, 57, 57, 3)
    np.testing.assert_array_equal(stacks["brightness"][1], clean)  # the override: no shift
    expected = perturb_images(colour_test_images(28, 7), "stain_shift", 5, seed=7)
    np.testing.assert_array_equal(stacks["stain_shift"][1], mosaic(expected))


# ------------------------------------------------------------------ the workflow


def _snakemake(workdir: Path, *args: str, config: dict) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    extra = workdir / "colour.yaml"
    extra.write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--cores", "1",
        "--configfile", str(REPO / "config" / "config.yaml"),
        str(REPO / "config" / "presets" / "tiny.yaml"), str(extra),
        *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ""}  # the library reaches the script via the Snakefile
    return subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


@pytest.mark.workflow
def test_workflow_renders_the_colour_preview_grid_for_rgb_studies(tmp_path):
    """A study with RGB datasets gets the colour preview grid in rule all (and the report);
    one light job builds it without any dataset file. A grayscale study does not."""
    target = "results/plots/colour_test_images/perturbation_grid.png"
    rgb = {
        "data": {"datasets": ["dermamnist", "pathmnist"]},
        "perturb": {"perturbations": "auto"},
        "analysis": {"run": []},  # a smaller DAG to plan
    }
    planned = _snakemake(tmp_path / "rgb", "-n", config=rgb)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "plot_colour_perturbations" in planned.stdout
    gray = _snakemake(tmp_path / "gray", "-n", config={"analysis": {"run": []}})
    assert gray.returncode == 0, gray.stderr[-3000:]
    assert "plot_colour_perturbations" not in gray.stdout
    built = _snakemake(tmp_path / "rgb", "--", target, config=rgb)
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "rgb" / target).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "rgb" / "resources").exists()  # no dataset was needed
    from matplotlib.image import imread

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    sets = schema["properties"]["perturb"]["properties"]["sets"]["properties"]
    rows = set(sets["dermatoscopy"]["default"]) | set(sets["pathology"]["default"])
    dpi = yaml.safe_load((REPO / "config" / "presets" / "tiny.yaml").read_text())["plots"]["dpi"]
    figure = imread(tmp_path / "rgb" / target)
    # One row of 1.3 inches per RGB perturbation of the two datasets' sets.
    assert 0.9 * len(rows) * 1.3 * dpi < figure.shape[0] < 1.1 * len(rows) * 1.3 * dpi
