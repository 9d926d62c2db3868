"""Perturbation registry: realistic image degradations at severities 1..5.

Each entry names its backend and a severity table (one parameter per severity 1..5);
adding a perturbation is one ``Perturbation`` entry in ``PERTURBATIONS``. Every image is
perturbed with its own random state derived from (seed, perturbation, severity, image
index), so results do not depend on batch size or order.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from saliency_robustness.registry import lookup

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Perturbation:
    """A degradation with one parameter value per severity level 1..5."""

    family: str
    backend: str
    parameter: str
    severity_table: tuple[float, ...]  # parameter at severities 1..5
    make: Callable[[float], object]  # parameter -> augmenter (imgaug)


def _gaussian_noise(sigma: float):
    import imgaug.augmenters as iaa

    return iaa.AdditiveGaussianNoise(loc=0, scale=sigma * 255)


def _motion_blur(kernel: float):
    import imgaug.augmenters as iaa

    # imgaug's MotionBlur is only deterministic with a fixed angle and direction.
    return iaa.MotionBlur(k=int(kernel), angle=45, direction=0.0)


def _contrast(alpha: float):
    import imgaug.augmenters as iaa

    return iaa.LinearContrast(alpha=alpha)


PERTURBATIONS: dict[str, Perturbation] = {
    "gaussian_noise": Perturbation(
        family="digital",
        backend="imgaug",
        parameter="noise standard deviation (fraction of 255)",
        severity_table=(0.04, 0.08, 0.12, 0.18, 0.26),
        make=_gaussian_noise,
    ),
    "motion_blur": Perturbation(
        family="optics",
        backend="imgaug",
        parameter="kernel size in pixels (at 45 degrees)",
        severity_table=(3, 5, 7, 9, 11),
        make=_motion_blur,
    ),
    "contrast": Perturbation(
        family="digital",
        backend="imgaug",
        parameter="contrast factor alpha around the mid-grey (1 = unchanged)",
        severity_table=(0.75, 0.55, 0.4, 0.28, 0.18),
        make=_contrast,
    ),
}


def get_perturbation(name: str) -> Perturbation:
    return lookup(PERTURBATIONS, name, "perturbation")


def image_seed(seed: int, perturbation: str, severity: int, image_index: int) -> int:
    """Stable 32-bit seed for one image (crc32 keeps names stable across Python runs)."""
    state = np.random.SeedSequence([seed, zlib.crc32(perturbation.encode()), severity, image_index])
    return int(state.generate_state(1)[0])


def perturb_images(
    images: np.ndarray,
    name: str,
    severity: int,
    seed: int,
    image_indices: Sequence[int] | None = None,
    severity_table: Sequence[float] | None = None,
) -> np.ndarray:
    """Apply one perturbation at one severity to uint8 images (N, H, W) or (N, H, W, C).

    ``image_indices`` are the images' positions in the full test set (default 0..N-1), so
    a subset gets the same result as the whole set. ``severity_table`` (five values)
    replaces the registry's parameters for severities 1..5.
    """
    if images.dtype != np.uint8:
        raise TypeError(f"Perturbations take uint8 images, got {images.dtype}.")
    if images.ndim not in (3, 4):
        raise ValueError(f"Expected images of shape (N, H, W) or (N, H, W, C), got {images.shape}.")
    if severity not in SEVERITIES:
        raise ValueError(f"Severity must be one of {SEVERITIES}, got {severity}.")
    spec = get_perturbation(name)
    table = spec.severity_table if severity_table is None else tuple(severity_table)
    if len(table) != len(SEVERITIES):
        raise ValueError(
            f"{name}: severity_table needs {len(SEVERITIES)} values, got {len(table)}."
        )
    augmenter = spec.make(table[severity - 1])
    indices = range(len(images)) if image_indices is None else image_indices
    out = np.empty_like(images)
    for position, (image, index) in enumerate(zip(images, indices, strict=True)):
        augmenter.seed_(image_seed(seed, name, severity, int(index)))
        out[position] = augmenter.augment_image(image)
    return out


def perturb_all_severities(
    images: np.ndarray,
    name: str,
    severities: Sequence[int],
    seed: int,
    severity_table: Sequence[float] | None = None,
) -> np.ndarray:
    """Stack of perturbed copies, shape (len(severities), *images.shape)."""
    return np.stack(
        [perturb_images(images, name, s, seed, severity_table=severity_table) for s in severities]
    )
