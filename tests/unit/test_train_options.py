"""Training options of the source studies: named variants, frozen backbones, custom heads,
hyper-parameter grids, training augmentation and masked training.

Real models are trained on CPU on real BreastMNIST images or the project's synthetic lesion
set (whose masks are exact); "ImageNet" weights are torchvision's random-initialised models
saved to a file (no network), which is all that loading and freezing need.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from snakemake.utils import validate
from torch import nn
from torchvision import models as tv_models
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

import saliency_robustness.training as training
from saliency_robustness.attribution.cam_layer import default_cam_layer
from saliency_robustness.attribution.maps import compute_maps, model_method_params
from saliency_robustness.attribution.registry import METHODS, method_params
from saliency_robustness.config_checks import config_errors
from saliency_robustness.config_schema import load_schema, schema_errors
from saliency_robustness.datasets.folds import make_folds, pooled_train_val
from saliency_robustness.datasets.info import DataError
from saliency_robustness.datasets.synthetic import make_synthetic
from saliency_robustness.evaluation import predict_proba
from saliency_robustness.models.build import build_model
from saliency_robustness.models.combined import Combined
from saliency_robustness.models.heads import HeadSpec
from saliency_robustness.models.loading import load_model, load_trained_model
from saliency_robustness.models.registry import ARCHITECTURES
from saliency_robustness.models.specs import (
    OPTION_DEFAULTS,
    grid_points,
    model_settings,
    spec_errors,
    train_params,
)
from saliency_robustness.models.tensors import images_to_tensor
from saliency_robustness.models.weights import save_weights
from saliency_robustness.training import (
    BLACK,
    Augment,
    TrainSettings,
    augment_batch,
    checkpoint_path,
    grid_checkpoint_path,
    masked_fold_split,
    seed_everything,
    train_classifier,
    train_fold,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
CPU = torch.device("cpu")
LOGGER = "saliency_robustness.training"
# train keys that existed before the options; a plain architecture's params hold these only
LEGACY_SKIPPED = ("architectures", "ensembles", "weights_files", "checkpoint_every")


def study_config(train: dict | None = None, data: dict | None = None) -> dict:
    """config/config.yaml with ``train``/``data`` keys replaced, completed by the schema."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["train"] = {**config["train"], **(train or {})}
    config["data"] = {**config["data"], **(data or {})}
    config = copy.deepcopy(config)
    assert schema_errors(config, load_schema(SCHEMA_PATH)) == []
    validate(config, str(SCHEMA_PATH))
    return config


def imagenet_file(tmp_path: Path, name: str = "resnet18") -> Path:
    """A real torchvision ``name`` state_dict (random weights) as the ImageNet file."""
    torch.manual_seed(123)
    path = tmp_path / f"{name}-imagenet.pth"
    torch.save(getattr(tv_models, name)(weights=None).state_dict(), path)
    return path


def small(breast: dict, n_train: int = 48, n_val: int = 16):
    return (
        (breast["train_images"][:n_train], breast["train_labels"][:n_train]),
        (breast["val_images"][:n_val], breast["val_labels"][:n_val]),
    )


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key, value in sa.items():
        assert torch.equal(value, sb[key]), key


@pytest.fixture(scope="module")
def lesions() -> dict[str, np.ndarray]:
    """Synthetic binary task (lesion or none) with exact lesion masks."""
    return make_synthetic({"train": 96, "val": 32, "test": 16}, task="binary-class", seed=3)


@pytest.fixture(scope="module")
def lesion_folds(lesions) -> pd.DataFrame:
    _, labels, sources = pooled_train_val(lesions)
    return make_folds(labels, sources, k=3, seed=0)


# --- 1. named variants ----------------------------------------------------------------------


def test_a_plain_architecture_keeps_the_params_it_had_before_the_options():
    """Finished train jobs keep their params: the options at their defaults are not in them,
    in the same key order as before (Snakemake compares the params' repr)."""
    train = study_config()["train"]
    new = {*OPTION_DEFAULTS, "variants", "combined"}
    legacy = {k: v for k, v in train.items() if k not in LEGACY_SKIPPED and k not in new}
    legacy["weights_files"] = {}  # the code before the options: own file or {}, last
    assert repr(train_params("resnet18", train)) == repr(legacy)
    # adding a variant (or an architecture) leaves resnet18's params alone
    with_variant = study_config(
        {
            "architectures": ["resnet18", "resnet18_headed", "mobilenet_v2"],
            "variants": {"resnet18_headed": {"arch": "resnet18", "head": {"hidden": 8}}},
        }
    )["train"]
    assert repr(train_params("resnet18", with_variant)) == repr(legacy)


def test_a_variant_is_its_base_with_the_overrides(tmp_path):
    weights = str(imagenet_file(tmp_path))
    train = study_config(
        {
            "architectures": ["resnet18", "resnet18_frozen"],
            "lr": 0.01,
            "weights_files": {"resnet18": weights},
            "variants": {
                "resnet18_frozen": {
                    "arch": "resnet18",
                    "weights": "imagenet",
                    "freeze_backbone": True,
                    "head": {"hidden": 32},
                    "augment": {"flip": True},
                    "epochs": 3,
                }
            },
        }
    )["train"]
    spec = model_settings("resnet18_frozen", train)
    assert spec["arch"] == "resnet18" and spec["backbones"] is None
    assert (spec["epochs"], spec["lr"], spec["weights"]) == (3, 0.01, "imagenet")
    assert spec["freeze_backbone"] is True
    assert spec["head"] == {"hidden": 32, "dropout": 0.5}  # the head's default dropout
    assert spec["augment"] == {"rotation": 0, "flip": True}
    assert spec["weights_files"] == {"resnet18": weights}  # the base's file
    params = train_params("resnet18_frozen", train)
    assert params["arch"] == "resnet18" and "variants" not in params
    assert "grid" not in params and "mask_background" not in params  # defaults left out
    # the params resolve to the same settings (what the train job and loaders see)
    assert model_settings("resnet18_frozen", params) == spec
    settings = TrainSettings.from_config(params, "resnet18_frozen", seed=4)
    assert settings == TrainSettings.from_config(train, "resnet18_frozen", seed=4)
    assert settings.head == HeadSpec(32, 0.5) and settings.freeze_backbone
    assert settings.augment == Augment(0.0, True) and settings.weights_file == weights
    # the plain architecture is untouched by the variant
    plain = TrainSettings.from_config(train, "resnet18", seed=4)
    assert (plain.weights, plain.head, plain.freeze_backbone, plain.epochs) == (
        None,
        None,
        False,
        train["epochs"],
    )


def test_variant_mistakes_are_config_errors():
    train = study_config(
        {
            "ensembles": {"pair": ["resnet18", "good"]},  # a variant may be a member
            "variants": {
                "good": {"arch": "resnet18", "lr": 0.01},
                "nobase": {"arch": "resnet19"},
                "resnet34": {"arch": "resnet18"},
                "pair": {"arch": "resnet18"},
                "Bad-Name": {"arch": "resnet18"},
                "of_variant": {"arch": "good"},
            },
            "architectures": ["resnet18", "good", "pair"],
        }
    )["train"]
    errors = spec_errors(train, ARCHITECTURES)
    text = "\n".join(errors)
    assert "train.variants.nobase.arch: unknown base 'resnet19'" in text
    assert "Valid: alexnet, densenet121" in text  # the valid bases are listed
    assert "train.variants: 'resnet34' is an architecture" in text
    assert "train.variants: 'pair' is an ensemble" in text
    assert "train.variants: name 'Bad-Name' must use only a-z, 0-9 and _." in text
    assert "train.variants.of_variant.arch: unknown base 'good'" in text
    assert not [e for e in errors if e.startswith("train.variants.good")]
    # an override of a key a variant cannot set: the schema's message, and the library's
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["train"]["variants"] = {"v": {"arch": "resnet18", "lr": 0.1, "seed": 3}}
    (message,) = schema_errors(config, load_schema(SCHEMA_PATH))
    assert message.startswith("train.variants.v.seed: unknown key.")
    assert "lr" in message and "freeze_backbone" in message
    raw = {"architectures": ["v"], "variants": config["train"]["variants"]}
    assert any(
        "train.variants.v: 'seed' cannot be overridden" in e
        for e in spec_errors(raw, ARCHITECTURES)
    )
    # a valid variant in a full config: no errors, also as an ensemble member
    good = study_config(
        {
            "architectures": ["resnet18", "good", "pair"],
            "variants": {"good": {"arch": "resnet18", "lr": 0.01}},
            "ensembles": {"pair": ["resnet18", "good"]},
        }
    )
    assert config_errors(good) == []
    listed = study_config({"architectures": ["resnet18", "nothing"]})
    assert any("train.architectures: unknown name 'nothing'" in e for e in config_errors(listed))


# --- 2. frozen backbone ---------------------------------------------------------------------


def test_frozen_backbone_leaves_every_backbone_entry_bit_identical(tmp_path, breast):
    weights = imagenet_file(tmp_path)
    settings = TrainSettings(
        epochs=2, batch_size=16, lr=1e-2, seed=0, weights="imagenet",
        weights_file=str(weights), freeze_backbone=True,
    )  # fmt: skip
    result = train_classifier("resnet18", *small(breast), 2, settings, CPU)
    seed_everything(0)
    initial = build_model("resnet18", 1, 2, 28, weights="imagenet", weights_file=weights)
    trained, start = result.model.state_dict(), initial.state_dict()
    head = [k for k in trained if k.startswith("fc.")]
    backbone = [k for k in trained if not k.startswith("fc.")]
    assert head == ["fc.weight", "fc.bias"] and len(backbone) > 100
    # parameters and buffers (BatchNorm running statistics, their counters) alike
    assert any("running_mean" in k for k in backbone)
    for key in backbone:
        assert torch.equal(trained[key], start[key]), key
    assert not torch.equal(trained["fc.weight"], start["fc.weight"])  # the head learned
    for key, parameter in result.model.named_parameters():
        assert parameter.requires_grad == key.startswith("fc."), key
    # without freezing, the same run changes the backbone (the test can fail)
    unfrozen = dataclasses.replace(settings, freeze_backbone=False)
    free = train_classifier("resnet18", *small(breast), 2, unfrozen, CPU).model.state_dict()
    for key in ("conv1.weight", "layer1.0.bn1.running_mean"):
        assert not torch.equal(free[key], start[key]), key


def test_frozen_backbone_only_gives_the_head_to_the_optimiser(tmp_path, breast, monkeypatch):
    weights = imagenet_file(tmp_path, "mobilenet_v2")
    seen = []
    real_adam = torch.optim.Adam

    def recording_adam(params, **kwargs):
        params = list(params)
        seen.append(params)
        return real_adam(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", recording_adam)
    settings = TrainSettings(
        epochs=1, batch_size=16, seed=0, weights="imagenet", weights_file=str(weights),
        freeze_backbone=True, head=HeadSpec(8),
    )  # fmt: skip
    result = train_classifier("mobilenet_v2", *small(breast, 32, 16), 2, settings, CPU)
    head = dict(result.model.named_parameters())
    expected = [head[k] for k in head if k.startswith("classifier.1.")]
    assert [p.shape for p in seen[0]] == [p.shape for p in expected]  # the 4 head tensors
    assert len(seen[0]) == 4


def test_freezing_a_random_backbone_is_a_config_error():
    config = study_config({"freeze_backbone": True})
    (error,) = [e for e in config_errors(config) if "freeze_backbone" in e]
    assert error.startswith("train.freeze_backbone: a frozen backbone with weights null")
    assert "Set weights: imagenet" in error
    variant = study_config(
        {
            "architectures": ["frozen"],
            "weights": "imagenet",
            "freeze_backbone": False,
            "variants": {"frozen": {"arch": "resnet18", "weights": None, "freeze_backbone": True}},
        }
    )
    errors = spec_errors(variant["train"], ARCHITECTURES)
    assert [e.split(":")[0] for e in errors] == ["train.variants.frozen.freeze_backbone"]


# --- 3. custom classifier head --------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, prefix, layer",
    [("resnet18", "fc", nn.Linear), ("squeezenet1_1", "classifier.1", nn.Conv2d),
     ("vgg11_bn", "classifier.6", nn.Linear), ("efficientnet_b0", "classifier.1", nn.Linear)],
)  # fmt: skip
def test_custom_head_replaces_the_final_layer(arch, prefix, layer, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, 1, 3, 28, head=HeadSpec(hidden=24, dropout=0.25))
    head = model.get_submodule(prefix)
    assert isinstance(head, nn.Sequential)
    assert [type(m) for m in head] == [layer, nn.ReLU, nn.Dropout, layer]
    assert head[2].p == 0.25
    widths = (
        (head[0].out_features, head[3].in_features, head[3].out_features)
        if layer is nn.Linear
        else (head[0].out_channels, head[3].in_channels, head[3].out_channels)
    )
    assert widths == (24, 24, 3)
    assert model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
    # ImageNet weights load into everything but the new head
    weights = imagenet_file(tmp_path, arch)
    pretrained = build_model(
        arch, 1, 3, 28, weights="imagenet", weights_file=weights, head=HeadSpec(24)
    )
    assert isinstance(pretrained.get_submodule(prefix), nn.Sequential)


def test_a_trained_head_model_loads_and_is_attributable(tmp_path, breast):
    train = study_config(
        {
            "architectures": ["resnet18_head"],
            "variants": {"resnet18_head": {"arch": "resnet18", "head": {"hidden": 16}}},
        }
    )["train"]
    settings = TrainSettings.from_config(train, "resnet18_head", seed=0)
    settings = dataclasses.replace(settings, epochs=1, batch_size=16)
    result = train_classifier("resnet18", *small(breast, 32, 16), 2, settings, CPU)
    path = tmp_path / "model.pt"
    save_weights(result.model, path)
    info = type("Info", (), {"n_channels": 1, "n_classes": 2, "task": "binary-class"})()
    loaded = load_trained_model(path, "resnet18_head", info, 28, CPU, {}, train=train)
    assert isinstance(loaded.fc, nn.Sequential) and loaded.registry_name == "resnet18"
    assert_same_weights(loaded, result.model)
    images = breast["test_images"][:4]
    assert np.array_equal(predict_proba(loaded, images), predict_proba(result.model, images))
    # without the resolved settings the file does not fit the plain architecture
    with pytest.raises(RuntimeError, match="fc.0.weight"):
        load_trained_model(path, "resnet18", info, 28, CPU, {})
    # the base architecture's CAM layer; a gradient method and Grad-CAM give spatial maps
    assert default_cam_layer(loaded, image_size=28) == "layer4"
    targets = predict_proba(loaded, images).argmax(axis=1)
    for method in ("saliency", "gradcam"):
        maps = compute_maps(loaded, images, targets, method, method_params(method, {}), 4)
        assert maps.shape == (4, 28, 28) and np.isfinite(maps).all()
        assert (maps.reshape(4, -1).std(axis=1) > 0).all(), method


def test_the_loaded_head_width_is_the_trained_one(tmp_path):
    """A grid over head.hidden: the file decides the width (the config holds another)."""
    torch.manual_seed(0)
    model = build_model("squeezenet1_1", 1, 2, 28, head=HeadSpec(12))
    save_weights(model, tmp_path / "m.pt")
    spec = {"arch": "squeezenet1_1", "weights": None, "head": {"hidden": 99, "dropout": 0.5}}
    loaded = load_model(tmp_path / "m.pt", "squeezenet_grid", 1, 2, 28, spec=spec)
    assert loaded.classifier[1][0].out_channels == 12
    assert_same_weights(loaded, model)


# --- 4. hyper-parameter grid ----------------------------------------------------------------


def test_grid_points_and_config_checks():
    assert grid_points({}) == [{}]
    assert grid_points({"lr": [1, 2], "head.hidden": [3, 4]}) == [
        {"lr": 1, "head.hidden": 3},
        {"lr": 1, "head.hidden": 4},
        {"lr": 2, "head.hidden": 3},
        {"lr": 2, "head.hidden": 4},
    ]
    bad = study_config(
        {
            "grid": {
                "lr": [0.1, -1],
                "momentum": [0.9],
                "head.hidden": [8],
                "epochs": [2, 2],
                "augment.flip": [1],
            }
        }
    )
    text = "\n".join(config_errors(bad))
    assert "train.grid.lr: -1 is not valid; each value must be a number > 0." in text
    assert "train.grid: unknown key 'momentum'. Grid keys: lr, batch_size" in text
    assert "train.grid.head.hidden: varies the classifier head, but there is none" in text
    assert "train.grid.epochs: values repeat ([2, 2])" in text
    assert "train.grid.augment.flip: 1 is not valid; each value must be true or false." in text
    empty = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    empty["train"]["grid"] = {"lr": []}
    assert any(
        e.startswith("train.grid.lr:") for e in schema_errors(empty, load_schema(SCHEMA_PATH))
    )
    good = study_config(
        {
            "head": {"hidden": 8},
            "grid": {"lr": [0.1, 0.01], "head.hidden": [4, 8], "milestones": [[], [1]]},
        }
    )
    assert config_errors(good) == []


def test_grid_keeps_the_point_that_learns(lesions, lesion_folds, tmp_path):
    """lr 1e-9 cannot learn, 1e-3 can; the grid also sets the head's width (16, not the
    configured 8), which the loaded model must have."""
    train = study_config(
        {
            "epochs": 2,
            "batch_size": 16,
            "head": {"hidden": 8},
            "grid": {"lr": [1e-9, 1e-3], "head.hidden": [16]},
        }
    )["train"]
    checkpoint = checkpoint_path(tmp_path / "model.pt")
    result, _ = train_fold(
        "resnet18", train_params("resnet18", train), lesions, lesion_folds, 0, 2, 0, CPU,
        checkpoint=checkpoint,
    )  # fmt: skip
    assert [row["settings"] for row in result.grid] == [
        {"lr": 1e-9, "head.hidden": 16},
        {"lr": 1e-3, "head.hidden": 16},
    ]
    stuck, learning = result.grid
    assert learning["val_auc"] > stuck["val_auc"] + 0.1, result.grid
    assert result.chosen == 1 and result.best_val["auc"] == learning["val_auc"]
    assert result.best_epoch == learning["best_epoch"]
    history = result.history
    assert list(history.columns[-2:]) == ["grid_point", "grid_chosen"]
    assert history.groupby("grid_point").size().tolist() == [2, 2]
    assert history.loc[history["grid_chosen"], "grid_point"].unique().tolist() == [1]
    assert not list(tmp_path.iterdir())  # every grid checkpoint deleted
    save_weights(result.model, tmp_path / "model.pt")
    info = type("Info", (), {"n_channels": 1, "n_classes": 2, "task": "binary-class"})()
    loaded = load_trained_model(tmp_path / "model.pt", "resnet18", info, 28, CPU, {}, train=train)
    assert loaded.fc[0].out_features == 16
    assert_same_weights(loaded, result.model)


def test_grid_ties_keep_the_first_point_and_no_grid_keeps_the_history_columns(breast):
    # gamma without milestones changes nothing: two identical runs, a tie
    settings = TrainSettings(epochs=1, batch_size=16, seed=0, grid=(("gamma", (0.1, 0.5)),))
    result = train_classifier("resnet18", *small(breast, 32, 16), 2, settings, CPU)
    assert result.grid[0]["val_auc"] == result.grid[1]["val_auc"]
    assert result.chosen == 0
    plain = train_classifier(
        "resnet18", *small(breast, 32, 16), 2, TrainSettings(epochs=1, batch_size=16, seed=0), CPU
    )
    assert plain.grid is None and plain.chosen is None
    assert list(plain.history.columns) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_acc",
        "val_auc",
        "lr",
        "seconds",
    ]
    assert_same_weights(plain.model, result.model)  # point 0 is exactly the plain run


class _Interrupted(Exception):
    pass


def test_a_resumed_grid_does_not_retrain_finished_points(breast, tmp_path, monkeypatch, caplog):
    settings = TrainSettings(epochs=2, batch_size=16, seed=0, grid=(("lr", (1e-3, 1e-2)),))
    data = small(breast, 32, 16)
    whole = train_classifier("resnet18", *data, 2, settings, CPU)
    checkpoint = tmp_path / "model.checkpoint.pt"
    real_save = training._save_checkpoint

    def save_then_stop(path, state):
        real_save(path, state)
        if path == grid_checkpoint_path(checkpoint, 1) and state["epoch"] == 1:
            raise _Interrupted  # killed during point 1, after its epoch-1 checkpoint

    monkeypatch.setattr(training, "_save_checkpoint", save_then_stop)
    with pytest.raises(_Interrupted):
        train_classifier("resnet18", *data, 2, settings, CPU, checkpoint=checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.checkpoint.grid0.pt", "model.checkpoint.grid1.pt",
    ]  # fmt: skip
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    caplog.set_level(logging.INFO, logger=LOGGER)
    resumed = train_classifier("resnet18", *data, 2, settings, CPU, checkpoint=checkpoint)
    epochs = [m for m in caplog.messages if re.match(r"epoch \d/2 ", m)]
    assert len(epochs) == 1  # only point 1's second epoch was trained again
    assert any("epoch 2 of 2 done" in m for m in caplog.messages)  # point 0: finished
    assert any("epoch 1 of 2 done" in m for m in caplog.messages)  # point 1: resumed
    assert_same_weights(resumed.model, whole.model)
    assert resumed.grid == whole.grid and resumed.chosen == whole.chosen
    columns = ["epoch", "train_loss", "val_loss", "val_acc", "val_auc", "lr", "grid_point"]
    pd.testing.assert_frame_equal(resumed.history[columns], whole.history[columns])
    assert not list(tmp_path.iterdir())


# --- 5. training augmentation ---------------------------------------------------------------


def test_augment_batch_is_seeded_and_does_what_it_says():
    images = torch.linspace(-1, 1, 8 * 28 * 28).reshape(8, 1, 28, 28)
    flip = Augment(flip=True)
    one = augment_batch(images, flip, torch.Generator().manual_seed(5))
    two = augment_batch(images, flip, torch.Generator().manual_seed(5))
    assert torch.equal(one, two)
    mirrored = torch.flip(images, dims=[-1])  # left-right: about the vertical axis
    flipped = [bool(torch.equal(o, m)) for o, m in zip(one, mirrored, strict=True)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(one, images, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 8
    other = augment_batch(images, flip, torch.Generator().manual_seed(6))
    assert not torch.equal(one, other)
    # rotation: corners filled with black (-1), angles within +-rotation
    bright = torch.ones(4, 1, 28, 28)
    rotated = augment_batch(bright, Augment(rotation=45), torch.Generator().manual_seed(0))
    angles = (torch.rand(4, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 45
    assert (angles.abs() <= 45).all() and angles.abs().max() > 30 and angles.abs().min() < 1
    for image, angle in zip(rotated, angles.tolist(), strict=True):
        expected = TF.rotate(
            bright[0], angle, interpolation=InterpolationMode.BILINEAR, fill=[BLACK]
        )
        assert torch.equal(image, expected)
        assert image[0, 14, 14].item() == pytest.approx(1.0)  # the centre stays
        if abs(angle) > 10:  # a black corner turned in
            assert image[0, 0, 0].item() == pytest.approx(BLACK)
    assert torch.equal(augment_batch(images, Augment(), torch.Generator()), images)


def test_augmentation_reaches_training_batches_only_and_off_changes_nothing(breast, monkeypatch):
    data = small(breast, 32, 16)
    train_images = images_to_tensor(data[0][0])
    calls = []
    real = training.augment_batch

    def recording(inputs, augment, generator):
        calls.append(inputs.clone())
        return real(inputs, augment, generator)

    monkeypatch.setattr(training, "augment_batch", recording)
    augmented = TrainSettings(
        epochs=2, batch_size=16, seed=0, augment=Augment(rotation=15, flip=True)
    )
    first = train_classifier("resnet18", *data, 2, augmented, CPU)
    assert len(calls) == 2 * 2  # two training batches per epoch, nothing for validation
    for batch in calls:  # each call holds training images (never validation ones)
        assert all(any(torch.equal(x, t) for t in train_images) for x in batch)
    calls.clear()
    second = train_classifier("resnet18", *data, 2, augmented, CPU)
    assert_same_weights(first.model, second.model)  # seeded
    calls.clear()
    plain = train_classifier(
        "resnet18", *data, 2, TrainSettings(epochs=2, batch_size=16, seed=0), CPU
    )
    assert calls == []  # off: never called, no random draws
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            plain.model.state_dict().values(), first.model.state_dict().values(), strict=True
        )
    )


def test_an_augmented_run_resumes_bit_for_bit(breast, tmp_path, monkeypatch):
    settings = TrainSettings(
        epochs=3, batch_size=16, seed=1, augment=Augment(rotation=20, flip=True)
    )
    data = small(breast, 32, 16)
    whole = train_classifier("resnet18", *data, 2, settings, CPU)
    checkpoint = tmp_path / "model.checkpoint.pt"
    real_save = training._save_checkpoint

    def save_then_stop(path, state):
        real_save(path, state)
        if state["epoch"] == 2:
            raise _Interrupted

    monkeypatch.setattr(training, "_save_checkpoint", save_then_stop)
    with pytest.raises(_Interrupted):
        train_classifier("resnet18", *data, 2, settings, CPU, checkpoint=checkpoint)
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    resumed = train_classifier("resnet18", *data, 2, settings, CPU, checkpoint=checkpoint)
    assert_same_weights(resumed.model, whole.model)
    columns = ["epoch", "train_loss", "val_loss", "val_acc", "val_auc", "lr"]
    pd.testing.assert_frame_equal(resumed.history[columns], whole.history[columns])


# --- 6. masked training ---------------------------------------------------------------------


def test_masked_training_sees_only_the_masked_pixels(lesions, lesion_folds, monkeypatch):
    seen = {}
    real = training.train_classifier

    def capture(arch, train, val, *args, **kwargs):
        seen.update(train=train, val=val)
        return real(arch, train, val, *args, **kwargs)

    monkeypatch.setattr(training, "train_classifier", capture)
    masked_train = train_params(
        "resnet18", study_config({"epochs": 1, "batch_size": 32, "mask_background": True})["train"]
    )
    masked, splits = train_fold("resnet18", masked_train, lesions, lesion_folds, 1, 2, 0, CPU)
    images, _, _ = pooled_train_val(lesions)
    masks = np.concatenate([lesions["train_masks"], lesions["val_masks"]]) > 0
    is_val = lesion_folds["fold"].to_numpy() == 1
    for name, rows in (("train", ~is_val), ("val", is_val)):
        got, original, inside = seen[name][0], images[rows], masks[rows]
        assert (got[~inside] == 0).all()  # black outside the mask
        assert np.array_equal(got[inside], original[inside])  # unchanged inside
        assert (original[~inside] != 0).mean() > 0.9  # there was a background to remove
    assert np.array_equal(splits["test"][0], lesions["test_images"])  # test images whole
    plain_train = train_params("resnet18", study_config({"epochs": 1, "batch_size": 32})["train"])
    plain, _ = train_fold("resnet18", plain_train, lesions, lesion_folds, 1, 2, 0, CPU)
    assert np.array_equal(seen["train"][0], images[~is_val])  # off: the images as stored
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            plain.model.state_dict().values(), masked.model.state_dict().values(), strict=True
        )
    )


def test_masked_training_needs_masks(lesions, lesion_folds, breast):
    no_masks = {k: v for k, v in lesions.items() if not k.endswith("_masks")}
    with pytest.raises(DataError, match="needs masks"):
        masked_fold_split(no_masks, lesion_folds, 0)
    partial = dict(lesions)
    partial["train_has_mask"] = np.ones(len(lesions["train_images"]), dtype=bool)
    partial["train_has_mask"][:3] = False
    with pytest.raises(DataError, match="3 of 128 training and validation images have no mask"):
        masked_fold_split(partial, lesion_folds, 0)
    config = study_config({"mask_background": True}, {"datasets": ["breastmnist"]})
    (error,) = [e for e in config_errors(config) if "mask_background" in e]
    assert error.startswith("train.mask_background: dataset 'breastmnist' has no masks")
    synthetic = study_config(
        {"mask_background": True},
        {"datasets": ["lesions"], "custom": {"lesions": {"source": "synthetic"}}},
    )
    assert not [e for e in config_errors(synthetic) if "mask_background" in e]


# --- 7. combined model ----------------------------------------------------------------------

JOINT = {"joint": ["resnet18", "squeezenet1_1"]}


def test_a_combined_model_is_one_layer_over_concatenated_features():
    torch.manual_seed(0)
    model = build_model("joint", 1, 3, 28, backbones=JOINT["joint"]).eval()
    assert isinstance(model, Combined) and model.backbone_names == JOINT["joint"]
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (512 + 512, 3)
    assert [b.registry_name for b in model.backbones] == JOINT["joint"]
    x = images_to_tensor(np.random.default_rng(0).integers(0, 256, (2, 28, 28), np.uint8))
    with torch.no_grad():
        features = [backbone(x) for backbone in model.backbones]
        assert [f.shape for f in features] == [(2, 512), (2, 512)]  # pooled, flat
        expected = model.classifier(torch.cat(features, dim=1))
        assert torch.equal(model(x), expected)
    # no backbone keeps a classification layer of its own
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linear == ["classifier"]
    headed = build_model("joint", 1, 3, 28, backbones=JOINT["joint"], head=HeadSpec(32))
    assert [type(m) for m in headed.classifier] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]


def test_a_combined_model_trains_jointly_loads_and_gives_cam_maps(lesions, lesion_folds, tmp_path):
    train = study_config({"architectures": ["joint"], "combined": JOINT, "epochs": 1})["train"]
    assert config_errors(study_config({"architectures": ["joint"], "combined": JOINT})) == []
    params = train_params("joint", train)
    assert params["backbones"] == JOINT["joint"] and "arch" not in params
    seed_everything(0)
    initial = build_model("joint", 1, 2, 28, backbones=JOINT["joint"])
    result, _ = train_fold("joint", params, lesions, lesion_folds, 0, 2, 0, CPU)
    trained, start = result.model.state_dict(), initial.state_dict()
    assert trained.keys() == start.keys()
    for prefix in ("backbones.0.", "backbones.1.", "classifier."):  # every part learned
        assert any(
            not torch.equal(trained[k], start[k]) for k in trained if k.startswith(prefix)
        ), prefix
    save_weights(result.model, tmp_path / "model.pt")
    info = type("Info", (), {"n_channels": 1, "n_classes": 2, "task": "binary-class"})()
    loaded = load_trained_model(tmp_path / "model.pt", "joint", info, 28, CPU, {}, train=train)
    assert isinstance(loaded, Combined)
    assert_same_weights(loaded, result.model)
    images = lesions["test_images"][:4]
    targets = predict_proba(loaded, images).argmax(axis=1)
    params = model_method_params("gradcam", {}, loaded, 28)
    assert params["cam_layer"] is None  # each backbone's own default layer
    maps = compute_maps(loaded, images, targets, "gradcam", params, 4)
    # the mean of the combined model's Grad-CAM at layer4 (ResNet) and features (SqueezeNet)
    inputs, target = images_to_tensor(images), torch.as_tensor(targets)
    gradcam = METHODS["gradcam"].implementation()  # one model at one layer, no averaging
    per_backbone = [
        gradcam(loaded, inputs, target, cam_layer=layer)
        for layer in ("backbones.0.layer4", "backbones.1.features")
    ]
    np.testing.assert_allclose(maps, np.mean(per_backbone, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(per_backbone[0], per_backbone[1])
    saliency = compute_maps(loaded, images, targets, "saliency", {}, 4)
    for result_maps in (maps, saliency):
        assert result_maps.shape == (4, 28, 28) and np.isfinite(result_maps).all()
        assert (result_maps.reshape(4, -1).std(axis=1) > 0).all()
    with pytest.raises(ValueError, match="cannot be set for an ensemble or combined model"):
        compute_maps(loaded, images, targets, "gradcam", {"cam_layer": "backbones.0.layer4"}, 4)


# small settings so that every method runs in seconds
QUICK = {
    "integrated_gradients": {"n_steps": 4},
    "gradient_shap": {"n_samples": 2},
    "smoothgrad": {"nt_samples": 2},
    "lime": {"n_samples": 16},
    "kernel_shap": {"n_samples": 16},
    "shap_partition": {"max_evals": 40},
    "shap_gradient": {"n_samples": 4, "n_baselines": 2},
    "shap_kernel": {"n_samples": 16},
}


@pytest.fixture(scope="module")
def combined_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("joint", 1, 2, 28, backbones=JOINT["joint"]).eval()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_attributes_a_combined_model(method, combined_model, lesions):
    images = lesions["test_images"][:2]
    params = model_method_params(method, QUICK.get(method, {}), combined_model, 28)
    maps = compute_maps(combined_model, images, np.array([0, 1]), method, params, 2, seed=0)
    assert maps.shape == (2, 28, 28) and np.isfinite(maps).all()


def test_combined_config_mistakes():
    config = study_config(
        {
            "architectures": ["joint", "bad", "resnet34", "joint_frozen"],
            "combined": {
                "bad": ["resnet18", "resnet19"],
                "resnet34": ["resnet18", "vgg11_bn"],
                **JOINT,
            },
            "variants": {"joint_frozen": {"arch": "joint", "lr": 0.01}},  # a variant of one
        },
    )
    config["attribute"]["params"]["gradcam"] = {"cam_layer": "layer4"}
    text = "\n".join(config_errors(config))
    assert "train.combined.bad: unknown backbone 'resnet19'" in text
    assert "train.combined: 'resnet34' is an architecture" in text
    assert (
        "attribute.params.gradcam.cam_layer: cannot be set with the combined model 'joint'" in text
    )
    assert "joint_frozen" not in text  # a variant's base may be a combined model
    assert model_settings("joint_frozen", config["train"])["backbones"] == JOINT["joint"]


def test_a_frozen_combined_model_trains_only_its_shared_layer(tmp_path, breast):
    files = {name: str(imagenet_file(tmp_path, name)) for name in JOINT["joint"]}
    train = study_config(
        {
            "architectures": ["joint"],
            "combined": JOINT,
            "weights": "imagenet",
            "weights_files": files,
            "freeze_backbone": True,
        }
    )["train"]
    assert config_errors(study_config(train)) == []
    settings = dataclasses.replace(
        TrainSettings.from_config(train_params("joint", train), "joint", 0), epochs=1, batch_size=16
    )
    assert settings.backbone_weights_files == tuple(files.items())
    result = train_classifier("joint", *small(breast, 32, 16), 2, settings, CPU)
    seed_everything(0)
    start = build_model(
        "joint", 1, 2, 28, "imagenet", backbones=JOINT["joint"], weights_files=files
    ).state_dict()
    trained = result.model.state_dict()
    for key in trained:
        assert torch.equal(trained[key], start[key]) != key.startswith("classifier."), key
