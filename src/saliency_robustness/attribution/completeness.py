"""The completeness check of methods whose attributions sum to f(x) - f(baseline)
(Integrated Gradients, DeepLift, smoothgrad over Integrated Gradients): the
``Completeness`` record an implementation returns beside its attributions, and the two
pieces it is built from, captum's convergence deltas and the model's output gap.

Its own module because the gradient methods fill it, ``maps`` collects it per batch and
``table`` stores it as the ``convergence_delta`` and ``completeness_error`` columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from saliency_robustness.attribution.inputs import BLACK

# |f(x) - f(baseline)| at or below this (output units) counts as no change: float32
# rounding of two forward passes, so the relative completeness error is NaN.
GAP_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Completeness:
    """Per image: ``delta``, captum's convergence delta, sum(attributions over channels and
    pixels, before any channel reduction) - (f(x) - f(baseline)); ``gap``, f(x) - f(baseline),
    f the model output captum attributes (``model(x)[target]``: the logit, or an ensemble's
    log mean probability). Both in those output units, float64 arrays of length N."""

    delta: np.ndarray
    gap: np.ndarray

    @property
    def error(self) -> np.ndarray:
        """|delta| / |gap|: the relative completeness error; NaN where f(x) = f(baseline)
        (|gap| <= ``GAP_TOLERANCE``: nothing to explain, the ratio is rounding noise)."""
        gap = np.abs(self.gap)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gap > GAP_TOLERANCE, np.abs(self.delta) / gap, np.nan)


def output_gap(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """f(x) - f(black) per image, f = ``model(x)[target]``: the output captum attributes
    (logits; an ensemble's log mean probability). One forward pass of the batch and one of
    a single black image (the baseline is the same for every image)."""
    with torch.no_grad():
        outputs = model(inputs.detach())
        black = model(torch.full_like(inputs[:1], BLACK).detach())
    rows = torch.arange(len(inputs), device=outputs.device)
    columns = targets.reshape(-1).long().to(outputs.device)
    gap = outputs[rows, columns] - black[0, columns]
    return gap.detach().double().cpu().numpy()


def float64_per_image(values: torch.Tensor) -> np.ndarray:
    """Per-image values (captum's convergence deltas, attribution sums) as float64 NumPy."""
    return values.detach().double().reshape(-1).cpu().numpy()
