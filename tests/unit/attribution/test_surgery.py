"""Model surgery for DeepLift and the guided methods: ``unshared_copy`` computes the same
outputs with every ReLU used once, and DeepLift on it sums to the logit difference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import DeepLift

from saliency_robustness.attribution.inputs import BLACK
from saliency_robustness.attribution.maps import compute_maps
from saliency_robustness.attribution.registry import method_params
from saliency_robustness.attribution.surgery import unshared_copy
from saliency_robustness.models.build import build_model
from saliency_robustness.models.tensors import images_to_tensor


@pytest.mark.filterwarnings("ignore::UserWarning")  # captum's notices on the direct call
def test_deeplift_needs_the_unshared_copy_and_sums_to_the_logit_difference(
    model, images, predicted
):
    """torchvision's ResNets call one in-place ReLU twice per block, which captum's DeepLift
    rejects; on ``unshared_copy`` the attributions sum to logit(x) - logit(black)."""
    x, targets = images[:2], predicted[:2]
    inputs = images_to_tensor(x)
    baselines = torch.full_like(inputs, BLACK)
    with pytest.raises(RuntimeError, match="used more than once"):
        DeepLift(model).attribute(inputs, baselines, target=torch.as_tensor(targets))
    maps = compute_maps(model, x, targets, "deeplift", method_params("deeplift", None), 2)
    rows = np.arange(len(x))
    with torch.no_grad():
        expected = (model(inputs) - model(baselines)).numpy()[rows, targets]
    assert np.all(np.abs(expected) > 1e-3), expected
    np.testing.assert_allclose(maps.reshape(2, -1).sum(axis=1), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("size", [28, 72])  # CIFAR stem; ImageNet stem with its max-pool
def test_unshared_copy_computes_the_same_outputs_and_leaves_the_model_alone(size):
    torch.manual_seed(0)
    net = build_model("resnet18", 1, 2, size).eval()
    x = torch.rand(2, 1, size, size) * 2 - 1
    before = [type(m).__name__ for m in net.modules()]
    copy = unshared_copy(net, x)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), net(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(copy(x), net(x), rtol=1e-5, atol=1e-6)  # counters restart
    assert [type(m).__name__ for m in net.modules()] == before
    relus = [m for m in copy.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    calls = {}
    hooks = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(m, calls.get(m, 0) + 1))
             for m in relus]  # fmt: skip
    with torch.no_grad():
        copy(x)
    for hook in hooks:
        hook.remove()
    assert set(calls.values()) == {1}  # every ReLU module is used once per forward pass
