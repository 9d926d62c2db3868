"""The builders of the registry's architectures (``registry.ARCHITECTURES`` names each as
``"architectures:build_<name>"``), adapted to image size and channels, and the ViT helpers
of the CAM methods.

Small images (``image_size <= SMALL_IMAGE_MAX_SIZE``): the ImageNet stems divide the image
by 32, which leaves 1x1 (28 px) or 2x2 (64 px) feature maps and constant Grad-CAM maps.
The CNNs therefore get a small-image stem that removes the early strides and max-pools
(the deepest feature map is then 4x4 at 28 px and 8x8 at 64 px); the pretrained kernels
keep their shapes, so ImageNet weights still load. AlexNet, Inception-v3 and ViT-B/16
have a hard minimum (or fixed) input size: below it they upsample the image bilinearly
inside the model (``InputResize``) to ``ALEXNET_INPUT``, ``INCEPTION_INPUT`` or 224 px.
``vit_tiny`` is a small ViT built for the input size (patch 4 at 28 px, 8 at 64 px).
``write_layer_names`` regenerates the registry's snapshot of the builders' module names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tv_models
from torchvision.models.vision_transformer import VisionTransformer

from saliency_robustness.datasets.info import SIZES
from saliency_robustness.models.registry import ARCHITECTURES, LAYER_NAMES_FILE
from saliency_robustness.tables import atomic_path

# Below this size the ImageNet stem (7x7 stride-2 conv + max-pool) shrinks the image to 1x1
# at layer4 (28 px), which also makes Grad-CAM maps constant; use a CIFAR-style stem.
SMALL_IMAGE_MAX_SIZE = 64
ALEXNET_INPUT = 112  # conv5 is 6x6 at 112 px (below 63 px AlexNet fails outright)
INCEPTION_INPUT = 171  # Mixed_7c is 4x4 from 171 px (torchvision's minimum is 75 px)


class InputResize(nn.Module):
    """Bilinear resize of the input to ``size`` x ``size`` (differentiable, so gradient
    maps come back at the original resolution)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


def _resize_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_resize(args[0]), *args[1:])


def _upsample_inside(model: nn.Module, size: int) -> nn.Module:
    """Resize inputs inside ``model`` (a forward pre-hook, so the torchvision module tree and
    its state_dict keys stay as they are and ImageNet weights load unchanged)."""
    model.input_resize = InputResize(size)
    model.register_forward_pre_hook(_resize_input)
    return model


def first_conv_name(model: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _set_in_channels(model: nn.Module, in_channels: int) -> None:
    """Replace the first convolution by one with ``in_channels`` inputs, same geometry."""
    name = first_conv_name(model)
    old = model.get_submodule(name)
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        old.groups,
        old.bias is not None,
    )
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _stride1(conv: nn.Conv2d, padding: int | None = None) -> None:
    conv.stride = (1, 1)
    if padding is not None:
        conv.padding = (padding, padding)


Builder = Callable[[int, int, int, bool], nn.Module]


def _resnet(factory: Callable[..., nn.Module]) -> Builder:
    def build(in_channels: int, n_classes: int, image_size: int, pretrained: bool = False):
        model = factory(weights=None, num_classes=n_classes)
        if image_size <= SMALL_IMAGE_MAX_SIZE:
            # CIFAR stem (3x3 stride 1, no max-pool) as in the MedMNIST paper; with ImageNet
            # weights the pretrained 7x7 kernel is kept, at stride 1.
            kernel = 7 if pretrained else 3
            model.conv1 = nn.Conv2d(
                in_channels, 64, kernel_size=kernel, stride=1, padding=kernel // 2, bias=False
            )
            model.maxpool = nn.Identity()
        _set_in_channels(model, in_channels)
        return model

    return build


def _densenet(factory: Callable[..., nn.Module]) -> Builder:
    def build(in_channels: int, n_classes: int, image_size: int, pretrained: bool = False):
        model = factory(weights=None, num_classes=n_classes)
        if image_size <= SMALL_IMAGE_MAX_SIZE:
            _stride1(model.features.conv0)
            model.features.pool0 = nn.Identity()
            # ceil_mode: 7x7 -> 4x4 (not 3x3) at the last transition for 28 px images
            for name in ("transition1", "transition2", "transition3"):
                model.features.get_submodule(name).pool.ceil_mode = True
        _set_in_channels(model, in_channels)
        return model

    return build


build_resnet18 = _resnet(tv_models.resnet18)
build_resnet34 = _resnet(tv_models.resnet34)
build_resnet50 = _resnet(tv_models.resnet50)
build_resnet101 = _resnet(tv_models.resnet101)
build_densenet121 = _densenet(tv_models.densenet121)
build_densenet201 = _densenet(tv_models.densenet201)


def build_efficientnet_b0(
    in_channels: int, n_classes: int, image_size: int, pretrained: bool = False
) -> nn.Module:
    model = tv_models.efficientnet_b0(weights=None, num_classes=n_classes)
    if image_size <= SMALL_IMAGE_MAX_SIZE:
        _stride1(model.features[0][0])  # stem conv
        _stride1(model.features[2][0].block[1][0])  # first stride-2 depthwise conv
    _set_in_channels(model, in_channels)
    return model


def build_mobilenet_v2(
    in_channels: int, n_classes: int, image_size: int, pretrained: bool = False
) -> nn.Module:
    model = tv_models.mobilenet_v2(weights=None, num_classes=n_classes)
    if image_size <= SMALL_IMAGE_MAX_SIZE:
        _stride1(model.features[0][0])
        _stride1(model.features[2].conv[1][0])
    _set_in_channels(model, in_channels)
    return model


def build_squeezenet1_1(
    in_channels: int, n_classes: int, image_size: int, pretrained: bool = False
) -> nn.Module:
    model = tv_models.squeezenet1_1(weights=None, num_classes=n_classes)
    if image_size <= SMALL_IMAGE_MAX_SIZE:
        _stride1(model.features[0], padding=1)
        model.features[2] = nn.Identity()
    _set_in_channels(model, in_channels)
    return model


def _vgg(factory: Callable[..., nn.Module]) -> Builder:
    def build(in_channels: int, n_classes: int, image_size: int, pretrained: bool = False):
        model = factory(weights=None, num_classes=n_classes)
        # Remove the first max-pools until the last conv block keeps >= 4x4 positions (two
        # at 28 px, none from 64 px: removing them at 64 px would cost as much as 224 px);
        # the classifier keeps its shapes (its adaptive pool resizes to 7x7).
        pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        removed = 0
        while removed < 4 and image_size // 2 ** (4 - removed) < 4:
            removed += 1
        for index in pools[:removed]:
            model.features[index] = nn.Identity()
        _set_in_channels(model, in_channels)
        return model

    return build


build_vgg11_bn = _vgg(tv_models.vgg11_bn)
build_vgg19_bn = _vgg(tv_models.vgg19_bn)


def build_alexnet(
    in_channels: int, n_classes: int, image_size: int, pretrained: bool = False
) -> nn.Module:
    model = tv_models.alexnet(weights=None, num_classes=n_classes)
    if image_size < ALEXNET_INPUT:
        _upsample_inside(model, ALEXNET_INPUT)
    _set_in_channels(model, in_channels)
    return model


def build_googlenet(
    in_channels: int, n_classes: int, image_size: int, pretrained: bool = False
) -> nn.Module:
    # transform_input stays False: our [-1, 1] scaling is already the one Google used.
    model = tv_models.googlenet(
        weights=None, num_classes=n_classes, aux_logits=False, transform_input=False,
        init_weights=True,
    )  # fmt: skip
    if image_size <= SMALL_IMAGE_MAX_SIZE:
        _stride1(model.conv1.conv)
        model.maxpool1 = nn.Identity()
    _set_in_channels(model, in_channels)
    return model


def build_inception_v3(
    in_channels: int, n_classes: int, image_size: int, pretrained: bool = False
) -> nn.Module:
    model = tv_models.inception_v3(
        weights=None, num_classes=n_classes, aux_logits=False, transform_input=False,
        init_weights=True,
    )  # fmt: skip
    if image_size < INCEPTION_INPUT:
        _upsample_inside(model, INCEPTION_INPUT)
    _set_in_channels(model, in_channels)
    return model


def build_vit_b_16(
    in_channels: int, n_classes: int, image_size: int, pretrained: bool = False
) -> nn.Module:
    model = tv_models.vit_b_16(weights=None, num_classes=n_classes)
    if image_size != 224:  # fixed 14x14 patch grid (the positional embedding's size)
        _upsample_inside(model, 224)
    _set_in_channels(model, in_channels)
    return model


def vit_tiny_patch_size(image_size: int) -> int:
    """Patch size of ``vit_tiny``: the smallest of 4, 8, 16 giving at most 14x14 tokens."""
    for patch in (4, 8, 16):
        if image_size % patch == 0 and image_size // patch <= 14:
            return patch
    raise ValueError(
        f"vit_tiny needs an image size divisible by 4, 8 or 16 with at most 14 patches per "
        f"side (e.g. 28, 56, 64, 128, 224); got {image_size}."
    )


def build_vit_tiny(
    in_channels: int, n_classes: int, image_size: int, pretrained: bool = False
) -> nn.Module:
    # DeiT-Tiny widths (192 wide, 3 heads, 12 blocks) on the input's own patch grid.
    model = VisionTransformer(
        image_size=image_size,
        patch_size=vit_tiny_patch_size(image_size),
        num_layers=12,
        num_heads=3,
        hidden_dim=192,
        mlp_dim=768,
        num_classes=n_classes,
    )
    _set_in_channels(model, in_channels)
    return model


def token_grid(model: nn.Module) -> tuple[int, int] | None:
    """(rows, columns) of a ViT's patch tokens; None for a CNN."""
    if isinstance(model, VisionTransformer):
        side = model.image_size // model.patch_size
        return side, side
    return None


def tokens_to_grid(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam ``reshape_transform`` for ViTs: (N, 1 + h*w, C) tokens without the
    class token -> (N, C, h, w). 4-D tensors pass through unchanged."""
    if tensor.ndim != 3:
        return tensor
    side = math.isqrt(tensor.shape[1] - 1)
    if side * side != tensor.shape[1] - 1:
        raise ValueError(f"Cannot reshape {tensor.shape[1]} tokens into a square patch grid.")
    return (
        tensor[:, 1:, :].reshape(tensor.shape[0], side, side, tensor.shape[2]).permute(0, 3, 1, 2)
    )


def cam_reshape_transform(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The ``reshape_transform`` pytorch-grad-cam needs for ``model`` (None for CNNs; a
    combined model with a ViT backbone gets it too, as it leaves 4-D outputs alone)."""
    if token_grid(model) is not None or any(
        isinstance(m, VisionTransformer) for m in getattr(model, "backbones", [])
    ):
        return tokens_to_grid
    return None


def module_names_by_size(sizes: Sequence[int] = SIZES) -> dict:
    """Every registered architecture's dotted module names at each of ``sizes``, the
    content of ``registry.LAYER_NAMES_FILE``: ``{"sizes": [...], "architectures": {name:
    [{"sizes": [...], "names": [...]}, ...]}}``, sizes with equal names in one group. The
    models are built on torch's meta device (no weights, no memory) with 3 channels and 2
    classes, which change no names."""
    architectures = {}
    for name, arch in ARCHITECTURES.items():
        groups: list[dict] = []
        for size in sizes:
            with torch.device("meta"):
                model = arch.build(3, 2, size)
            names = [n for n, _ in model.named_modules(remove_duplicate=False) if n]
            same = [group for group in groups if group["names"] == names]
            if same:
                same[0]["sizes"].append(size)
            else:
                groups.append({"sizes": [size], "names": names})
        architectures[name] = groups
    return {"sizes": list(sizes), "architectures": architectures}


def write_layer_names(path: str | Path = LAYER_NAMES_FILE) -> None:
    """Regenerate the registry's snapshot of module names (after adding or changing an
    architecture's builder): ``module_names_by_size`` as JSON, one name a line."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(module_names_by_size(), indent=1) + "\n")
