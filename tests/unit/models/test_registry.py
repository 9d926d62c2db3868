"""The light architecture registry: its layer-name snapshot matches the builders at every
image size of the schema, its ImageNet files and cache folder are torchvision's and
torch's, its layer lookups answer as ``nn.Module.get_submodule`` does, and the config
check reads it in a fresh process without importing torch or torchvision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torchvision import models as tv_models

from saliency_robustness.models.architectures import module_names_by_size
from saliency_robustness.models.registry import (
    ARCHITECTURES,
    LAYER_NAMES_FILE,
    has_layer,
    layer_names,
    top_level_layers,
)
from saliency_robustness.models.weight_files import (
    TORCHVISION_DOWNLOADS,
    imagenet_weights_url,
    torch_hub_dir,
)

REPO = Path(__file__).resolve().parents[3]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _schema_sizes() -> list[int]:
    schema = yaml.safe_load(SCHEMA.read_text())
    return schema["properties"]["data"]["properties"]["size"]["enum"]


def test_layer_name_snapshot_matches_the_builders_at_every_size():
    """Regenerates the snapshot from the real builders (meta device, a few seconds) and
    compares: a new or changed architecture needs ``write_layer_names()``."""
    stored = json.loads(LAYER_NAMES_FILE.read_text())
    assert stored["sizes"] == _schema_sizes()
    regenerated = module_names_by_size(_schema_sizes())
    assert list(stored["architectures"]) == list(ARCHITECTURES)
    for name in ARCHITECTURES:
        assert stored["architectures"][name] == regenerated["architectures"][name], name
    # names differ by size only where a model resizes its input inside
    by_size = {
        name: [set(layer_names(name, size)) for size in stored["sizes"]] for name in ARCHITECTURES
    }
    for name, sets in by_size.items():
        assert all(s ^ sets[0] <= {"input_resize"} for s in sets), name
    assert "input_resize" in layer_names("alexnet", 28)
    assert "input_resize" not in layer_names("alexnet", 128)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_channels_classes_and_imagenet_stems_change_no_layer_names(name):
    with torch.device("meta"):
        model = ARCHITECTURES[name].build(1, 11, 28, pretrained=True)
    names = tuple(n for n, _ in model.named_modules(remove_duplicate=False) if n)
    assert names == layer_names(name, 28)


def test_layer_lookups_answer_as_get_submodule():
    with torch.device("meta"):
        resnet = ARCHITECTURES["resnet18"].build(3, 2, 64)
        vit = ARCHITECTURES["vit_b_16"].build(3, 2, 64)
    cases = [
        (resnet, "resnet18", ["layer4", "layer4.1", "layer4.1.conv2", "", "fc"]),
        (resnet, "resnet18", ["layer9", "layer4.", "fc.weight", "features"]),
        (vit, "vit_b_16", ["encoder.layers.encoder_layer_11.ln_1", "input_resize", "ln_1"]),
    ]
    for model, name, layers in cases:
        for layer in layers:
            try:
                model.get_submodule(layer)
                exists = True
            except AttributeError:
                exists = False
            assert has_layer(name, 64, layer) == exists, (name, layer)
    assert top_level_layers("resnet18", 64) == tuple(n for n, _ in resnet.named_children())
    assert top_level_layers("vit_b_16", 64)[-1] == "input_resize"
    for name, arch in ARCHITECTURES.items():  # each default CAM layer exists at every size
        assert all(has_layer(name, size, arch.cam_layer) for size in _schema_sizes()), name


def test_unknown_architecture_and_size_name_the_problem():
    with pytest.raises(KeyError, match="Unknown architecture 'resnet19'"):
        layer_names("resnet19", 28)
    with pytest.raises(ValueError, match="no layer names of 'resnet18' at 100 px"):
        layer_names("resnet18", 100)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_imagenet_file_is_torchvisions_default_weights(name):
    arch = ARCHITECTURES[name]
    if arch.torchvision_name is None:
        assert arch.imagenet_file is None
        with pytest.raises(ValueError, match=f"torchvision has no ImageNet weights for '{name}'"):
            imagenet_weights_url(name)
        return
    expected = tv_models.get_model_weights(arch.torchvision_name).DEFAULT.url
    assert imagenet_weights_url(name) == expected
    assert expected == TORCHVISION_DOWNLOADS + arch.imagenet_file


@pytest.mark.parametrize(
    "env",
    [
        {"TORCH_HOME": "/data/torch-home", "XDG_CACHE_HOME": "/data/xdg"},
        {"XDG_CACHE_HOME": "/data/xdg"},
        {"TORCH_HOME": "~/models"},
        {},
    ],
)
def test_torch_hub_dir_is_torchs(env, monkeypatch):
    for key in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert torch_hub_dir() == Path(torch.hub.get_dir())


LIGHT_CHECK = """
import json, sys
import saliency_robustness.models.registry
import saliency_robustness.models.specs
import saliency_robustness.models.weight_files
from saliency_robustness.config_checks import architecture_errors, cam_layer_errors

config = {
    "train": {"architectures": ["resnet18", "mobilenet_v2", "alexnet"], "weights": "imagenet"},
    "attribute": {"methods": ["gradcam"], "params": {"gradcam": {"cam_layer": "layer4"}}},
    "data": {"size": 28},
}
errors = cam_layer_errors(config) + architecture_errors(config["train"])
heavy = [m for m in ("torch", "torchvision") if m in sys.modules]
print(json.dumps({"errors": errors, "heavy": heavy}))
"""


def test_registry_and_config_checks_import_no_torch(tmp_path):
    """A fresh interpreter (the Snakemake main process's situation) imports the light
    modules and runs the architecture and CAM-layer checks without torch or torchvision."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TORCH_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", LIGHT_CHECK], env=env, capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    errors = report["errors"]
    cam = [e for e in errors if "cam_layer" in e]
    assert [e.split(" (its")[0] for e in cam] == [
        "attribute.params.gradcam.cam_layer: 'layer4' is not a layer of mobilenet_v2",
        "attribute.params.gradcam.cam_layer: 'layer4' is not a layer of alexnet",
    ]
    assert "(its top-level layers: features, avgpool, classifier, input_resize)" in cam[1]
    missing = str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    assert any(e.startswith("train.weights: ") and missing in e for e in errors)
