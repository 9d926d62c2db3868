"""Saliency-method registry and batched attribution of clean and perturbed images.

Each method maps a batch of model inputs and target classes to 2-D maps at input
resolution. Channel rule: gradient methods sum over input channels (Saliency sums
absolute gradients, so its maps are non-negative; Integrated Gradients keeps the sign so
that completeness holds); Grad-CAM maps are pytorch-grad-cam's ReLU'd, min-max scaled
CAMs upsampled to the input size. Adding a method is one ``SaliencyMethod`` entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn
from tqdm import tqdm

from saliency_robustness.evaluation import predict_proba
from saliency_robustness.models import get_layer, images_to_tensor
from saliency_robustness.registry import lookup

log = logging.getLogger(__name__)

# Black image in model-input space (images_to_tensor maps 0..255 to -1..1).
BLACK = -1.0


@dataclass(frozen=True)
class SaliencyMethod:
    """``compute(model, inputs, targets, **params)`` returns float maps (N, H, W)."""

    library: str
    signed: bool
    compute: Callable[..., torch.Tensor | np.ndarray]
    defaults: dict = field(default_factory=dict)
    uses_cam_layer: bool = False


def _saliency(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from captum.attr import Saliency

    return Saliency(model).attribute(inputs, target=targets, abs=True).sum(dim=1)


def _integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    n_steps: int = 50,
    internal_batch_size: int = 256,
) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    # internal_batch_size bounds memory: captum otherwise expands the batch n_steps times.
    attributions = IntegratedGradients(model).attribute(
        inputs,
        baselines=torch.full_like(inputs, BLACK),
        target=targets,
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
    )
    return attributions.sum(dim=1)


def _gradcam(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, cam_layer: str
) -> np.ndarray:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[get_layer(model, cam_layer)]) as cam:
        return cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in targets])


METHODS: dict[str, SaliencyMethod] = {
    "saliency": SaliencyMethod(library="captum", signed=False, compute=_saliency),
    "integrated_gradients": SaliencyMethod(
        library="captum",
        signed=True,
        compute=_integrated_gradients,
        defaults={"n_steps": 50, "internal_batch_size": 256},
    ),
    "gradcam": SaliencyMethod(
        library="pytorch-grad-cam", signed=False, compute=_gradcam, uses_cam_layer=True
    ),
}


def get_method(name: str) -> SaliencyMethod:
    return lookup(METHODS, name, "saliency method")


def method_params(name: str, params: dict | None, cam_layer: str | None) -> dict:
    """Defaults merged with the config's parameters; unknown keys are an error."""
    method = get_method(name)
    params = dict(params or {})
    allowed = set(method.defaults) | ({"cam_layer"} if method.uses_cam_layer else set())
    extra = set(params) - allowed
    if extra:
        raise ValueError(
            f"attribute.params.{name}: unknown keys {sorted(extra)}; "
            f"allowed: {sorted(allowed) or 'none'}."
        )
    merged = {**method.defaults, **params}
    if method.uses_cam_layer:
        merged.setdefault("cam_layer", cam_layer)
    return merged


def compute_maps(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    method: str,
    params: dict,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Saliency maps (N, H, W) float32 for uint8 images, in batches of ``batch_size``."""
    spec = get_method(method)
    model.eval()
    maps = []
    for start in range(0, len(images), batch_size):
        inputs = images_to_tensor(images[start : start + batch_size]).to(device)
        inputs.requires_grad_(True)
        batch_targets = torch.as_tensor(targets[start : start + batch_size], device=device).long()
        result = spec.compute(model, inputs, batch_targets, **params)
        if isinstance(result, torch.Tensor):
            result = result.detach().float().cpu().numpy()
        maps.append(np.asarray(result, dtype=np.float32))
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
    return maps


def is_constant(maps: np.ndarray) -> np.ndarray:
    """True where a map carries no spatial information (all values equal)."""
    flat = maps.reshape(len(maps), -1)
    return flat.max(axis=1) - flat.min(axis=1) <= 1e-12 * np.maximum(1.0, np.abs(flat).max(axis=1))


def saliency_schema(height: int, width: int, n_classes: int) -> pa.Schema:
    """Schema of the saliency Parquet files (documented in the README)."""
    return pa.schema(
        [
            ("dataset", pa.string()),
            ("arch", pa.string()),
            ("fold", pa.int16()),
            ("method", pa.string()),
            ("perturbation", pa.string()),
            ("severity", pa.int8()),
            ("image_index", pa.int32()),
            ("label", pa.int16()),
            ("target", pa.int16()),
            ("predicted", pa.int16()),
            ("target_probability", pa.float32()),
            ("probabilities", pa.list_(pa.float32(), n_classes)),
            ("height", pa.int16()),
            ("width", pa.int16()),
            ("signed", pa.bool_()),
            ("is_constant", pa.bool_()),
            ("saliency", pa.list_(pa.float32(), height * width)),
        ]
    )


def attribute_clean_and_perturbed(
    model: nn.Module,
    clean_images: np.ndarray,
    labels: np.ndarray,
    perturbed: dict[str, tuple[list[int], np.ndarray]],
    method: str,
    params: dict,
    keys: dict,
    target: str = "predicted",
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> pa.Table:
    """Maps for clean images and every perturbed version, as one Arrow table.

    The target class is fixed per image from the clean image (the model's prediction, or
    the true label with ``target='label'``) and kept for its perturbed versions. Clean
    rows appear under each perturbation as severity 0. ``keys`` holds dataset/arch/fold.
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    spec = get_method(method)
    n, height, width = clean_images.shape[:3]

    def maps_and_probabilities(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch.manual_seed(seed)  # stochastic methods give the same maps for the same config
        maps = compute_maps(model, images, targets, method, params, batch_size, device)
        return maps, predict_proba(model, images, batch_size, device)

    clean_probs = predict_proba(model, clean_images, batch_size, device)
    targets = clean_probs.argmax(axis=1) if target == "predicted" else labels
    levels = [
        (name, int(severity), stack[i])
        for name, (severities, stack) in perturbed.items()
        for i, severity in enumerate(severities)
    ]
    clean = maps_and_probabilities(clean_images)
    frames = []
    for name, severity, images in tqdm(levels, desc=method, unit="set", disable=not progress):
        if not frames or frames[-1]["perturbation"].iloc[0] != name:
            frames.append(_rows(name, 0, targets, *clean))  # clean rows head each perturbation
        frames.append(_rows(name, severity, targets, *maps_and_probabilities(images)))
        log.info("%s %s severity %d: %d maps", method, name, severity, n)
    if not frames:
        frames.append(_rows("none", 0, targets, *clean))
    table = pd.concat(frames, ignore_index=True).assign(
        dataset=keys["dataset"],
        arch=keys["arch"],
        fold=int(keys["fold"]),
        method=method,
        label=np.tile(labels, len(frames)),
        target=np.tile(targets, len(frames)),
        height=height,
        width=width,
        signed=spec.signed,
    )
    schema = saliency_schema(height, width, clean_probs.shape[1])
    return pa.Table.from_pandas(table[schema.names], schema=schema, preserve_index=False)


def _rows(
    perturbation: str, severity: int, targets: np.ndarray, maps: np.ndarray, probs: np.ndarray
) -> pd.DataFrame:
    """Per-image columns that vary with the perturbation level (see ``saliency_schema``)."""
    n = len(maps)
    return pd.DataFrame(
        {
            "perturbation": perturbation,
            "severity": severity,
            "image_index": np.arange(n),
            "predicted": probs.argmax(axis=1),
            "target_probability": probs[np.arange(n), targets],
            "probabilities": list(probs.astype(np.float32)),
            "is_constant": is_constant(maps),
            "saliency": list(maps.reshape(n, -1)),
        }
    )
