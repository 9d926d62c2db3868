"""The two control methods, which look at neither the model nor the target: a Sobel edge
map of the image (what a map that only follows image structure looks like) and seeded
uniform noise (the floor of every map-similarity metric).

They stand beside the saliency methods in the registry so that every metric and figure
treats them alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from skimage import filters
from torch import nn

from saliency_robustness.attribution.inputs import to_uint8


def sobel(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """skimage.filters.sobel of each channel of the uint8 image (skimage scales it to
    0..1), (N, C, H, W) float64 for ``maps`` to sum over channels."""
    return np.stack([[filters.sobel(channel) for channel in image] for image in to_uint8(inputs)])


def random_map(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]
) -> np.ndarray:
    """Uniform noise in [0, 1) from each image's seed, maps (N, H, W): unrelated maps for a
    clean image and its perturbed versions, the floor of every map-similarity metric."""
    shape = tuple(inputs.shape[-2:])
    maps = [np.random.default_rng(seed).random(shape, dtype=np.float32) for seed in seeds]
    return np.asarray(maps, dtype=np.float32).reshape(len(inputs), *shape)
