"""The architecture registry as plain data: what the config check and the planning of jobs
need to know about each architecture, without importing torch or torchvision.

``ARCHITECTURES`` maps each name of ``train.architectures`` to an ``Architecture``: its
builder, named as ``"module:function"`` of this package and imported only when a model is
built (``Architecture.build``), its default CAM layer, classifier head, the torchvision
model and ImageNet file whose weights fit, and whether it suits 28 px images.
``layer_names`` gives every architecture's dotted module names at each image size from a
snapshot (``layer_names.json`` beside this module), so that ``cam_layer`` settings are
checked without building a model.

Adding an architecture: write its builder in ``architectures.py`` (``build_<name>``), add
one entry to ``ARCHITECTURES`` and regenerate the snapshot with
``.venv/bin/python -c "from saliency_robustness.models.architectures import
write_layer_names; write_layer_names()"`` (tests/unit/models/test_registry.py fails until
the snapshot matches the builders).
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from saliency_robustness.registry import lookup

if TYPE_CHECKING:  # annotations only: importing torch here would defeat this module
    from torch import nn

WEIGHT_CHOICES = ("imagenet",)
LAYER_NAMES_FILE = Path(__file__).with_name("layer_names.json")


@dataclass(frozen=True)
class Architecture:
    """How to build a model and which layer Grad-CAM-style methods use by default.

    ``builder``: ``"module:function"`` of this package taking ``(in_channels, n_classes,
    image_size, pretrained)``. ``cam_layer``: dotted module path of the default CAM layer.
    ``head``: module prefixes of the classifier head, replaced (freshly initialised for the
    dataset's classes) when ImageNet weights are loaded. ``torchvision_name``: the
    torchvision model whose ImageNet weights fit (None: none); ``imagenet_file``: the file
    name of its default ImageNet weights (torchvision's download URL and cache name).
    ``sensible_at_28``: whether the model is a reasonable choice for 28 px images (README).
    ``ignored_keys``: prefixes of ImageNet state_dict entries the model does not have
    (auxiliary classifiers).
    """

    builder: str
    cam_layer: str
    head: tuple[str, ...]
    torchvision_name: str | None
    imagenet_file: str | None
    sensible_at_28: bool = True
    ignored_keys: tuple[str, ...] = ()

    def build_function(self) -> Callable[..., nn.Module]:
        """The builder function, imported on first use: builders import torch and
        torchvision, and the registry must stay light for the Snakemake process."""
        module, function = self.builder.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), function)

    def build(
        self, in_channels: int, n_classes: int, image_size: int, pretrained: bool = False
    ) -> nn.Module:
        """A freshly initialised model (``pretrained``: the layout ImageNet weights load
        into, e.g. a ResNet's 7x7 small-image stem)."""
        return self.build_function()(in_channels, n_classes, image_size, pretrained)


def _entry(
    name: str, cam_layer: str, head: str, imagenet_file: str | None, **options
) -> Architecture:
    """An architecture built by ``architectures.build_<name>`` with torchvision's ImageNet
    weights of the same name (none where ``imagenet_file`` is None)."""
    return Architecture(
        builder=f"architectures:build_{name}",
        cam_layer=cam_layer,
        head=(head,),
        torchvision_name=None if imagenet_file is None else name,
        imagenet_file=imagenet_file,
        **options,
    )


# name -> its entry (default CAM layer, classifier head, ImageNet file of torchvision's
# default weights, options); each CAM layer keeps at least 4x4 positions at 28 px.
ARCHITECTURES: dict[str, Architecture] = {
    "resnet18": _entry("resnet18", "layer4", "fc", "resnet18-f37072fd.pth"),
    "resnet34": _entry("resnet34", "layer4", "fc", "resnet34-b627a593.pth"),
    "resnet50": _entry("resnet50", "layer4", "fc", "resnet50-11ad3fa6.pth"),
    "resnet101": _entry("resnet101", "layer4", "fc", "resnet101-cd907fc2.pth"),
    "densenet121": _entry("densenet121", "features", "classifier", "densenet121-a639ec97.pth"),
    "densenet201": _entry("densenet201", "features", "classifier", "densenet201-c1103571.pth"),
    "efficientnet_b0": _entry(
        "efficientnet_b0", "features", "classifier.1", "efficientnet_b0_rwightman-7f5810bc.pth"
    ),
    "mobilenet_v2": _entry("mobilenet_v2", "features", "classifier.1", "mobilenet_v2-7ebf99e0.pth"),
    "squeezenet1_1": _entry(
        "squeezenet1_1", "features", "classifier.1", "squeezenet1_1-b8a52dc0.pth"
    ),
    # the last ReLU of the convolutional part (7x7 at 28 px; the pool after it gives 3x3)
    "vgg11_bn": _entry("vgg11_bn", "features.27", "classifier.6", "vgg11_bn-6002323d.pth"),
    "vgg19_bn": _entry("vgg19_bn", "features.51", "classifier.6", "vgg19_bn-c79401a0.pth"),
    "alexnet": _entry(
        "alexnet", "features.11", "classifier.6", "alexnet-owt-7be5be79.pth", sensible_at_28=False
    ),
    "googlenet": _entry(
        "googlenet", "inception5b", "fc", "googlenet-1378be20.pth", ignored_keys=("aux1.", "aux2.")
    ),
    "inception_v3": _entry(
        "inception_v3",
        "Mixed_7c",
        "fc",
        "inception_v3_google-0cc3c7bd.pth",
        sensible_at_28=False,
        ignored_keys=("AuxLogits.",),
    ),
    # Grad-CAM on a ViT: the last block's first LayerNorm, tokens reshaped to the patch grid
    # (pytorch-grad-cam's ViT recipe); the final LayerNorm only feeds the class token.
    "vit_b_16": _entry(
        "vit_b_16",
        "encoder.layers.encoder_layer_11.ln_1",
        "heads.head",
        "vit_b_16-c867db91.pth",
        sensible_at_28=False,
    ),
    "vit_tiny": _entry("vit_tiny", "encoder.layers.encoder_layer_11.ln_1", "heads.head", None),
}


def get_architecture(name: str) -> Architecture:
    """``ARCHITECTURES[name]``, or a KeyError that lists the valid names."""
    return lookup(ARCHITECTURES, name, "architecture")


@functools.cache
def _layer_snapshot() -> dict:
    return json.loads(LAYER_NAMES_FILE.read_text())


def layer_names(name: str, image_size: int) -> tuple[str, ...]:
    """The dotted module names of architecture ``name`` built for ``image_size`` px images,
    in ``nn.Module.named_modules`` order without the root ``""`` (from the snapshot
    ``LAYER_NAMES_FILE``). They depend on the size only where a model resizes its input
    inside (``input_resize`` of AlexNet, Inception-v3 and ViT-B/16 below their input size);
    channels, classes and ImageNet weights change no names."""
    get_architecture(name)
    snapshot = _layer_snapshot()
    regenerate = (
        "the snapshot is out of date; regenerate it as the docstring of "
        "saliency_robustness.models.registry says"
    )
    if name not in snapshot["architectures"]:
        raise KeyError(f"{LAYER_NAMES_FILE.name} has no layer names of '{name}': {regenerate}.")
    for group in snapshot["architectures"][name]:
        if image_size in group["sizes"]:
            return tuple(group["names"])
    raise ValueError(
        f"{LAYER_NAMES_FILE.name} has no layer names of '{name}' at {image_size} px (sizes: "
        f"{', '.join(map(str, snapshot['sizes']))}); if the size is new, {regenerate}."
    )


def has_layer(name: str, image_size: int, layer: str) -> bool:
    """Whether ``layer`` is a dotted module path of architecture ``name`` at ``image_size``
    px, as ``nn.Module.get_submodule`` decides (``""`` is the model itself)."""
    return layer == "" or layer in layer_names(name, image_size)


def top_level_layers(name: str, image_size: int) -> tuple[str, ...]:
    """The names of the model's direct children (``nn.Module.named_children`` order)."""
    return tuple(n for n in layer_names(name, image_size) if "." not in n)
