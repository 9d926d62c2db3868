"""Weight files: ImageNet weights copied into a model of the study, trained models saved
and read back. Every file is read with torch's weights-only loader (``read_state_dict``),
so a file cannot run code; ``load_imagenet_weights`` adapts the first convolution to the
image's channels, keeps the new head and reports any other mismatch instead of loading
part of a file. Where the ImageNet files are and the messages about them are in the
light ``weight_files`` module, which the config check uses without torch.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from saliency_robustness.models.architectures import first_conv_name
from saliency_robustness.models.registry import get_architecture
from saliency_robustness.models.weight_files import (
    imagenet_weights_path,
    missing_weights_message,
    replace_weights_hint,
)
from saliency_robustness.tables import atomic_path

log = logging.getLogger(__name__)

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


def key_in_modules(key: str, prefixes: Sequence[str]) -> bool:
    """Whether state_dict ``key`` belongs to one of the modules ``prefixes`` (``"fc"`` or
    ``"fc."``: the module ``fc`` and everything in it)."""
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
    first_conv = first_conv_name(model) + ".weight"
    target = model.state_dict()
    new, problems = {}, []
    for key, value in target.items():
        if key_in_modules(key, arch.head):
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
        key
        for key in state
        if key not in target and not key_in_modules(key, arch.head + arch.ignored_keys)
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


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Save a ``state_dict`` (tensors only, so it loads with ``weights_only=True``)."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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
