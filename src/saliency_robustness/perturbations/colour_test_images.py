"""Seeded colour test images that look like MedMNIST's four RGB modalities.

Colour perturbations fail in ways that tinted grayscale images cannot show: HSV brightness
paints a fundus photograph's near-black border in saturated blotches, HSV desaturation
brightens a red fundus to white. These images carry what real RGB MedMNIST images carry
(near-black borders with noisy hue, near-white glass, saturated stains, skin tones), so
tests and the report's colour preview grid can check each perturbation on them:

- ``fundus`` (RetinaMNIST): an orange-red retina with a vignetted edge, a bright optic disc,
  a darker macula and vessels, inside a circular field of view on a noisy black border;
- ``dermatoscopy`` (DermaMNIST): a brown, irregular pigmented lesion with a darker centre on
  skin, a few hairs, and the dark corners of a dermatoscope's round field of view;
- ``pathology`` (PathMNIST): H&E stain texture made in stain space (haematoxylin nuclei,
  eosin stroma, white gaps of bare glass) and coloured with scikit-image's ``hed2rgb``;
- ``blood_smear`` (BloodMNIST): pink red cells with pale centres and a white cell with a
  lobed purple nucleus on a pale background.

The scene is drawn at 224 px (or the requested side, if larger) in coordinates relative to
the image, resized with anti-aliasing, and then gets pixel noise at the final side (as a
camera's sensor noise is per pixel), so an image means the same scene at 28 and 224 px.
Nothing here is a model of any patient; the generator is written here because no
maintained package makes such images.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.color import deltaE_ciede2000, hed2rgb, rgb2lab
from skimage.transform import resize

from saliency_robustness.perturbations.apply import calibration, perturb_images
from saliency_robustness.perturbations.registry import SEVERITIES

KINDS = ("fundus", "dermatoscopy", "pathology", "blood_smear")
# The MedMNIST flag each colour test image stands for.
DATASET_OF_KIND = {
    "fundus": "retinamnist",
    "dermatoscopy": "dermamnist",
    "pathology": "pathmnist",
    "blood_smear": "bloodmnist",
}
_DRAW_SIDE = 224
_MIN_SIDE = 8


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (y down, x right)."""
    t = (np.arange(side) + 0.5) / side * 2 - 1
    return np.meshgrid(t, t, indexing="ij")


def _smooth_noise(rng: np.random.Generator, side: int, scale: float) -> np.ndarray:
    """Gaussian noise smoothed to a correlation length of ``scale`` x the side, unit SD."""
    field = gaussian_filter(rng.standard_normal((side, side)), max(scale * side, 0.5))
    return field / max(field.std(), 1e-12)


def _soft(distance: np.ndarray, side: int, width: float = 1.0) -> np.ndarray:
    """0..1 inside-ness from a signed distance (negative inside, in [-1, 1] units), with an
    edge about ``width`` pixels wide, so shapes are anti-aliased at any side."""
    pixel = 2.0 / side
    return 1.0 / (1.0 + np.exp(distance / (0.5 * width * pixel)))


def _blend(image: np.ndarray, colour, weight: np.ndarray) -> np.ndarray:
    weight = weight[..., None]
    return image * (1 - weight) + np.asarray(colour, dtype=np.float64) * weight


def _curve_mask(
    side: int, points: np.ndarray, width: float, y: np.ndarray, x: np.ndarray
) -> np.ndarray:
    """Soft mask of a polyline (points in [-1, 1] units, (N, 2) as y, x), ``width`` wide."""
    distance = np.full(y.shape, np.inf)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:], strict=True):
        dy, dx = y1 - y0, x1 - x0
        length2 = max(dy * dy + dx * dx, 1e-12)
        t = np.clip(((y - y0) * dy + (x - x0) * dx) / length2, 0, 1)
        distance = np.minimum(distance, np.hypot(y - (y0 + t * dy), x - (x0 + t * dx)))
    return _soft(distance - width / 2, side)


def _fundus(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(side)
    r = np.hypot(y, x)
    texture = _smooth_noise(rng, side, 0.04)
    shade = (1 - 0.45 * r**2) * (1 + 0.05 * texture)  # vignetting towards the field's edge
    image = np.asarray([200.0, 78.0, 28.0]) * shade[..., None]
    disc_y, disc_x = rng.uniform(-0.12, 0.12), rng.choice([-1, 1]) * rng.uniform(0.3, 0.4)
    macula = np.hypot(y - disc_y * 0.5, x + disc_x * 0.85)
    image *= 1 - 0.3 * np.exp(-((macula / 0.17) ** 2))[..., None]  # darker macula
    for direction in (-1, -1, 1, 1):  # vessels leave the disc up and down, arching round
        t = np.linspace(0, 1, 24)
        reach = rng.uniform(0.8, 1.1)
        points = np.stack(
            [
                disc_y + direction * reach * np.sin(t * rng.uniform(1.2, 1.6)) * 0.75,
                disc_x - np.sign(disc_x) * reach * t**1.6 * rng.uniform(0.7, 1.0),
            ],
            axis=-1,
        )
        vessel = _curve_mask(side, points, rng.uniform(0.025, 0.04), y, x)
        image = _blend(image, (115, 22, 12), 0.75 * vessel)
    disc = np.hypot(y - disc_y, x - disc_x)
    image = _blend(image, (248, 205, 125), _soft(disc - 0.15, side, 6))
    image = _blend(image, (255, 240, 185), _soft(disc - 0.06, side, 4))  # pale cup
    field = _soft(r - 0.9, side, 2)  # circular field of view on a black border
    return image, field


def _dermatoscopy(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(side)
    skin = np.asarray([226.0, 172.0, 146.0])
    image = skin * (1 + 0.04 * _smooth_noise(rng, side, 0.08))[..., None]
    cy, cx = rng.uniform(-0.12, 0.12, 2)
    theta = np.arctan2(y - cy, x - cx)
    phases = rng.uniform(0, 2 * np.pi, 2)
    radius = 0.5 * (1 + 0.12 * np.sin(3 * theta + phases[0]) + 0.07 * np.sin(5 * theta + phases[1]))
    rho = np.hypot(y - cy, x - cx) / radius
    lesion = _soft(rho - 1, side, 4)
    network = _smooth_noise(rng, side, 0.015)  # pigment network: darker blotches
    depth = np.clip(1 - rho, 0, 1) + 0.15 * network
    brown = np.asarray([172.0, 112.0, 82.0]) * (1 - 0.5 * np.clip(depth, 0, 1))[..., None]
    image = image * (1 - lesion[..., None]) + brown * lesion[..., None]
    for _ in range(2):  # hairs
        start = rng.uniform(-1, 1, 2)
        angle = rng.uniform(0, np.pi)
        t = np.linspace(-1.5, 1.5, 16)[:, None]
        bend = 0.15 * rng.uniform(-1, 1) * t**2
        points = start + t * [np.sin(angle), np.cos(angle)] + bend * [np.cos(angle), -np.sin(angle)]
        image = _blend(image, (45, 32, 26), 0.85 * _curve_mask(side, points, 0.012, y, x))
    field = _soft(np.hypot(y, x) - 1.15, side, 8)  # the dermatoscope's round field
    return image, field


def _pathology(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(side)
    # Stain concentrations in scikit-image's HED units (hed2rgb of 0.05 H is a mid purple).
    fibres = _smooth_noise(rng, side, 0.02) + 0.6 * _smooth_noise(rng, side, 0.06)
    tissue = _soft(-(_smooth_noise(rng, side, 0.1) + 0.9), side, 6)  # white gaps of bare glass
    eosin = (0.032 + 0.014 * np.tanh(fibres)) * tissue
    haematoxylin = 0.012 * tissue
    for _ in range(int(rng.integers(22, 30))):  # nuclei: ellipses of dense haematoxylin
        ny, nx = rng.uniform(-1, 1, 2)
        a, b = rng.uniform(0.05, 0.09), rng.uniform(0.035, 0.06)
        angle = rng.uniform(0, np.pi)
        u = (y - ny) * np.cos(angle) + (x - nx) * np.sin(angle)
        v = -(y - ny) * np.sin(angle) + (x - nx) * np.cos(angle)
        nucleus = _soft(np.hypot(u / a, v / b) - 1, side, 1.5 / b) * tissue
        haematoxylin = np.maximum(haematoxylin, rng.uniform(0.07, 0.11) * nucleus)
    hed = np.stack([haematoxylin, eosin, np.zeros_like(eosin)], axis=-1)
    return hed2rgb(hed) * 255, np.ones((side, side))


def _blood_smear(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(side)
    image = (
        np.asarray([234.0, 222.0, 212.0]) * (1 + 0.02 * _smooth_noise(rng, side, 0.1))[..., None]
    )
    wbc_y, wbc_x = rng.uniform(-0.1, 0.1, 2)
    centres: list[np.ndarray] = []
    for _ in range(200):  # red cells, not on the white cell and barely overlapping
        if len(centres) >= 11:
            break
        centre = rng.uniform(-1.05, 1.05, 2)
        if np.hypot(*(centre - [wbc_y, wbc_x])) < 0.55:
            continue
        if any(np.hypot(*(centre - c)) < 0.34 for c in centres):
            continue
        centres.append(centre)
    for cy, cx in centres:
        radius = rng.uniform(0.17, 0.2)
        rho = np.hypot(y - cy, x - cx) / radius
        cell = _soft(rho - 1, side, 3 / radius)
        pallor = np.exp(-((rho / 0.4) ** 2))  # the biconcave disc's pale centre
        colour = np.asarray([214.0, 128.0, 132.0])
        fill = colour + (np.asarray([228.0, 172.0, 170.0]) - colour) * pallor[..., None]
        image = image * (1 - cell[..., None]) + fill * cell[..., None]
    rho = np.hypot(y - wbc_y, x - wbc_x)
    image = _blend(image, (206, 184, 218), _soft(rho - 0.34, side, 3))  # cytoplasm
    nucleus = np.zeros_like(rho)
    for angle in rng.uniform(0, 2 * np.pi) + np.arange(3) * 2.1:  # three lobes
        ly, lx = wbc_y + 0.12 * np.sin(angle), wbc_x + 0.12 * np.cos(angle)
        nucleus = np.maximum(nucleus, _soft(np.hypot(y - ly, x - lx) - 0.12, side, 2))
    shade = 1 + 0.06 * _smooth_noise(rng, side, 0.02)
    nucleus_colour = np.asarray([96.0, 46.0, 138.0]) * shade[..., None]
    image = image * (1 - nucleus[..., None]) + nucleus_colour * nucleus[..., None]
    return image, np.ones((side, side))


_DRAW = {
    "fundus": _fundus,
    "dermatoscopy": _dermatoscopy,
    "pathology": _pathology,
    "blood_smear": _blood_smear,
}
# Pixel noise at the final side (standard deviation on 0..255, independent per channel, as
# a colour camera's), and the noise floor of dark borders: values 0..6 with a random hue, as
# in real fundus photographs and dermatoscopy corners (JPEG and sensor noise).
_NOISE_SD = 2.0
_BORDER_NOISE_MAX = 6


def colour_test_image(kind: str, size: int = 28, seed: int = 0) -> np.ndarray:
    """One colour test image, uint8 (size, size, 3), the same for the same (kind, size, seed)."""
    if kind not in _DRAW:
        raise ValueError(f"Unknown colour test image '{kind}'. Valid kinds: {', '.join(KINDS)}.")
    if int(size) != size or size < _MIN_SIDE:
        raise ValueError(f"Colour test images need an integer size >= {_MIN_SIDE}, got {size}.")
    size = int(size)
    rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
    side = max(size, _DRAW_SIDE)
    image, field = _DRAW[kind](rng, side)
    if side != size:
        image = resize(image, (size, size, 3), order=1, anti_aliasing=True, preserve_range=True)
        field = resize(field, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    noise_rng = np.random.default_rng([seed, zlib.crc32(kind.encode()), size])
    image = image + noise_rng.normal(0, _NOISE_SD, image.shape) * field[..., None]
    border = noise_rng.integers(0, _BORDER_NOISE_MAX + 1, image.shape)
    image = image * field[..., None] + border * (1 - field[..., None])
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def colour_test_images(size: int = 28, seed: int = 0, per_kind: int = 1) -> np.ndarray:
    """``per_kind`` images of each kind (seeds ``seed``, ``seed + 1``, ...), grouped by kind
    in ``KINDS`` order: uint8 (4 * per_kind, size, size, 3)."""
    return np.stack(
        [colour_test_image(kind, size, seed + i) for kind in KINDS for i in range(per_kind)]
    )


def mosaic(images: np.ndarray, gap: int = 1) -> np.ndarray:
    """The four images of one ``colour_test_images`` call (``per_kind`` 1) as a 2 x 2 tile,
    ``KINDS`` in reading order, with a white ``gap`` in pixels between them."""
    if images.shape[0] != len(KINDS):
        raise ValueError(f"mosaic needs one image of each of the {len(KINDS)} kinds.")
    n, h, w, c = images.shape
    out = np.full((2 * h + gap, 2 * w + gap, c), 255, dtype=images.dtype)
    for i, image in enumerate(images):
        row, col = divmod(i, 2)
        out[row * (h + gap) : row * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = image
    return out


def colour_preview(
    names: Sequence[str],
    severities: Sequence[int],
    size: int,
    seed: int,
    severity_tables: Mapping[str, Sequence[float] | None] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The four colour test images (seed ``seed``) as a mosaic, and each perturbation's
    mosaics at every severity, (len(severities), H, W, 3), perturbed with the study's
    ``seed`` and ``severity_tables`` (name -> five values, replacing the registry's)."""
    tables = severity_tables or {}
    clean = colour_test_images(size, seed)
    stacks = {
        name: np.stack(
            [
                mosaic(perturb_images(clean, name, s, seed, severity_table=tables.get(name)))
                for s in severities
            ]
        )
        for name in names
    }
    return mosaic(clean), stacks


def colour_calibration(
    names: Sequence[str],
    size: int = 28,
    seed: int = 0,
    per_kind: int = 8,
    severity_tables: Mapping[str, Sequence[float] | None] | None = None,
) -> list[dict]:
    """Mean SSIM (as the calibration rule computes it) and mean CIEDE2000 colour difference
    of perturbed vs clean colour test images, per perturbation, kind and severity 1..5, and
    over all kinds (kind ``all``). SSIM barely sees a change of colour that keeps structure;
    the colour difference does (about 2 is just noticeable)."""

    tables = severity_tables or {}
    images = colour_test_images(size, seed, per_kind)
    lab = rgb2lab(images)
    rows = []
    for name in names:
        for severity in SEVERITIES:
            out = perturb_images(images, name, severity, seed, severity_table=tables.get(name))
            delta = deltaE_ciede2000(lab, rgb2lab(out)).mean(axis=(1, 2))
            for k, kind in enumerate([*KINDS, "all"]):
                part = slice(None) if kind == "all" else slice(k * per_kind, (k + 1) * per_kind)
                ssim = calibration(images[part], out[None, part], [severity])[0]["ssim"]
                rows.append(
                    {
                        "perturbation": name,
                        "kind": kind,
                        "size": size,
                        "severity": severity,
                        "ssim": ssim,
                        "delta_e": float(delta[part].mean()),
                    }
                )
    return rows
