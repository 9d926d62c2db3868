"""Pixel helpers the perturbation backends share: uint8 conversion, channel-last views, and
the scaling of spatial parameters from the 28 px reference side to the image's side."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from saliency_robustness.perturbations.registry import REFERENCE_SIDE

# A per-image transform: (uint8 image (H, W) or (H, W, C), seed) -> uint8 image, same shape.
Transform = Callable[[np.ndarray, int], np.ndarray]


def _scale(value: float, image: np.ndarray) -> float:
    """A length given at 28 px, at this image's side."""
    return value * image.shape[0] / REFERENCE_SIDE


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _hwc(image: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 1) view; (H, W, C) unchanged."""
    return image[..., None] if image.ndim == 2 else image


def _like(result: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Back to the input's layout ((H, W) stays (H, W))."""
    return result[..., 0] if image.ndim == 2 else result
