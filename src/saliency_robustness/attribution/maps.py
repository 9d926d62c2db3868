"""Saliency maps of uint8 images in batches: the one place where a registered method is
run, its attributions reduced over channels and checked.

``compute_maps`` (and ``compute_maps_and_completeness``) turn images into model inputs,
give stochastic methods their per-image seeds, call the method's implementation, apply
its registered ``ChannelReduction`` and, for CAM-layer methods on an ensemble or combined
model, average the members' maps (``cam_layer.member_average``); ``input_maps`` does the
same for one batch of model inputs. ``model_method_params`` and ``top_k_targets`` decide
what is attributed: a model's default CAM layer, and the targets of multi-label images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from saliency_robustness.attribution.cam_layer import default_cam_layer, member_average
from saliency_robustness.attribution.completeness import Completeness
from saliency_robustness.attribution.inputs import image_seeds
from saliency_robustness.attribution.registry import (
    ChannelReduction,
    SaliencyMethod,
    channel_reduction,
    get_method,
    has_completeness,
    method_params,
)
from saliency_robustness.models.combined import Combined
from saliency_robustness.models.ensemble import Ensemble
from saliency_robustness.models.tensors import images_to_tensor


def model_method_params(
    name: str, params: dict | None, model: nn.Module, image_size: int | tuple[int, int]
) -> dict:
    """``method_params`` for a trained ``model``: a CAM method's default layer is the
    model's ``default_cam_layer`` at ``image_size``; an ``Ensemble`` or ``Combined`` model
    gets None, so each member's (backbone's) CAM uses its own default layer."""
    cam_layer = None
    configured = "cam_layer" in (params or {})
    if (
        get_method(name).uses_cam_layer
        and not configured
        and not isinstance(model, Ensemble | Combined)
    ):
        cam_layer = default_cam_layer(model, image_size=image_size)
    return method_params(name, params, cam_layer)


def compute_maps(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    method: str,
    params: dict,
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int | None = None,
) -> np.ndarray:
    """Saliency maps (N, H, W) float32 for uint8 images, in batches of ``batch_size``.

    Stochastic methods draw per image from ``image_seeds(inputs, seed)``; with ``seed``
    None the seed is drawn from torch's global generator (so ``torch.manual_seed`` before
    the call fixes the maps). Maps do not depend on ``batch_size``.
    """
    maps, _ = _compute(model, images, targets, method, params, batch_size, device, seed, False)
    return maps


def compute_maps_and_completeness(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    method: str,
    params: dict,
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int | None = None,
) -> tuple[np.ndarray, Completeness | None]:
    """``compute_maps`` and, for a method with a completeness property
    (``has_completeness``), its ``Completeness`` per image (None for other methods). The
    maps are the same as ``compute_maps``'s."""
    completeness = has_completeness(method, params)
    return _compute(model, images, targets, method, params, batch_size, device, seed, completeness)


def _compute(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    method: str,
    params: dict,
    batch_size: int,
    device: torch.device | str,
    seed: int | None,
    completeness: bool,
) -> tuple[np.ndarray, Completeness | None]:
    spec = get_method(method)
    reduction = channel_reduction(method, params)
    model.eval()
    if spec.stochastic and seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    maps, deltas, gaps = [], [], []
    for start in range(0, len(images), batch_size):
        inputs = images_to_tensor(images[start : start + batch_size]).to(device)
        inputs.requires_grad_(True)
        batch_targets = torch.as_tensor(targets[start : start + batch_size], device=device).long()
        kwargs = {"seeds": image_seeds(inputs, seed)} if spec.stochastic else {}
        if completeness:
            kwargs["return_completeness"] = True
        batch_maps, check = _batch_maps(
            spec, reduction, model, inputs, batch_targets, {**kwargs, **params}
        )
        maps.append(batch_maps)
        if completeness:
            deltas.append(check.delta)
            gaps.append(check.gap)
    maps = np.concatenate(maps) if maps else np.zeros((0, *images.shape[1:3]), np.float32)
    if maps.shape != (len(images), *images.shape[1:3]):
        expected = (len(images), *images.shape[1:3])
        raise RuntimeError(f"{method} returned maps of shape {maps.shape}, expected {expected}.")
    bad = ~np.isfinite(maps).reshape(len(maps), -1).all(axis=1)
    if bad.any():
        raise FloatingPointError(
            f"{method} produced NaN or infinite maps for images "
            f"{np.flatnonzero(bad)[:10].tolist()}; check the model weights and the method's "
            "parameters."
        )
    if not completeness:
        return maps, None
    empty = np.zeros(0, np.float64)
    check = Completeness(
        np.concatenate(deltas) if deltas else empty, np.concatenate(gaps) if gaps else empty
    )
    return maps, check


def input_maps(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    params: dict,
    seed: int | None = None,
) -> np.ndarray:
    """float32 maps (N, H, W) of one batch of model inputs (N, C, H, W) for ``targets``
    (N,): what ``compute_maps`` computes per batch, for callers that hold model inputs
    (captum's faithfulness metrics, Quantus). A stochastic method draws per image from
    ``image_seeds(inputs, seed)`` (``seed`` None: drawn from torch's global generator)."""
    spec = get_method(method)
    kwargs = {}
    if spec.stochastic:
        seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else seed
        kwargs["seeds"] = image_seeds(inputs, seed)
    reduction = channel_reduction(method, params)
    maps, _ = _batch_maps(spec, reduction, model, inputs, targets, {**kwargs, **params})
    return maps


def _batch_maps(
    spec: SaliencyMethod,
    reduction: ChannelReduction,
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    kwargs: dict,
) -> tuple[np.ndarray, Completeness | None]:
    """One batch's float32 maps, and its ``Completeness`` when ``kwargs`` ask for it. A
    CAM-layer method on an ensemble or combined model averages the members' maps, each
    reduced over channels first."""
    implementation = spec.implementation()
    if spec.uses_cam_layer and isinstance(model, Ensemble | Combined):
        kwargs = dict(kwargs)
        cam_layer = kwargs.pop("cam_layer", None)

        def maps_at(member: nn.Module, layer: str | None) -> np.ndarray:
            result = implementation(member, inputs, targets, cam_layer=layer, **kwargs)
            return _as_maps(result, reduction)

        return member_average(maps_at, model, inputs, cam_layer), None
    result = implementation(model, inputs, targets, **kwargs)
    check = None
    if kwargs.get("return_completeness"):
        result, check = result
    return _as_maps(result, reduction), check


def _as_maps(attributions: torch.Tensor | np.ndarray, reduction: ChannelReduction) -> np.ndarray:
    """float32 maps (N, H, W) from an implementation's attributions (a torch tensor or NumPy
    array), reduced over channels by ``reduction`` in their own library and dtype first."""
    maps = reduction.apply(attributions)
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().float().cpu().numpy()
    return np.asarray(maps, dtype=np.float32)


def top_k_targets(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label targets: the ``k`` highest-scoring classes of every image.

    Returns ``(image_index, target)``, one entry per (image, target), images in order and
    each image's classes by decreasing score (ties: lower class first). Feed them to
    ``compute_maps(model, images[image_index], target, ...)``.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"top_k_targets: need scores (N, classes) and 1 <= k <= classes, got "
                         f"{scores.shape} and k={k}.")  # fmt: skip
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    image_index = np.repeat(np.arange(len(scores)), k)
    return image_index, order.reshape(-1)
