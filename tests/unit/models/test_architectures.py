"""Every registered architecture at 28 and 64 px (one training step, one Grad-CAM map),
ImageNet weights from a local file, and ensembles (averaged probabilities, averaged CAMs).

The ImageNet files are real torchvision state_dicts of the right structure, written by the
test under the exact name torchvision's cache uses (no network here)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from skimage.transform import resize
from torch import nn
from torchvision import models as tv_models

from saliency_robustness.analysis.map_similarity import constant_maps as is_constant
from saliency_robustness.attribution.cam_layer import default_cam_layer
from saliency_robustness.attribution.maps import compute_maps, model_method_params
from saliency_robustness.attribution.registry import method_params
from saliency_robustness.config_checks import architecture_errors
from saliency_robustness.evaluation import predict_proba
from saliency_robustness.models.architectures import token_grid
from saliency_robustness.models.build import build_model, get_layer
from saliency_robustness.models.ensemble import Ensemble
from saliency_robustness.models.loading import load_model, load_model_or_ensemble
from saliency_robustness.models.registry import ARCHITECTURES
from saliency_robustness.models.tensors import images_to_tensor
from saliency_robustness.models.weight_files import (
    imagenet_weights_path,
    imagenet_weights_url,
    missing_weights_message,
)
from saliency_robustness.models.weights import save_weights
from saliency_robustness.training import TrainSettings, train_classifier

N_IMAGES = 4  # one small batch keeps 16 architectures x 2 sizes near a minute


def _images(breast: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Four real BreastMNIST test images (both classes), resized to ``size`` px."""
    labels = breast["test_labels"].reshape(-1)
    index = np.concatenate([np.flatnonzero(labels == 0)[:2], np.flatnonzero(labels == 1)[:2]])
    images = breast["test_images"][index]
    if size != images.shape[1]:
        images = (
            np.stack(
                [
                    resize(image, (size, size), preserve_range=True, anti_aliasing=False)
                    for image in images
                ]
            )
            .round()
            .astype(np.uint8)
        )
    return images, labels[index]


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_one_training_step_and_a_gradcam_map(arch, size, breast):
    images, labels = _images(breast, size)
    torch.manual_seed(0)
    model = build_model(arch, in_channels=1, n_classes=2, image_size=size)
    # the default CAM layer is the registry's and keeps at least 4x4 positions
    layer = default_cam_layer(model, None, size, 1)
    assert layer == ARCHITECTURES[arch].cam_layer
    grid = {}
    handle = get_layer(model, layer).register_forward_hook(
        lambda _m, _i, o: grid.update(shape=tuple(o.shape))  # returns None: output kept
    )
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # running statistics as a plain average, so that one step sets them to the
            # batch's (momentum 0.1 would leave them 90 % at their initial 0 and 1, and
            # eval-mode activations saturated, e.g. MobileNet's ReLU6 at 6 everywhere)
            module.momentum = None
    # plain SGD: no optimiser state, so VGG's 120M-parameter classifier stays cheap
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-2)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = nn.functional.cross_entropy(model(images_to_tensor(images)), torch.as_tensor(labels))
    loss.backward()
    optimiser.step()
    handle.remove()
    assert torch.isfinite(loss)
    # (torchvision's ViTs start from a zero head, so their first step changes the head only)
    assert any(not torch.equal(before[k], v) for k, v in model.named_parameters())
    rows, cols = token_grid(model) or grid["shape"][-2:]
    assert min(rows, cols) >= 4
    model.eval()
    # Grad-CAM is ReLU'd: a class whose evidence is negative at every position gets an
    # all-zero map from a barely trained model, so an image whose map for the predicted
    # class is constant is explained for the other class, and one of the two must carry
    # spatial information.
    params = method_params("gradcam", {})
    targets = predict_proba(model, images).argmax(axis=1)
    maps = compute_maps(model, images, targets, "gradcam", params, N_IMAGES)
    assert maps.shape == (N_IMAGES, size, size)
    flat = is_constant(maps)
    if flat.any():
        other = compute_maps(model, images[flat], 1 - targets[flat], "gradcam", params, 4)
        maps[flat] = other
    assert np.isfinite(maps).all()
    assert not is_constant(maps).any(), f"{arch} at {size} px: constant Grad-CAM maps"


def test_three_channel_models_accept_rgb_images():
    torch.manual_seed(0)
    for arch in ("densenet121", "vit_tiny", "inception_v3"):
        model = build_model(arch, 3, 5, 28).eval()
        with torch.no_grad():
            assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 5)


# --- ImageNet weights ---------------------------------------------------------------------------


def _write_imagenet_file(name: str, torch_home, **kwargs) -> dict[str, torch.Tensor]:
    """A real torchvision ``name`` model's state_dict saved where torchvision's cache keeps the
    ImageNet file (1000 classes, stock stem, auxiliary heads where torchvision has them)."""
    torch.manual_seed(1)
    state = getattr(tv_models, name)(weights=None, **kwargs).state_dict()
    path = torch_home / "hub" / "checkpoints" / imagenet_weights_url(name).rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


@pytest.mark.parametrize(
    ("arch", "size", "kwargs"),
    [
        ("resnet18", 28, {}),
        ("resnet18", 128, {}),
        ("densenet121", 28, {}),
        ("mobilenet_v2", 64, {}),
        ("squeezenet1_1", 28, {}),
        ("googlenet", 28, {"aux_logits": True, "init_weights": True}),
    ],
)
def test_imagenet_weights_load_from_torchvision_cache(arch, size, kwargs, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = _write_imagenet_file(arch, tmp_path, **kwargs)
    if arch == "densenet121":  # torchvision's published DenseNet files predate BatchNorm's
        # num_batches_tracked and use old key names ('norm.1' for 'norm1')
        old = {
            re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key): value
            for key, value in state.items()
            if not key.endswith("num_batches_tracked")
        }
        assert "features.denseblock1.denselayer1.norm.1.weight" in old
        torch.save(old, imagenet_weights_path(arch))
    assert imagenet_weights_path(arch).parent == tmp_path / "hub" / "checkpoints"
    torch.manual_seed(0)
    model = build_model(arch, 1, 2, size, weights="imagenet")
    head = ARCHITECTURES[arch].head
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
    loaded = model.state_dict()
    n_checked = 0
    for key, value in loaded.items():
        if any(key.startswith(prefix + ".") for prefix in head):
            assert value.shape[0] == 2, key  # a new head for two classes
        elif key == first_conv:
            torch.testing.assert_close(value, state[key].sum(dim=1, keepdim=True))
        elif key.endswith("num_batches_tracked") and arch == "densenet121":
            assert value == 0  # not in the old file: BatchNorm's fresh counter
        else:
            assert torch.equal(value, state[key]), key
            n_checked += 1
    assert n_checked > 10
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 1, size, size)).shape == (2, 2)


def test_imagenet_weights_keep_rgb_kernels_and_train(tmp_path, monkeypatch, breast):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = _write_imagenet_file("resnet18", tmp_path)
    model = build_model("resnet18", 3, 4, 28, weights="imagenet")
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (1, 1)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    # the training settings carry the option through to build_model
    train = (breast["train_images"][:16], breast["train_labels"][:16])
    val = (breast["val_images"][:8], breast["val_labels"][:8])
    settings = TrainSettings(epochs=1, batch_size=8, seed=0, weights="imagenet")
    result = train_classifier("resnet18", train, val, 2, settings, torch.device("cpu"))
    assert result.model.conv1.kernel_size == (7, 7)
    path = tmp_path / "model.pt"
    save_weights(result.model, path)
    reloaded = load_model(path, "resnet18", 1, 2, 28, weights="imagenet")
    x = images_to_tensor(breast["test_images"][:4])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), result.model(x), rtol=0, atol=0)


def test_imagenet_weights_from_a_configured_file(tmp_path):
    torch.manual_seed(2)
    state = tv_models.efficientnet_b0(weights=None).state_dict()
    path = tmp_path / "my_weights.pth"
    torch.save(state, path)
    model = build_model("efficientnet_b0", 3, 2, 28, weights="imagenet", weights_file=path)
    assert torch.equal(
        model.features[1][0].block[0][0].weight, state["features.1.0.block.0.0.weight"]
    )


def test_missing_imagenet_file_names_the_path_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    expected = tmp_path / "empty" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(FileNotFoundError) as excinfo:
        build_model("resnet18", 1, 2, 28, weights="imagenet")
    message = str(excinfo.value)
    assert str(expected) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "no fallback to random weights" in message
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model("resnet18", 1, 2, 28, weights="imagenet", weights_file=tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="torchvision has no ImageNet weights for 'vit_tiny'"):
        build_model("vit_tiny", 1, 2, 28, weights="imagenet")
    with pytest.raises(ValueError, match="unknown value 'imagenet21k'"):
        build_model("resnet18", 1, 2, 28, weights="imagenet21k")


def test_imagenet_file_of_another_architecture_is_an_error(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(tv_models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="does not fit architecture 'resnet18'"):
        build_model("resnet18", 1, 2, 28, weights="imagenet", weights_file=path)


# --- ensembles ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def members(model) -> list[nn.Module]:
    """The trained ResNet-18 of the unit tests and a seeded MobileNetV2."""
    torch.manual_seed(5)
    return [model, build_model("mobilenet_v2", 1, 2, 28).eval()]


def test_ensemble_probabilities_are_the_members_mean(members, breast):
    images = breast["test_images"][:12]
    ensemble = Ensemble(members, ["resnet18", "mobilenet_v2"])
    expected = np.mean([predict_proba(m, images) for m in members], axis=0)
    np.testing.assert_allclose(predict_proba(ensemble, images), expected, atol=1e-6)
    assert not np.allclose(expected, predict_proba(members[0], images), atol=1e-3)
    sigmoid = Ensemble(members, ["resnet18", "mobilenet_v2"], output="sigmoid")
    x = images_to_tensor(images)
    with torch.no_grad():
        mean = torch.stack([torch.sigmoid(m(x)) for m in members]).mean(0)
        torch.testing.assert_close(torch.sigmoid(sigmoid(x)), mean, atol=1e-6, rtol=1e-5)


def test_model_method_params_picks_the_cam_layer_of_the_model(members):
    """A single model's CAM default is its default_cam_layer; an ensemble's is None (each
    member at its own layer); a configured layer wins; non-CAM methods get no layer."""
    resnet, mobilenet = members
    assert model_method_params("gradcam", {}, resnet, 28)["cam_layer"] == "layer4"
    expected = default_cam_layer(mobilenet, "mobilenet_v2", 28)
    assert model_method_params("gradcam", None, mobilenet, 28)["cam_layer"] == expected
    ensemble = Ensemble(members, ["resnet18", "mobilenet_v2"])
    assert model_method_params("gradcam", {}, ensemble, 28)["cam_layer"] is None
    configured = model_method_params("gradcam", {"cam_layer": "layer2"}, resnet, 28)
    assert configured["cam_layer"] == "layer2"
    assert "cam_layer" not in model_method_params("saliency", {}, resnet, 28)


def test_ensemble_gradcam_is_the_mean_of_member_gradcams(members, breast):
    images = breast["test_images"][:6]
    ensemble = Ensemble(members, ["resnet18", "mobilenet_v2"])
    targets = predict_proba(ensemble, images).argmax(axis=1)
    params = method_params("gradcam", {})
    maps = compute_maps(ensemble, images, targets, "gradcam", params, 3)
    expected = np.mean([compute_maps(m, images, targets, "gradcam", params, 3) for m in members], 0)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert not is_constant(maps).any()
    with pytest.raises(ValueError, match="no single CAM layer"):
        default_cam_layer(ensemble, None, 28, 1)
    with pytest.raises(ValueError, match="cannot be set for an ensemble"):
        compute_maps(ensemble, images, targets, "gradcam", {"cam_layer": "layer4"}, 3)


def test_ensemble_gradients_flow_through_every_member(members, breast):
    images = breast["test_images"][:3]
    ensemble = Ensemble(members, ["resnet18", "mobilenet_v2"])
    targets = np.array([0, 1, 1])
    maps = compute_maps(ensemble, images, targets, "saliency", {}, 3)
    x = images_to_tensor(images).requires_grad_(True)
    probs = torch.stack([torch.softmax(m(x), dim=1) for m in members]).mean(0)
    torch.log(probs[torch.arange(3), torch.as_tensor(targets)]).sum().backward()
    np.testing.assert_allclose(maps, x.grad.abs().sum(dim=1).numpy(), rtol=1e-4, atol=1e-7)


def test_ensemble_loads_from_member_files(members, breast, tmp_path):
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for member, path in zip(members, paths, strict=True):
        save_weights(member, path)
    ensembles = {"res_mobile": ["resnet18", "mobilenet_v2"]}
    loaded = load_model_or_ensemble(paths, "res_mobile", ensembles, 1, 2, 28)
    assert isinstance(loaded, Ensemble) and loaded.member_names == ensembles["res_mobile"]
    images = breast["test_images"][:8]
    expected = predict_proba(Ensemble(members, ["resnet18", "mobilenet_v2"]), images)
    np.testing.assert_allclose(predict_proba(loaded, images), expected, atol=1e-6)
    single = load_model_or_ensemble(str(paths[0]), "resnet18", ensembles, 1, 2, 28)
    assert not isinstance(single, Ensemble)
    with pytest.raises(ValueError, match="2 ensemble members but 1 weight files"):
        load_model_or_ensemble(paths[:1], "res_mobile", ensembles, 1, 2, 28)


def test_config_check_of_architectures_ensembles_and_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ok = {"architectures": ["resnet18", "ens"], "ensembles": {"ens": ["resnet18", "vit_tiny"]}}
    assert architecture_errors(ok) == []
    bad = {
        "architectures": ["resnet19", "ens", "resnet18"],
        "ensembles": {"ens": ["resnet18", "other"], "resnet18": ["alexnet", "vgg11_bn"]},
        "weights_files": {"resnet99": "x.pth"},
    }
    errors = "\n".join(architecture_errors(bad))
    assert "train.architectures: unknown name 'resnet19'" in errors
    assert "train.ensembles.ens: unknown member 'other'" in errors
    assert "train.ensembles: 'resnet18' is an architecture" in errors
    assert "train.weights_files: unknown architecture 'resnet99'" in errors
    # imagenet weights: every trained model's file must exist before any job runs
    weights = {**ok, "weights": "imagenet"}
    errors = "\n".join(architecture_errors(weights))
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in errors
    assert "torchvision has no ImageNet weights for 'vit_tiny'" in errors
    _write_imagenet_file("resnet18", tmp_path)
    given = {**weights, "weights_files": {"vit_tiny": str(tmp_path / "vit.pth")}}
    assert architecture_errors(given) == [
        "train.weights_files.vit_tiny: " + missing_weights_message("vit_tiny", tmp_path / "vit.pth")
    ]
