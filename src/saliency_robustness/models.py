"""Architecture registry: one entry per architecture, adapted to image size and channels.

Adding an architecture is one ``Architecture`` entry in ``ARCHITECTURES``.

Small images (``image_size <= SMALL_IMAGE_MAX_SIZE``): the ImageNet stems divide the image
by 32, which leaves 1x1 (28 px) or 2x2 (64 px) feature maps and constant Grad-CAM maps.
The CNNs therefore get a small-image stem that removes the early strides and max-pools
(the deepest feature map is then 4x4 at 28 px and 8x8 at 64 px); the pretrained kernels
keep their shapes, so ImageNet weights still load. AlexNet, Inception-v3 and ViT-B/16
have a hard minimum (or fixed) input size: they upsample the image bilinearly inside the
model (``InputResize``) to ``Architecture.input_size``. ``vit_tiny`` is a small ViT built
for the input size (patch 4 at 28 px, 8 at 64 px).

ImageNet weights (``weights="imagenet"``) come from torchvision's local cache or a given
file, never from the network; see ``imagenet_weights_path``.

Study options built here: a custom classifier head (``HeadSpec``, ``replace_head``), a frozen
backbone (``freeze_backbone``, ``backbone_norms_eval``) and combined models (``Combined``:
several backbones, one shared classification layer). Which of them a named model uses is
resolved by ``model_specs``; ``load_model(..., spec=...)`` rebuilds the same layers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tv_models
from torchvision.models.vision_transformer import VisionTransformer

from saliency_robustness.registry import lookup

log = logging.getLogger(__name__)

# Below this size the ImageNet stem (7x7 stride-2 conv + max-pool) shrinks the image to 1x1
# at layer4 (28 px), which also makes Grad-CAM maps constant; use a CIFAR-style stem.
SMALL_IMAGE_MAX_SIZE = 64
WEIGHT_CHOICES = ("imagenet",)


# --- building blocks --------------------------------------------------------------------------


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


def _first_conv_name(model: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _set_in_channels(model: nn.Module, in_channels: int) -> None:
    """Replace the first convolution by one with ``in_channels`` inputs, same geometry."""
    name = _first_conv_name(model)
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


# --- builders: (in_channels, n_classes, image_size, pretrained) -> model ----------------------

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


def _efficientnet_b0(in_channels: int, n_classes: int, image_size: int, pretrained: bool = False):
    model = tv_models.efficientnet_b0(weights=None, num_classes=n_classes)
    if image_size <= SMALL_IMAGE_MAX_SIZE:
        _stride1(model.features[0][0])  # stem conv
        _stride1(model.features[2][0].block[1][0])  # first stride-2 depthwise conv
    _set_in_channels(model, in_channels)
    return model


def _mobilenet_v2(in_channels: int, n_classes: int, image_size: int, pretrained: bool = False):
    model = tv_models.mobilenet_v2(weights=None, num_classes=n_classes)
    if image_size <= SMALL_IMAGE_MAX_SIZE:
        _stride1(model.features[0][0])
        _stride1(model.features[2].conv[1][0])
    _set_in_channels(model, in_channels)
    return model


def _squeezenet1_1(in_channels: int, n_classes: int, image_size: int, pretrained: bool = False):
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


def _alexnet(in_channels: int, n_classes: int, image_size: int, pretrained: bool = False):
    model = tv_models.alexnet(weights=None, num_classes=n_classes)
    if image_size < ALEXNET_INPUT:
        _upsample_inside(model, ALEXNET_INPUT)
    _set_in_channels(model, in_channels)
    return model


def _googlenet(in_channels: int, n_classes: int, image_size: int, pretrained: bool = False):
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


def _inception_v3(in_channels: int, n_classes: int, image_size: int, pretrained: bool = False):
    model = tv_models.inception_v3(
        weights=None, num_classes=n_classes, aux_logits=False, transform_input=False,
        init_weights=True,
    )  # fmt: skip
    if image_size < INCEPTION_INPUT:
        _upsample_inside(model, INCEPTION_INPUT)
    _set_in_channels(model, in_channels)
    return model


def _vit_b_16(in_channels: int, n_classes: int, image_size: int, pretrained: bool = False):
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


def _vit_tiny(in_channels: int, n_classes: int, image_size: int, pretrained: bool = False):
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


ALEXNET_INPUT = 112  # conv5 is 6x6 at 112 px (below 63 px AlexNet fails outright)
INCEPTION_INPUT = 171  # Mixed_7c is 4x4 from 171 px (torchvision's minimum is 75 px)


@dataclass(frozen=True)
class Architecture:
    """How to build a model and which layer Grad-CAM-style methods use by default.

    ``head``: module prefixes of the classifier head, replaced (freshly initialised for
    the dataset's classes) when ImageNet weights are loaded. ``ignored_keys``: prefixes of
    ImageNet state_dict entries the model does not have (auxiliary classifiers).
    ``torchvision_name``: the torchvision model whose ImageNet weights fit (None: none).
    ``sensible_at_28``: whether the model is a reasonable choice for 28 px images (README).
    """

    build: Builder
    cam_layer: str  # dotted module path, e.g. "layer4"; 4x4 at 28 px for ResNets
    head: tuple[str, ...]
    torchvision_name: str | None
    sensible_at_28: bool = True
    ignored_keys: tuple[str, ...] = field(default_factory=tuple)


ARCHITECTURES: dict[str, Architecture] = {
    **{
        name: Architecture(_resnet(getattr(tv_models, name)), "layer4", ("fc",), name)
        for name in ("resnet18", "resnet34", "resnet50", "resnet101")
    },
    **{
        name: Architecture(_densenet(getattr(tv_models, name)), "features", ("classifier",), name)
        for name in ("densenet121", "densenet201")
    },
    "efficientnet_b0": Architecture(
        _efficientnet_b0, "features", ("classifier.1",), "efficientnet_b0"
    ),
    "mobilenet_v2": Architecture(_mobilenet_v2, "features", ("classifier.1",), "mobilenet_v2"),
    "squeezenet1_1": Architecture(_squeezenet1_1, "features", ("classifier.1",), "squeezenet1_1"),
    # the last ReLU of the convolutional part (7x7 at 28 px; the pool after it gives 3x3)
    "vgg11_bn": Architecture(
        _vgg(tv_models.vgg11_bn), "features.27", ("classifier.6",), "vgg11_bn"
    ),
    "vgg19_bn": Architecture(
        _vgg(tv_models.vgg19_bn), "features.51", ("classifier.6",), "vgg19_bn"
    ),
    "alexnet": Architecture(
        _alexnet, "features.11", ("classifier.6",), "alexnet", sensible_at_28=False
    ),
    "googlenet": Architecture(
        _googlenet, "inception5b", ("fc",), "googlenet", ignored_keys=("aux1.", "aux2.")
    ),
    "inception_v3": Architecture(
        _inception_v3,
        "Mixed_7c",
        ("fc",),
        "inception_v3",
        sensible_at_28=False,
        ignored_keys=("AuxLogits.",),
    ),  # fmt: skip
    # Grad-CAM on a ViT: the last block's first LayerNorm, tokens reshaped to the patch grid
    # (pytorch-grad-cam's ViT recipe); the final LayerNorm only feeds the class token.
    "vit_b_16": Architecture(
        _vit_b_16,
        "encoder.layers.encoder_layer_11.ln_1",
        ("heads.head",),
        "vit_b_16",
        sensible_at_28=False,
    ),  # fmt: skip
    "vit_tiny": Architecture(
        _vit_tiny, "encoder.layers.encoder_layer_11.ln_1", ("heads.head",), None
    ),
}


def get_architecture(name: str) -> Architecture:
    return lookup(ARCHITECTURES, name, "architecture")


# --- ViT support for CAM methods ------------------------------------------------------------


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


# --- ImageNet weights -----------------------------------------------------------------------


def imagenet_weights_url(name: str) -> str:
    """URL of torchvision's default ImageNet weights for architecture ``name``."""
    tv_name = get_architecture(name).torchvision_name
    if tv_name is None:
        raise ValueError(
            f"torchvision has no ImageNet weights for '{name}'; use train.weights: null, or "
            f"set train.weights_files.{name} to a state_dict file of this architecture."
        )
    return tv_models.get_model_weights(tv_name).DEFAULT.url


def imagenet_weights_path(name: str, weights_file: str | os.PathLike | None = None) -> Path:
    """Where the ImageNet weights of ``name`` are read from: ``weights_file`` when given,
    else torchvision's cache, ``torch.hub.get_dir()/checkpoints/<file name of the URL>``
    (``$TORCH_HOME/hub/checkpoints``, the place torchvision downloads to)."""
    if weights_file is not None:
        return Path(weights_file).expanduser()
    url = imagenet_weights_url(name)
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def missing_weights_message(name: str, path: Path) -> str:
    try:
        source = f"Download {imagenet_weights_url(name)} and save it as {path}"
    except ValueError as error:
        source = str(error)
    return (
        f"ImageNet weights for '{name}' not found at {path}. {source} (torchvision's cache "
        f"is $TORCH_HOME/hub/checkpoints; TORCH_HOME={os.environ.get('TORCH_HOME')!r}), or "
        f"set train.weights_files.{name} to a local copy. There is no fallback to random "
        "weights."
    )


# torchvision's DenseNet files use the old key names 'norm.1' for 'norm1' (its own loader,
# torchvision.models.densenet._load_state_dict, renames them with this pattern).
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB kernels for ``in_channels`` inputs: grayscale gets the sum over RGB (a gray image
    copied into three channels gives exactly that response); other counts get the RGB mean
    repeated and scaled by 3 / in_channels (the same response to a uniform image)."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (3.0 / in_channels)


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether state_dict ``key`` belongs to one of the modules ``prefixes``."""
    return any(key == p or key.startswith(p.rstrip(".") + ".") for p in prefixes)


def load_imagenet_weights(
    model: nn.Module, name: str, weights_file: str | os.PathLike | None = None
) -> nn.Module:
    """Copy ImageNet weights into ``model`` (built with ``pretrained=True``): the first
    convolution adapted to the model's channels, the head (``Architecture.head``) kept as
    initialised. Any other mismatch is an error, never a silent partial load."""
    arch = get_architecture(name)
    path = imagenet_weights_path(name, weights_file)
    if not path.is_file():
        raise FileNotFoundError(missing_weights_message(name, path))
    state = read_state_dict(path, f"ImageNet weights of {name}", replace_weights_hint(name, path))
    state = {_DENSENET_OLD_KEY.sub(r"\1\2", key): value for key, value in state.items()}
    first_conv = _first_conv_name(model) + ".weight"
    target = model.state_dict()
    new, problems = {}, []
    for key, value in target.items():
        if _under(key, arch.head):
            new[key] = value  # replaced head: the dataset's classes
        elif key not in state and key.endswith("num_batches_tracked"):
            new[key] = value  # files older than this BatchNorm counter (DenseNet) lack it
        elif key not in state:
            problems.append(f"{key}: missing in the file")
        elif state[key].shape == value.shape:
            new[key] = state[key].to(value.dtype)
        elif key == first_conv and state[key].shape[2:] == value.shape[2:]:
            new[key] = _adapt_first_conv(state[key], value.shape[1]).to(value.dtype)
        else:
            problems.append(f"{key}: file {tuple(state[key].shape)}, model {tuple(value.shape)}")
    unused = [
        key for key in state if key not in target and not _under(key, arch.head + arch.ignored_keys)
    ]
    problems += [f"{key}: in the file but not in the model" for key in unused]
    if problems:
        raise ValueError(
            f"{path} does not fit architecture '{name}' ({len(problems)} problems): "
            + "; ".join(problems[:5])
        )
    model.load_state_dict(new)
    log.info("loaded ImageNet weights for %s from %s (head re-initialised)", name, path)
    return model


# --- classifier heads and frozen backbones --------------------------------------------------


@dataclass(frozen=True)
class HeadSpec:
    """A custom classifier head (``train.head``): the architecture's final layer becomes
    layer -> ReLU -> dropout -> layer with ``hidden`` units between (the COVID study's
    fc -> ReLU -> dropout -> fc). Linear layers, or 1x1 convolutions where the final layer
    is one (SqueezeNet, whose class maps are then average-pooled as before)."""

    hidden: int
    dropout: float = 0.5

    @classmethod
    def from_config(cls, head: dict | None) -> HeadSpec | None:
        return None if head is None else cls(int(head["hidden"]), float(head.get("dropout", 0.5)))


def head_prefix(name: str) -> str:
    """The module path of ``name``'s classifier head (its ``Architecture.head``)."""
    (prefix,) = get_architecture(name).head
    return prefix


def replace_head(model: nn.Module, name: str, head: HeadSpec, n_classes: int) -> nn.Module:
    """Replace architecture ``name``'s final layer in ``model`` by ``head``'s stack (freshly
    initialised from the torch seed). Its state_dict keys are ``<prefix>.0.*`` (first layer)
    and ``<prefix>.3.*`` (output layer)."""
    prefix = head_prefix(name)
    old = model.get_submodule(prefix)
    if isinstance(old, nn.Linear):
        new = head_stack(old.in_features, n_classes, head)
    elif isinstance(old, nn.Conv2d) and old.kernel_size == (1, 1):
        new = head_stack(old.in_channels, n_classes, head, conv=True)
    else:
        raise ValueError(f"{name}: cannot replace a {type(old).__name__} head.")
    _set_module(model, prefix, new)
    return model


def head_stack(
    in_features: int, n_classes: int, head: HeadSpec, conv: bool = False
) -> nn.Sequential:
    """layer -> ReLU -> dropout -> layer (Linear, or 1x1 convolutions with ``conv``)."""
    if conv:
        first = nn.Conv2d(in_features, head.hidden, kernel_size=1)
        last = nn.Conv2d(head.hidden, n_classes, kernel_size=1)
    else:
        first, last = nn.Linear(in_features, head.hidden), nn.Linear(head.hidden, n_classes)
    return nn.Sequential(first, nn.ReLU(), nn.Dropout(head.dropout), last)


def _set_module(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, child = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def head_hidden_in(state: Mapping, prefix: str) -> int | None:
    """The hidden width of a custom head at module ``prefix`` in a saved state_dict (None:
    no custom head there). Read from the file, so that a grid over ``head.hidden`` loads
    the width that was chosen."""
    weight = state.get(f"{prefix}.0.weight")
    return None if weight is None else int(weight.shape[0])


def is_head_key(key: str, heads: Sequence[str]) -> bool:
    """Whether a parameter or buffer name belongs to one of the modules ``heads``."""
    return _under(key, tuple(heads))


def freeze_backbone(model: nn.Module, heads: Sequence[str]) -> list[nn.Parameter]:
    """Turn off gradients of every parameter outside the modules ``heads``; returns the
    head's parameters (the only ones to give the optimiser). The backbone's BatchNorm
    layers must also stay in eval mode (``backbone_norms_eval``)."""
    trainable = []
    for key, parameter in model.named_parameters():
        if is_head_key(key, heads):
            trainable.append(parameter)
        else:
            parameter.requires_grad_(False)
    if not trainable:
        raise ValueError(f"No parameters under the head modules {list(heads)}.")
    return trainable


def backbone_norms_eval(model: nn.Module, heads: Sequence[str]) -> None:
    """Put the BatchNorm layers outside ``heads`` into eval mode (after ``model.train()``),
    so a frozen backbone's running statistics do not change either."""
    for key, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not is_head_key(key, heads):
            module.eval()


# --- public API -----------------------------------------------------------------------------


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


# --- combined models --------------------------------------------------------------------------

COMBINED_HEAD = "classifier"  # the shared classification layer of a ``Combined`` model


class Combined(nn.Module):
    """Backbones without their heads whose features are concatenated into one shared
    classification layer, trained jointly (``train.combined``; the CheXpert study's combined
    model, unlike ``Ensemble``, which averages separately trained models). A backbone's
    features are the input of its final layer: global-average-pooled for the CNNs with a
    pooling head (ResNet, DenseNet, EfficientNet, MobileNet, SqueezeNet, GoogLeNet,
    Inception), the fc7 features for VGG and AlexNet, the class token for ViTs."""

    def __init__(
        self,
        backbones: Sequence[nn.Module],
        names: Sequence[str],
        widths: Sequence[int],
        n_classes: int,
        head: HeadSpec | None = None,
    ) -> None:
        super().__init__()
        if len(backbones) < 2 or not len(backbones) == len(names) == len(widths):
            raise ValueError("A combined model needs at least two backbones, each with a name.")
        self.backbones = nn.ModuleList(backbones)
        self.backbone_names = list(names)
        total = int(sum(widths))
        self.classifier = (
            nn.Linear(total, n_classes) if head is None else head_stack(total, n_classes, head)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([backbone(x) for backbone in self.backbones], dim=1))


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
        _set_module(model, prefix, nn.Identity())
        if isinstance(final, nn.Conv2d):  # SqueezeNet: (N, C, 1, 1) after its pooling
            model.classifier.append(nn.Flatten())
        model.registry_name = name
        models.append(model)
    return Combined(models, backbones, widths, n_classes, head)


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
    weights: str | None = None,
    spec: Mapping | None = None,
) -> nn.Module:
    """Build the architecture and load trained weights safely (no pickle code execution).

    ``weights`` is the ``train.weights`` the model was trained with: a ResNet's small-image
    stem keeps the 7x7 ImageNet kernel when it was pretrained (the file is not read again).
    ``spec``: the model's resolved settings (``model_specs.model_settings``), which then
    decide the base architecture, ``weights`` and the classifier head, so that a variant
    (``train.variants``) or combined model loads with the layers it was trained with.
    """
    state = read_state_dict(
        path,
        f"trained {name} model",
        f"Delete it so that Snakemake trains it again, or run: snakemake --forcerun {path}",
    )
    base, head, backbones = name, None, None
    if spec is not None:
        base, weights, backbones = spec["arch"], spec["weights"], spec.get("backbones")
        head = HeadSpec.from_config(spec.get("head"))
    if head is not None:  # the width the file was trained with (a grid may choose it)
        hidden = head_hidden_in(state, COMBINED_HEAD if backbones else head_prefix(base))
        head = head if hidden is None else dataclasses.replace(head, hidden=hidden)
    if backbones:  # the stems follow the weights; the ImageNet files are not read again
        model = build_combined(
            backbones, in_channels, n_classes, image_size, weights, head=head, read_weights=False
        )
    else:
        model = get_architecture(base).build(
            in_channels, n_classes, image_size, weights is not None
        )
        if head is not None:
            replace_head(model, base, head, n_classes)
        model.registry_name = base
    model.load_state_dict(state)
    return model.to(device).eval()


def read_state_dict(path: str | os.PathLike, what: str, fix: str) -> dict:
    """``torch.load(..., weights_only=True)`` of a state_dict; a damaged or foreign file is a
    ValueError naming the file, what it should hold and the fix. torch's own message is not
    passed on: it suggests turning the weights-only guard off, which would run the file's
    pickled code."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # zip/pickle/EOF errors differ by the kind of damage
        if "weights_only" in str(error) or "Weights only" in str(error):
            cause = "it holds Python objects besides tensors (a pickled model, not a state_dict)"
        else:
            cause = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise ValueError(f"{path} cannot be read as the {what} ({cause}). {fix}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a state_dict (a dict of tensors) for the {what}. {fix}")
    return state


def replace_weights_hint(name: str, path: str | os.PathLike) -> str:
    """How to replace a damaged ImageNet weights file."""
    try:
        source = f"download {imagenet_weights_url(name)} again and save it as {path}"
    except ValueError:
        source = f"replace {path} with an intact copy"
    return f"Fix: {source}, or point train.weights_files.{name} at an intact copy."


# --- ensembles ------------------------------------------------------------------------------


class Ensemble(nn.Module):
    """Members' averaged probabilities, returned as logits whose softmax (or sigmoid, for
    ``output="sigmoid"``, multi-label) is exactly that average: log(mean p) for softmax,
    logit(mean p) for sigmoid. Code that applies softmax/sigmoid to a model's output
    (``predict_proba``, captum targets) therefore treats the ensemble like any model, and
    gradients flow through every member."""

    def __init__(
        self, members: Sequence[nn.Module], names: Sequence[str], output: str = "softmax"
    ) -> None:
        super().__init__()
        if len(members) < 2 or len(members) != len(names):
            raise ValueError("An ensemble needs at least two members, each with a name.")
        if output not in ("softmax", "sigmoid"):
            raise ValueError(f"Ensemble output must be softmax or sigmoid, got {output!r}.")
        self.members = nn.ModuleList(members)
        self.member_names = list(names)
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "softmax":
            probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(0)
            return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
        probs = torch.stack([torch.sigmoid(m(x)) for m in self.members]).mean(0)
        eps = torch.finfo(probs.dtype).eps
        return torch.logit(probs, eps=eps)


def load_ensemble(
    paths: Sequence[str | os.PathLike],
    members: Sequence[str],
    in_channels: int,
    n_classes: int,
    image_size: int,
    device: torch.device | str = "cpu",
    weights: str | None = None,
    output: str = "softmax",
    specs: Mapping[str, Mapping] | None = None,
) -> Ensemble:
    """An ``Ensemble`` of trained members, ``paths[i]`` holding ``members[i]``'s weights;
    ``specs``: each member's resolved settings (see ``load_model``)."""
    if len(paths) != len(members):
        raise ValueError(f"{len(members)} ensemble members but {len(paths)} weight files.")
    models = [
        load_model(
            path,
            name,
            in_channels,
            n_classes,
            image_size,
            device,
            weights,
            spec=None if specs is None else specs[name],
        )  # fmt: skip
        for path, name in zip(paths, members, strict=True)
    ]
    return Ensemble(models, members, output).to(device).eval()


def load_model_or_ensemble(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    arch: str,
    ensembles: dict[str, list[str]],
    in_channels: int,
    n_classes: int,
    image_size: int,
    device: torch.device | str = "cpu",
    weights: str | None = None,
    output: str = "softmax",
    specs: Mapping[str, Mapping] | None = None,
) -> nn.Module:
    """``load_ensemble`` when ``arch`` names one of ``ensembles`` (``train.ensembles``),
    else ``load_model`` of the single file; ``specs``: resolved settings by model name."""
    if arch in ensembles:
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        return load_ensemble(
            paths, ensembles[arch], in_channels, n_classes, image_size, device, weights, output,
            specs,
        )  # fmt: skip
    if not isinstance(paths, (str, os.PathLike)):
        (paths,) = list(paths)
    spec = None if specs is None else specs[arch]
    return load_model(paths, arch, in_channels, n_classes, image_size, device, weights, spec)


def load_trained_model(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    arch: str,
    info,
    image_size: int,
    device: torch.device | str,
    ensembles: dict[str, list[str]],
    weights: str | None = None,
    train: Mapping | None = None,
) -> nn.Module:
    """A trained model (or ensemble) for a dataset described by ``data.DatasetInfo``:
    channels, classes and the output activation (sigmoid for multi-label) come from it.
    ``train``: the config's train section; each model (an ensemble's every member) is then
    built from its resolved settings (``model_specs.model_settings``: a variant's base
    architecture, weights and head), and ``weights`` is ignored."""
    from saliency_robustness.evaluation import is_multi_label
    from saliency_robustness.model_specs import model_settings

    specs = None
    if train is not None:
        names = ensembles.get(arch, [arch])
        specs = {name: model_settings(name, train) for name in names}
    return load_model_or_ensemble(
        paths,
        arch,
        ensembles,
        info.n_channels,
        info.n_classes,
        image_size,
        device,
        weights=weights,
        output="sigmoid" if is_multi_label(info.task) else "softmax",
        specs=specs,
    )


def images_to_tensor(images) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) -> float (N, C, H, W) scaled to [-1, 1].

    The same scaling as the MedMNIST reference code (ToTensor, Normalize(0.5, 0.5)).
    """
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8:
        raise TypeError(f"Expected uint8 images, got {tensor.dtype}.")
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return scale_pixels(tensor.float())


def scale_pixels(tensor: torch.Tensor) -> torch.Tensor:
    """Float pixel values on the 0..255 scale -> the models' input scale, -1..1 (the
    scaling of ``images_to_tensor``, for inputs that are not uint8, such as shap's)."""
    return tensor.div(255.0).sub(0.5).div(0.5)
