"""captum's gradient methods: Saliency, Input x Gradient, Integrated Gradients,
GradientShap, DeepLift, guided backpropagation, Guided Grad-CAM and smoothgrad.

Each function returns captum's attributions (N, C, H, W) unreduced: ``maps`` applies the
registered channel reduction (``registry.ChannelReduction``), and the methods with a
completeness property compute their convergence delta here, before any reduction. DeepLift
and the guided methods run on ``surgery.unshared_copy`` of the model; the stochastic ones
(GradientShap, smoothgrad) draw per image from its seed (``inputs.seeded``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import (
    DeepLift,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from torch import nn

from saliency_robustness.attribution.cam_layer import cam_layer_name
from saliency_robustness.attribution.completeness import (
    Completeness,
    float64_per_image,
    output_gap,
)
from saliency_robustness.attribution.inputs import BLACK, int_targets, quiet_captum, seeded
from saliency_robustness.attribution.registry import IG_STEPS, SMOOTHGRAD_BASES
from saliency_robustness.attribution.surgery import unshared_copy
from saliency_robustness.models.build import get_layer


def saliency(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """captum Saliency: |gradient| of the target output per input value."""
    return Saliency(model).attribute(inputs, target=targets, abs=True)


def input_x_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """captum InputXGradient: input x gradient of the target output."""
    return InputXGradient(model).attribute(inputs, target=targets)


def integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    n_steps: int = IG_STEPS,
    internal_batch_size: int = 256,
    return_completeness: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Completeness]:
    """captum IntegratedGradients from the black image (Gauss-Legendre, ``n_steps``
    points); with ``return_completeness`` also captum's convergence delta per image and
    f(x) - f(black) from two forward passes of our own."""
    # internal_batch_size bounds memory: captum otherwise expands the batch n_steps times.
    result = IntegratedGradients(model).attribute(
        inputs,
        baselines=torch.full_like(inputs, BLACK),
        target=targets,
        n_steps=int(n_steps),
        internal_batch_size=int(internal_batch_size),
        return_convergence_delta=return_completeness,
    )
    if not return_completeness:
        return result
    attributions, delta = result
    return attributions, Completeness(float64_per_image(delta), output_gap(model, inputs, targets))


def gradient_shap(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seeds: Sequence[int],
    n_samples: int = 20,
    stdevs: float = 0.0,
    n_baselines: int = 8,
    internal_batch_size: int = 64,
) -> torch.Tensor:
    """captum GradientShap per image, its samples in chunks of ``internal_batch_size``
    (captum has no internal batching for it), averaged with the chunk sizes as weights.
    Baseline distribution: the black image and ``n_baselines - 1`` images of uniform noise
    over the input range, drawn from the image's seed like captum's own sampling."""
    explainer = GradientShap(model)
    chunk = max(1, int(internal_batch_size))
    attributions = []
    for image, target, seed in zip(inputs, int_targets(targets), seeds, strict=True):
        x = image.unsqueeze(0)
        with seeded(seed, x.device), quiet_captum():
            noise = torch.rand((max(1, int(n_baselines)) - 1, *x.shape[1:]), device=x.device)
            baselines = torch.cat([torch.full_like(x, BLACK), noise * 2 - 1]).detach()
            total = torch.zeros_like(x)
            for start in range(0, int(n_samples), chunk):
                k = min(chunk, int(n_samples) - start)
                part = explainer.attribute(
                    x, baselines=baselines, target=target, n_samples=k, stdevs=float(stdevs)
                )
                total = total + part.detach() * k
        attributions.append(total / int(n_samples))
    return torch.cat(attributions)


def deeplift(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    internal_batch_size: int = 64,
    return_completeness: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Completeness]:
    """captum DeepLift (rescale rule, black baseline) on ``unshared_copy(model)``; images
    in chunks of ``internal_batch_size`` (each runs twice that: inputs and baselines).

    With ``return_completeness`` also the summation-to-delta residual per image, captum's
    convergence delta sum(attributions) - (f(x) - f(black)), computed as captum does but
    with f(x) - f(black) from one forward pass of the original model (captum's
    ``return_convergence_delta`` runs inputs and baselines through the copy again: +44 %
    time at batch 32, against +17 %)."""
    explainer = DeepLift(unshared_copy(model, inputs))
    chunk = max(1, int(internal_batch_size))
    attributions, sums = [], []
    with quiet_captum():
        for start in range(0, len(inputs), chunk):
            x = inputs[start : start + chunk]
            part = explainer.attribute(
                x, baselines=torch.full_like(x, BLACK), target=targets[start : start + chunk]
            ).detach()
            attributions.append(part)
            if return_completeness:
                sums.append(float64_per_image(part.reshape(len(x), -1).sum(dim=1)))
    if not return_completeness:
        return torch.cat(attributions)
    gap = output_gap(model, inputs, targets)
    return torch.cat(attributions), Completeness(np.concatenate(sums) - gap, gap)


def guided_backprop(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """captum GuidedBackprop on ``unshared_copy(model)``."""
    with quiet_captum():
        return GuidedBackprop(unshared_copy(model, inputs)).attribute(inputs, target=targets)


def guided_gradcam(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, cam_layer: str | None = None
) -> torch.Tensor:
    """captum GuidedGradCam (guided backpropagation x Grad-CAM at ``cam_layer``, None: the
    default layer) on ``unshared_copy(model)``."""
    name = cam_layer_name(model, inputs, cam_layer)
    unshared = unshared_copy(model, inputs)
    with quiet_captum():
        return GuidedGradCam(unshared, get_layer(unshared, name)).attribute(inputs, target=targets)


def smoothgrad(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seeds: Sequence[int],
    base: str = "saliency",
    nt_samples: int = 20,
    stdevs: float = 0.3,
    n_steps: int = 20,
    internal_batch_size: int = 64,
    return_completeness: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Completeness]:
    """captum NoiseTunnel (smoothgrad: mean attribution over noisy copies) over ``base``,
    per image with noise from the image's seed. ``internal_batch_size`` bounds the inputs
    per forward pass (noisy copies, times ``n_steps`` for integrated_gradients).

    ``return_completeness`` (integrated_gradients base only): per image, the mean of
    captum's convergence deltas over the noisy copies (the mean map's completeness
    residual against mean f(x + noise) - f(black)); that gap is sum(mean attribution) - mean
    delta, as the noisy copies are drawn inside captum."""
    if base == "saliency":
        method, kwargs, per_sample = Saliency(model), {"abs": True}, 1
    elif base == "input_x_gradient":
        method, kwargs, per_sample = InputXGradient(model), {}, 1
    elif base == "integrated_gradients":
        kwargs = {
            "baselines": BLACK,
            "n_steps": int(n_steps),
            "internal_batch_size": int(internal_batch_size),
        }
        method, per_sample = IntegratedGradients(model), int(n_steps)
    else:
        raise ValueError(f"smoothgrad: unknown base '{base}'; allowed: {SMOOTHGRAD_BASES}.")
    if return_completeness and base != "integrated_gradients":
        raise ValueError(f"smoothgrad over {base} has no completeness property.")
    if return_completeness:
        kwargs["return_convergence_delta"] = True
    tunnel = NoiseTunnel(method)
    batch = max(1, min(int(nt_samples), int(internal_batch_size) // per_sample))
    means, deltas, gaps = [], [], []
    for image, target, seed in zip(inputs, int_targets(targets), seeds, strict=True):
        x = image.unsqueeze(0)
        with seeded(seed, x.device), quiet_captum():
            result = tunnel.attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=int(nt_samples),
                nt_samples_batch_size=batch,
                stdevs=float(stdevs),
                target=target,
                **kwargs,
            )
        mean = result[0] if return_completeness else result
        if return_completeness:
            delta = float(float64_per_image(result[1]).mean())  # one per noisy copy
            deltas.append(delta)
            gaps.append(float(mean.detach().double().sum()) - delta)
        means.append(mean.detach())
    if not return_completeness:
        return torch.cat(means)
    return torch.cat(means), Completeness(np.asarray(deltas), np.asarray(gaps))
