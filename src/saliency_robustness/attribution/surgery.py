"""Model surgery for captum's DeepLift and the guided methods: ``unshared_copy``, a deep
copy of a model in which every non-linear module is used once per forward pass, not in
place, and not adjacent to another one.

torchvision's ResNets reuse one in-place ReLU per block, which captum's DeepLift rejects
and its per-module hooks cannot tell apart; the copy computes the same outputs, and the
model itself is left alone. Overlapping max-pools are routed through the functional API so
that DeepLift treats them with the plain gradient.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR
from torch import nn


class _PerCall(nn.Module):
    """Stands in for a non-linear module that a forward pass may call several times
    (torchvision ResNets reuse one ``nn.ReLU`` per block): call i of a forward pass goes
    to its own non-in-place copy, so captum's per-module hooks see each use separately.
    The output is cloned so that two adjacent non-linear modules (ReLU then max-pool)
    never share a tensor: captum 0.9.0's DeepLift otherwise reads the wrong output
    gradient for the first of them (captum issue #1104)."""

    def __init__(self, module: nn.Module, n_calls: int) -> None:
        super().__init__()
        copies = []
        for _ in range(max(1, n_calls)):
            fresh = copy.deepcopy(module)
            if hasattr(fresh, "inplace"):
                fresh.inplace = False
            copies.append(fresh)
        self.calls = nn.ModuleList(copies)
        self.index = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        module = self.calls[self.index % len(self.calls)]
        self.index += 1
        return module(x).clone()


class _PlainMaxPool(nn.Module):
    """An overlapping max-pool (kernel larger than stride, as in the ImageNet stem) called
    through the functional API, so that captum leaves it to plain autograd: captum's
    DeepLift max-pool rule unpools with ``max_unpool``, which drops contributions where
    windows overlap and breaks summation-to-delta far more than the plain gradient does."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool
        return F.max_pool2d(x, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode)


def _overlapping(pool: nn.MaxPool2d) -> bool:
    kernel = nn.modules.utils._pair(pool.kernel_size)
    stride = nn.modules.utils._pair(pool.stride or pool.kernel_size)
    return any(k > s for k, s in zip(kernel, stride, strict=True))


def unshared_copy(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A deep copy of ``model`` in which every non-linear module DeepLift hooks is used
    once per forward pass, not in place, and not adjacent to another one.

    Needed by captum's DeepLift (which raises "A Module ReLU(inplace=True) was detected
    that does not contain some of the input/output attributes ..." on a torchvision ResNet)
    and used for guided backpropagation too, so that one rule holds for both. The original
    model is untouched; the copy computes the same outputs. ``example`` (one input is
    enough) is run once to count how often each module is called.
    """
    model = copy.deepcopy(model).eval()
    counts: dict[str, int] = {}

    def counter(name: str):
        def count(_module, _inputs) -> None:
            counts[name] = counts.get(name, 0) + 1

        return count

    handles = [
        module.register_forward_pre_hook(counter(name))
        for name, module in model.named_modules()
        if type(module) in SUPPORTED_NON_LINEAR
    ]
    try:
        with torch.no_grad():
            model(example[:1].detach())
    finally:
        for handle in handles:
            handle.remove()
    wrappers = []
    for name, n_calls in counts.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = getattr(parent, child)
        if isinstance(module, nn.MaxPool2d) and _overlapping(module):
            replacement = _PlainMaxPool(module)
        else:
            replacement = _PerCall(module, n_calls)
            wrappers.append(replacement)
        setattr(parent, child, replacement)

    def restart(_module, _inputs) -> None:
        for wrapper in wrappers:
            wrapper.index = 0

    model.register_forward_pre_hook(restart)
    return model
