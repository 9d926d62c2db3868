"""A combined model (``train.combined``): several backbones, each stripped of its final
layer, whose features are concatenated into one shared classification layer and trained
jointly. ``build.build_combined`` builds one from registry names."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from saliency_robustness.models.heads import HeadSpec, head_stack

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
