"""A model of a registered architecture as a study trains it (``build_model``): the
registry's builder for the image size and channels, a custom head if configured, and
ImageNet weights if asked for; or a combined model (``build_combined``) of several such
backbones stripped of their final layers. ``get_layer`` finds a layer by dotted name."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from torch import nn

from saliency_robustness.models.combined import Combined
from saliency_robustness.models.heads import HeadSpec, head_prefix, replace_head, set_module
from saliency_robustness.models.registry import WEIGHT_CHOICES, get_architecture
from saliency_robustness.models.weights import load_imagenet_weights


def build_model(
    name: str,
    in_channels: int,
    n_classes: int,
    image_size: int,
    weights: str | None = None,
    weights_file: str | os.PathLike | None = None,
    head: HeadSpec | None = None,
    backbones: Sequence[str] | None = None,
    weights_files: Mapping[str, str | os.PathLike] | None = None,
) -> nn.Module:
    """A model for ``in_channels`` x ``image_size`` px images and ``n_classes`` outputs.

    ``weights=None``: freshly initialised (initialisation follows the torch seed).
    ``weights="imagenet"``: ImageNet weights from ``weights_file`` or torchvision's cache
    (``load_imagenet_weights``); the head is initialised from the torch seed.
    ``head``: a custom classifier head replacing the final layer (``replace_head``).
    ``backbones``: a combined model of these architectures (``build_combined``, ImageNet
    files from ``weights_files``); ``name`` is then only its label.
    """
    if backbones:
        return build_combined(
            backbones, in_channels, n_classes, image_size, weights, weights_files, head
        )
    if weights not in (None, *WEIGHT_CHOICES):
        raise ValueError(f"weights: unknown value {weights!r}; use null or imagenet.")
    model = get_architecture(name).build(in_channels, n_classes, image_size, weights is not None)
    if head is not None:
        replace_head(model, name, head, n_classes)
    model.registry_name = name  # lets default_cam_layer find the preferred CAM layer
    if weights == "imagenet":
        load_imagenet_weights(model, name, weights_file)
    return model


def get_layer(model: nn.Module, dotted: str) -> nn.Module:
    """The submodule at a dotted path such as ``layer4`` or ``layer3.1``."""
    try:
        return model.get_submodule(dotted)
    except AttributeError as error:
        names = ", ".join(name for name, _ in model.named_children())
        raise KeyError(f"Model has no layer '{dotted}'. Top-level layers: {names}.") from error


def build_combined(
    backbones: Sequence[str],
    in_channels: int,
    n_classes: int,
    image_size: int,
    weights: str | None = None,
    weights_files: Mapping[str, str | os.PathLike] | None = None,
    head: HeadSpec | None = None,
    read_weights: bool = True,
) -> Combined:
    """A ``Combined`` model of the architectures ``backbones``, each built (and, with
    ``weights="imagenet"``, loaded from ``weights_files[arch]`` or torchvision's cache) as by
    ``build_model`` and then stripped of its final layer; the shared layer (or ``head``'s
    stack) is initialised from the torch seed after them. ``registry_name`` of each backbone
    is its architecture, so CAM methods find its default layer. ``read_weights=False``
    builds the pretrained layout without reading the files (to load a trained model)."""
    if weights not in (None, *WEIGHT_CHOICES):
        raise ValueError(f"weights: unknown value {weights!r}; use null or imagenet.")
    models, widths = [], []
    for name in backbones:
        model = get_architecture(name).build(
            in_channels, n_classes, image_size, weights is not None
        )
        if weights == "imagenet" and read_weights:
            load_imagenet_weights(model, name, (weights_files or {}).get(name))
        prefix = head_prefix(name)
        final = model.get_submodule(prefix)
        widths.append(final.in_features if isinstance(final, nn.Linear) else final.in_channels)
        set_module(model, prefix, nn.Identity())
        if isinstance(final, nn.Conv2d):  # SqueezeNet: (N, C, 1, 1) after its pooling
            model.classifier.append(nn.Flatten())
        model.registry_name = name
        models.append(model)
    return Combined(models, backbones, widths, n_classes, head)
