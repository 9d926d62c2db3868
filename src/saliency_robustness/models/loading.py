"""Trained models read back for evaluation and attribution: ``load_model`` rebuilds a model
with the layers it was trained with (its resolved settings from ``specs.model_settings``:
base architecture, ImageNet stem, custom head of the width in the file) and loads its
state_dict safely; ``load_ensemble`` averages several such members; ``load_trained_model``
takes the channels, classes and output activation from the dataset's description."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from saliency_robustness.datasets.info import DatasetInfo, is_multi_label
from saliency_robustness.models.build import build_combined
from saliency_robustness.models.combined import COMBINED_HEAD
from saliency_robustness.models.ensemble import Ensemble
from saliency_robustness.models.heads import HeadSpec, head_hidden_in, head_prefix, replace_head
from saliency_robustness.models.registry import get_architecture
from saliency_robustness.models.specs import model_settings
from saliency_robustness.models.weights import read_state_dict


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
    ``spec``: the model's resolved settings (``specs.model_settings``), which then
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
    info: DatasetInfo,
    image_size: int,
    device: torch.device | str,
    ensembles: dict[str, list[str]],
    weights: str | None = None,
    train: Mapping | None = None,
) -> nn.Module:
    """A trained model (or ensemble) for a dataset described by ``info``:
    channels, classes and the output activation (sigmoid for multi-label) come from it.
    ``train``: the config's train section; each model (an ensemble's every member) is then
    built from its resolved settings (``specs.model_settings``: a variant's base
    architecture, weights and head), and ``weights`` is ignored."""
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
