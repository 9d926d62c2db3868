"""Building a registered model (small-image stem, adapted channels, unknown names and
layers), the input tensors and device, and trained weights saved and read back safely."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from saliency_robustness.models.build import build_model, get_layer
from saliency_robustness.models.loading import load_model
from saliency_robustness.models.registry import ARCHITECTURES, get_architecture
from saliency_robustness.models.tensors import images_to_tensor, resolve_device
from saliency_robustness.models.weights import save_weights


def test_resnet18_at_28_px_has_a_cifar_stem_and_a_4x4_layer4():
    model = build_model("resnet18", in_channels=1, n_classes=2, image_size=28).eval()
    assert isinstance(model.conv1, nn.Conv2d)
    assert model.conv1.in_channels == 1
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 2
    captured = {}
    layer = get_layer(model, get_architecture("resnet18").cam_layer)
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    with torch.no_grad():
        logits = model(torch.zeros(2, 1, 28, 28))
    handle.remove()
    assert logits.shape == (2, 2)
    assert captured["out"].shape[-2:] == (4, 4)


def test_large_images_keep_the_imagenet_stem_with_adapted_channels():
    model = build_model("resnet18", in_channels=1, n_classes=3, image_size=128)
    assert model.conv1.kernel_size == (7, 7)
    assert model.conv1.stride == (2, 2)
    assert model.conv1.in_channels == 1
    assert isinstance(model.maxpool, nn.MaxPool2d)


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(KeyError) as excinfo:
        build_model("resnet19", 1, 2, 28)
    message = str(excinfo.value)
    assert "resnet19" in message
    for name in ARCHITECTURES:
        assert name in message


def test_unknown_layer_lists_top_level_layers():
    model = build_model("resnet18", 1, 2, 28)
    with pytest.raises(KeyError, match="layer4"):
        get_layer(model, "layer9")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_resolve_device_cuda_without_gpu_explains():
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        resolve_device("cuda")


def test_images_to_tensor_scales_uint8_to_minus_one_one():
    images = np.array([[[0, 255], [51, 204]]], dtype=np.uint8)
    tensor = images_to_tensor(images)
    assert tensor.shape == (1, 1, 2, 2)
    assert tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor[0, 0].numpy(), [[-1.0, 1.0], [-0.6, 0.6]], atol=1e-6)
    rgb = np.zeros((3, 5, 5, 3), dtype=np.uint8)
    assert images_to_tensor(rgb).shape == (3, 3, 5, 5)
    with pytest.raises(TypeError, match="uint8"):
        images_to_tensor(images.astype(np.float32))


def test_save_and_load_model_round_trip_gives_identical_outputs(tmp_path, model, breast):
    path = tmp_path / "weights" / "model.pt"
    save_weights(model, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp file left
    loaded = load_model(path, "resnet18", in_channels=1, n_classes=2, image_size=28)
    assert not loaded.training
    inputs = images_to_tensor(breast["test_images"][:16])
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs), model(inputs), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


class _Payload:
    """Pickles into a call of os.mkdir: loading it unsafely would create ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_load_model_uses_weights_only_loading(tmp_path):
    model = build_model("resnet18", 1, 2, 28)
    state = dict(model.state_dict())
    marker = tmp_path / "code_was_executed"
    state["payload"] = _Payload(str(marker))
    path = tmp_path / "evil.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="holds Python objects besides tensors") as caught:
        load_model(path, "resnet18", 1, 2, 28)
    assert "weights_only" not in str(caught.value)  # never the advice to unpickle
    assert not marker.exists()


def test_load_model_rejects_weights_of_another_architecture(tmp_path):
    path = tmp_path / "resnet18.pt"
    save_weights(build_model("resnet18", 1, 2, 28), path)
    with pytest.raises(RuntimeError):
        load_model(path, "resnet18", in_channels=1, n_classes=3, image_size=28)
