"""An ensemble (``train.ensembles``): separately trained models whose class probabilities
are averaged, wrapped as one model whose logits give that average, so that evaluation and
the gradient methods treat it like any model. ``loading.load_ensemble`` reads one."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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
