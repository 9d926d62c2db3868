"""Architecture registry: one entry per architecture, adapted to image size and channels.

Adding an architecture is one ``Architecture`` entry in ``ARCHITECTURES``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv_models

from saliency_robustness.registry import lookup

# Below this size the ImageNet stem (7x7 stride-2 conv + max-pool) shrinks the image to 1x1
# at layer4 (28 px), which also makes Grad-CAM maps constant; use a CIFAR-style stem.
SMALL_IMAGE_MAX_SIZE = 64


def _resnet(factory: Callable[..., nn.Module]) -> Callable[[int, int, int], nn.Module]:
    def build(in_channels: int, n_classes: int, image_size: int) -> nn.Module:
        model = factory(weights=None, num_classes=n_classes)
        if image_size <= SMALL_IMAGE_MAX_SIZE:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return model

    return build


@dataclass(frozen=True)
class Architecture:
    """How to build a model and which layer Grad-CAM-style methods use by default."""

    build: Callable[[int, int, int], nn.Module]
    cam_layer: str  # dotted module path, e.g. "layer4"; 4x4 at 28 px for ResNets


ARCHITECTURES: dict[str, Architecture] = {
    "resnet18": Architecture(build=_resnet(tv_models.resnet18), cam_layer="layer4"),
    "resnet50": Architecture(build=_resnet(tv_models.resnet50), cam_layer="layer4"),
}


def get_architecture(name: str) -> Architecture:
    return lookup(ARCHITECTURES, name, "architecture")


def build_model(name: str, in_channels: int, n_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised model (initialisation follows the torch seed)."""
    return get_architecture(name).build(in_channels, n_classes, image_size)


def get_layer(model: nn.Module, dotted: str) -> nn.Module:
    """The submodule at a dotted path such as ``layer4`` or ``layer3.1``."""
    try:
        return model.get_submodule(dotted)
    except AttributeError as error:
        names = ", ".join(name for name, _ in model.named_children())
        raise KeyError(f"Model has no layer '{dotted}'. Top-level layers: {names}.") from error


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is visible (e.g. via SLURM's CUDA_VISIBLE_DEVICES)."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device: cuda was requested but no CUDA GPU is visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). "
            "Use device: auto or cpu, or run on a GPU node."
        )
    return torch.device(setting)


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Save a ``state_dict`` (tensors only, so it loads with ``weights_only=True``)."""
    from saliency_robustness.tables import atomic_path

    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_model(
    path: str | os.PathLike,
    name: str,
    in_channels: int,
    n_classes: int,
    image_size: int,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Build the architecture and load trained weights safely (no pickle code execution)."""
    model = build_model(name, in_channels, n_classes, image_size)
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def images_to_tensor(images) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) -> float (N, C, H, W) scaled to [-1, 1].

    The same scaling as the MedMNIST reference code (ToTensor, Normalize(0.5, 0.5)).
    """
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8:
        raise TypeError(f"Expected uint8 images, got {tensor.dtype}.")
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return tensor.float().div(255.0).sub(0.5).div(0.5)
