"""captum's perturbation methods: Occlusion with a black square, and LIME and Kernel SHAP
on SLIC superpixels, with ``superpixels``, the feature masks they share with
``shap_methods.shap_kernel``.

They perturb regions that span every channel, so their attributions (N, C, H, W), returned
unreduced, are equal across channels and ``maps`` takes the channel mean. LIME and Kernel
SHAP sample per image from its seed (``inputs.seeded``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from captum.attr import KernelShap, Lime, Occlusion
from skimage.segmentation import slic
from torch import nn

from saliency_robustness.attribution.inputs import (
    BLACK,
    int_targets,
    quiet_captum,
    seeded,
    to_uint8,
)


def occlusion(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    window: int | None = None,
    stride: int | None = None,
    perturbations_per_eval: int = 8,
) -> torch.Tensor:
    """captum Occlusion with a black square of ``window`` px moved by ``stride`` px (None:
    a seventh of the shorter image side, and half the window). Each forward pass holds
    ``perturbations_per_eval`` perturbed copies of every image in the batch."""
    channels, height, width = inputs.shape[1:]
    side = min(height, width)
    window = int(window) if window is not None else max(1, round(side / 7))
    stride = int(stride) if stride is not None else max(1, window // 2)
    with torch.no_grad():
        return Occlusion(model).attribute(
            inputs.detach(),
            sliding_window_shapes=(channels, window, window),
            strides=(channels, stride, stride),
            baselines=BLACK,
            target=targets,
            perturbations_per_eval=int(perturbations_per_eval),
        )


def superpixels(
    inputs: torch.Tensor, n_segments: int = 49, compactness: float = 0.1
) -> torch.Tensor:
    """SLIC superpixels (skimage) of each image as captum feature masks (N, C, H, W),
    segment ids from 0 and shared by all channels. Grayscale images are segmented on
    their intensity (``channel_axis=None``), colour images in Lab."""
    masks = []
    for image in to_uint8(inputs):
        pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        segments = slic(
            pixels,
            n_segments=int(n_segments),
            compactness=float(compactness),
            channel_axis=None if image.shape[0] == 1 else -1,
            start_label=0,
        )
        masks.append(np.broadcast_to(segments, image.shape))
    return torch.as_tensor(np.stack(masks), device=inputs.device).long()


def _surrogate(
    explainer_class: type[Lime] | type[KernelShap], name: str
) -> Callable[..., torch.Tensor]:
    def compute(
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        seeds: Sequence[int],
        n_samples: int = 128,
        perturbations_per_eval: int = 64,
        n_segments: int = 49,
        compactness: float = 0.1,
    ) -> torch.Tensor:
        """captum Lime / KernelShap per image on SLIC superpixels (black when removed),
        sampling from the image's seed; ``perturbations_per_eval`` samples per forward."""
        explainer = explainer_class(model)
        masks = superpixels(inputs, n_segments, compactness)
        attributions = []
        for image, target, seed, mask in zip(
            inputs.detach(), int_targets(targets), seeds, masks, strict=True
        ):
            with seeded(seed, image.device), quiet_captum():
                part = explainer.attribute(
                    image.unsqueeze(0),
                    baselines=BLACK,
                    target=target,
                    feature_mask=mask.unsqueeze(0),
                    n_samples=int(n_samples),
                    perturbations_per_eval=int(perturbations_per_eval),
                )
            attributions.append(part.detach().float())
        return torch.cat(attributions)

    compute.__name__ = compute.__qualname__ = name
    return compute


lime = _surrogate(Lime, "lime")
kernel_shap = _surrogate(KernelShap, "kernel_shap")
