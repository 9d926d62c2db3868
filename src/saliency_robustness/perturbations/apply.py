"""Applying registered perturbations to image arrays: one seed per (seed, perturbation,
severity, image index), so that results do not depend on batch size or order; every
severity of one perturbation at once (the perturb job), and the calibration table that
says how much each severity degrades the images."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from saliency_robustness.perturbations.registry import SEVERITIES, get_perturbation


def _channels_of(images: np.ndarray) -> int:
    return 1 if images.ndim == 3 else images.shape[-1]


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
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(
            f"Perturbations take uint8 images, got {getattr(images, 'dtype', type(images))}."
        )
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise ValueError(f"Expected images of shape (N, H, W) or (N, H, W, C), got {images.shape}.")
    if severity not in SEVERITIES:
        raise ValueError(f"Severity must be one of {SEVERITIES}, got {severity}.")
    spec = get_perturbation(name)
    channels = _channels_of(images)
    if channels not in spec.channels:
        raise ValueError(
            f"{name} needs images with {' or '.join(map(str, spec.channels))} channel(s), "
            f"got {channels}: it is RGB-only; choose another perturbation for this dataset."
        )
    table = spec.severity_table if severity_table is None else tuple(severity_table)
    if len(table) != len(SEVERITIES):
        raise ValueError(
            f"{name}: severity_table needs {len(SEVERITIES)} values, got {len(table)}."
        )
    transform = spec.transform(table[severity - 1])
    indices = range(len(images)) if image_indices is None else image_indices
    out = np.empty_like(images)
    for position, (image, index) in enumerate(zip(images, indices, strict=True)):
        out[position] = transform(image, image_seed(seed, name, severity, int(index)))
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


def calibration(
    clean: np.ndarray, stack: np.ndarray, severities: Sequence[int]
) -> list[dict[str, float]]:
    """Mean SSIM and PSNR (scikit-image) of perturbed vs clean images at each severity."""
    channel_axis = -1 if clean.ndim == 4 else None
    rows = []
    for severity, level in zip(severities, stack, strict=True):
        ssim = [
            structural_similarity(c, p, data_range=255, channel_axis=channel_axis)
            for c, p in zip(clean, level, strict=True)
        ]
        psnr = []
        for c, p in zip(clean, level, strict=True):
            # Identical images have infinite PSNR; cap at 100 dB to keep the mean finite.
            psnr.append(
                100.0 if np.array_equal(c, p) else peak_signal_noise_ratio(c, p, data_range=255)
            )
        rows.append(
            {"severity": int(severity), "ssim": float(np.mean(ssim)), "psnr": float(np.mean(psnr))}
        )
    return rows
