"""Which layer a CAM method looks at, and how a model without one layer gets its maps.

``default_cam_layer`` probes a model with one dummy forward pass and picks the deepest
layer that keeps at least 4x4 positions (the architecture's preferred layer when it is
large enough); ``cam_layer_name`` resolves a configured or default name for a batch; and
``member_average`` gives an ensemble or combined model, which has no single CAM layer, the
average of its members' (backbones') maps, each at its own default layer. Used by the
pytorch-grad-cam wrappers, captum's Guided Grad-CAM and ``maps``; apart from ``cam``, so
that choosing a layer does not import pytorch-grad-cam.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from saliency_robustness.models.architectures import token_grid
from saliency_robustness.models.build import get_layer
from saliency_robustness.models.combined import Combined
from saliency_robustness.models.ensemble import Ensemble
from saliency_robustness.models.registry import get_architecture

# A CAM layer must keep at least this many positions along each side.
MIN_CAM_SIZE = 4
# Default CAM layers are searched among the top two levels of the module tree (a ResNet's
# stages and their blocks), not inside blocks.
CAM_LAYER_DEPTH = 2


def _layer_output_sizes(
    model: nn.Module, input_shape: Sequence[int], extra: Sequence[str] = ()
) -> list[tuple[str, int, int]]:
    """(name, height, width) of every submodule in the top ``CAM_LAYER_DEPTH`` levels
    (and of the modules named in ``extra``) with a 4-D output, or, in a ViT, a token output
    of the patch grid's size (the grid's height and width), in the order in which the
    modules finish during one dummy forward pass; modules called more than once (shared
    activations) are left out, their output is ambiguous."""
    records: list[tuple[str, int, int]] = []
    calls: dict[str, int] = {}
    grid = token_grid(model)

    def hook(name: str):
        def record(_module, _inputs, output) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                records.append((name, int(output.shape[-2]), int(output.shape[-1])))
            elif (
                grid is not None
                and isinstance(output, torch.Tensor)
                and output.ndim == 3
                and output.shape[1] == 1 + grid[0] * grid[1]
            ):
                records.append((name, *grid))

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if name and (name.count(".") < CAM_LAYER_DEPTH or name in extra)
    ]
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [record for record in records if calls[record[0]] == 1]


def _first_conv_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError("The model has no Conv2d layer; give in_channels explicitly.")


def default_cam_layer(
    model: nn.Module,
    arch: str | None = None,
    image_size: int | tuple[int, int] = 28,
    in_channels: int | None = None,
    min_size: int = MIN_CAM_SIZE,
) -> str:
    """The layer CAM methods use by default: the deepest one with a >= 4x4 output.

    One dummy forward pass at ``image_size`` records the spatial size of every layer's
    output. The architecture's preferred layer
    (``models.registry.ARCHITECTURES[arch].cam_layer``) wins when it is at least
    ``min_size`` positions along each side; otherwise the layers are walked from the
    deepest (last to finish) to the shallowest and the first with a large enough output is
    taken. For the ResNets this is ``layer4`` at 28 px (CIFAR stem, 4x4) and at 224 px
    (ImageNet stem, 7x7), and ``layer3`` where ``layer4`` would be smaller than 4x4 (e.g.
    96 px with the ImageNet stem). ``arch`` defaults to the model's ``registry_name`` (set
    by ``models.build.build_model``). In a ViT a token layer counts with its patch grid's
    size (the preferred layer is the last block's ``ln_1``).
    """
    if isinstance(model, Ensemble | Combined):
        raise ValueError(
            "An ensemble or combined model has no single CAM layer: CAM methods average the "
            "members' (backbones') maps, each at its default layer (pass cam_layer=None)."
        )
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    channels = in_channels if in_channels is not None else _first_conv_channels(model)
    arch = arch if arch is not None else getattr(model, "registry_name", None)
    preferred = get_architecture(arch).cam_layer if arch is not None else None
    sizes = _layer_output_sizes(model, (channels, height, width), [preferred] if preferred else [])
    if preferred is not None:
        for name, h, w in sizes:
            if name == preferred and min(h, w) >= min_size:
                return name
    for name, h, w in reversed(sizes):
        if min(h, w) >= min_size:
            return name
    raise ValueError(
        f"No layer of the model keeps {min_size}x{min_size} positions at {height}x{width} px; "
        "set cam_layer explicitly."
    )


def cam_layer_name(model: nn.Module, inputs: torch.Tensor, cam_layer: str | None) -> str:
    """``cam_layer`` as given, or the default layer for this input size when it is None."""
    if cam_layer is None or cam_layer == "auto":
        return default_cam_layer(model, None, tuple(inputs.shape[-2:]), inputs.shape[1])
    get_layer(model, cam_layer)  # an unknown name is a KeyError naming the layers
    return cam_layer


def member_average(
    maps_at: Callable[[nn.Module, str | None], np.ndarray],
    model: Ensemble | Combined,
    inputs: torch.Tensor,
    cam_layer: str | None = None,
) -> np.ndarray:
    """Maps of a CAM-layer method on a model with no single CAM layer, averaged.

    An ``Ensemble``: its members' maps, each member at its own default CAM layer (the
    members may be different architectures; a member may itself be an ensemble or combined
    model). A ``Combined`` model: the maps of the combined model's output at each
    backbone's default CAM layer. ``maps_at(model, layer)`` gives one model's float32 maps
    (N, H, W) at ``layer`` (None: its default for ``inputs``); the maps are averaged after
    the channel reduction, as maps of the members. ``cam_layer`` must be unset.
    """
    if cam_layer not in (None, "auto"):
        raise ValueError(
            "cam_layer cannot be set for an ensemble or combined model: each member "
            "(backbone) uses its own default CAM layer; remove "
            "attribute.params.<method>.cam_layer."
        )
    if isinstance(model, Combined):  # the whole model's target output at each backbone
        size, channels = tuple(inputs.shape[-2:]), inputs.shape[1]
        maps = [
            maps_at(model, f"backbones.{i}.{default_cam_layer(backbone, None, size, channels)}")
            for i, backbone in enumerate(model.backbones)
        ]
    else:
        maps = [
            member_average(maps_at, member, inputs)
            if isinstance(member, Ensemble | Combined)
            else maps_at(member, None)
            for member in model.members
        ]
    return np.mean(maps, axis=0)
