"""Classifier heads of the study's options: a custom head (``train.head``: ``HeadSpec``,
``replace_head``, ``head_stack``) in place of an architecture's final layer, the width of
such a head read back from a saved file (``head_hidden_in``), and a frozen backbone
(``train.freeze_backbone``: ``freeze_backbone``, ``backbone_norms_eval``) that trains only
the head's parameters. An architecture's head is the module its registry entry names
(``Architecture.head``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from saliency_robustness.models.registry import get_architecture
from saliency_robustness.models.weights import key_in_modules


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
    set_module(model, prefix, new)
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


def set_module(model: nn.Module, dotted: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``dotted`` of ``model`` (replacing what is there)."""
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
    return key_in_modules(key, heads)


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
