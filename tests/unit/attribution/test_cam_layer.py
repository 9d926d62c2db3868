"""CAM layers: the default layer keeps at least 4x4 positions, Grad-CAM there is not
constant, an unknown layer is named, and an ensemble's maps are its members' maps
averaged after the channel reduction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saliency_robustness.analysis.map_similarity import constant_maps as is_constant
from saliency_robustness.attribution.cam_layer import default_cam_layer
from saliency_robustness.attribution.maps import compute_maps
from saliency_robustness.attribution.registry import method_params
from saliency_robustness.evaluation import predict_proba
from saliency_robustness.models.build import build_model, get_layer
from saliency_robustness.models.ensemble import Ensemble
from saliency_robustness.models.registry import get_architecture

CAM_LAYER = get_architecture("resnet18").cam_layer


def test_gradcam_at_the_default_layer_is_not_constant(model, clean_test_images):
    images = clean_test_images[:12]
    targets = predict_proba(model, images).argmax(axis=1)
    params = method_params("gradcam", {}, CAM_LAYER)
    maps = compute_maps(model, images, targets, "gradcam", params, batch_size=12)
    assert maps.shape == (12, 28, 28)
    constant = is_constant(maps)
    assert constant.mean() < 0.5, f"{constant.sum()} of 12 Grad-CAM maps are constant"
    varied = maps[~constant]
    assert (varied.min(axis=(1, 2)) >= 0).all() and (varied.max(axis=(1, 2)) <= 1 + 1e-6).all()


# The ResNets here; every registered architecture (after one training step, at 28 and 64 px)
# in tests/unit/models/test_architectures.py: untrained MobileNetV2 saturates its ReLU6 in eval
# mode and gives constant maps, which says nothing about the CAM layer.
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_gradcam_at_the_default_layer_is_not_constant_for_every_architecture(
    arch, model, clean_test_images
):
    """The trained ResNet-18 fixture, and an untrained (seeded) model for the others."""
    images = clean_test_images[:4]
    if arch == "resnet18":
        net = model
    else:
        torch.manual_seed(0)
        net = build_model(arch, 1, 2, 28).eval()
    targets = predict_proba(net, images).argmax(axis=1)
    params = method_params("gradcam", {}, None)  # None: default_cam_layer per batch
    maps = compute_maps(net, images, targets, "gradcam", params, batch_size=4)
    assert maps.shape == (4, 28, 28)
    assert not is_constant(maps).any()


def _output_size(net: torch.nn.Module, layer: str, size: int) -> tuple[int, int]:
    shapes = []
    handle = get_layer(net, layer).register_forward_hook(
        lambda _m, _i, output: shapes.append(tuple(output.shape[-2:]))
    )
    with torch.no_grad():
        net(torch.zeros(1, 1, size, size))
    handle.remove()
    return shapes[-1]


@pytest.mark.parametrize(
    ("arch", "size", "expected"),
    [
        ("resnet18", 28, "layer4"),  # CIFAR stem: layer4 4x4 (layer3 7x7)
        ("resnet50", 28, "layer4"),
        ("resnet18", 64, "layer4"),  # 8x8
        ("resnet50", 64, "layer4"),
        ("resnet18", 16, "layer3"),  # layer4 would be 2x2
        ("resnet18", 96, "layer3"),  # ImageNet stem: layer4 3x3, layer3 6x6
    ],
)
def test_default_cam_layer_keeps_at_least_4x4(arch, size, expected):
    torch.manual_seed(0)
    net = build_model(arch, 1, 2, size).eval()
    for preferred in (arch, None):  # the architecture's layer, or the walk over all layers
        layer = default_cam_layer(net, preferred, size)
        assert layer == expected
        assert min(_output_size(net, layer, size)) >= 4
    assert not net.training


def test_gradcam_rejects_an_unknown_layer(model, images, predicted):
    params = method_params("gradcam", {"cam_layer": "layer9"}, CAM_LAYER)
    with pytest.raises(KeyError, match="layer9"):
        compute_maps(model, images[:2], predicted[:2], "gradcam", params, 2)


@pytest.mark.parametrize("name", ["gradcam", "guided_gradcam", "eigencam"])
def test_an_ensemble_averages_its_members_maps_at_their_own_layers(name, clean_test_images):
    """Guided Grad-CAM too: each member's attributions are reduced (abs_sum) before the
    average, so the ensemble's map is the mean of the members' maps, not the reduction of
    the mean attribution."""
    torch.manual_seed(0)
    members = [build_model("resnet18", 1, 2, 28).eval() for _ in range(2)]
    ensemble = Ensemble(members, ["a", "b"]).eval()
    images, targets = clean_test_images[:3], np.array([0, 1, 1])
    params = method_params(name, None)  # cam_layer None: each member's default
    maps = compute_maps(ensemble, images, targets, name, params, batch_size=3)
    each = [compute_maps(m, images, targets, name, params, batch_size=3) for m in members]
    np.testing.assert_array_equal(maps, np.mean(each, axis=0))
    with pytest.raises(ValueError, match="cannot be set for an ensemble or combined model"):
        compute_maps(ensemble, images, targets, name, method_params(name, None, "layer4"), 3)
