"""Bad config values a new user tries: each is caught before any job, with a short message
naming the key, the problem and the fix."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision.models as tv_models
import yaml
from snakemake.utils import validate

from saliency_robustness.config_checks import config_errors, weights_file_problem
from saliency_robustness.config_schema import load_schema, schema_errors
from saliency_robustness.models.weights import read_state_dict
from saliency_robustness.tables import UnreadableTableError, read_parquet, write_parquet

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = load_schema(SCHEMA_PATH)


def default_config(**sections) -> dict:
    """config/config.yaml with sections replaced, completed by the schema's defaults."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    config = copy.deepcopy(config)
    validate(config, str(SCHEMA_PATH))
    return config


# --- schema: short messages ---------------------------------------------------------------


def test_top_level_typo_names_the_nearest_key_without_a_schema_dump():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["trian"] = config.pop("train")
    errors = schema_errors(config, SCHEMA)
    assert len(errors) == 1, errors
    assert errors[0].startswith("trian: unknown key. Did you mean 'train'? Valid keys here: ")
    assert len(errors[0]) < 400  # no schema dump


def test_nested_typo_and_range_errors_are_one_line_each():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["attribute"]["max_imgs"] = 3
    config["perturb"]["severities"] = [0, 3]
    errors = schema_errors(config, SCHEMA)
    assert any(
        e.startswith("attribute.max_imgs: unknown key. Did you mean 'max_images'?") for e in errors
    )
    assert "perturb.severities.0: 0 is less than the minimum of 1." in errors
    assert all("\n" not in e for e in errors)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "head", {"hidden": 0}, "train.head.hidden: 0 is less than the minimum of 1."),
        ("train", "head", 5, "train.head: 5 is not of type 'null'; 5 is not of type 'object'."),
        ("perturb", "perturbations", "autox", "perturb.perturbations: 'auto' was expected."),
    ],
)
def test_a_value_with_alternatives_gets_the_reason_inside_the_fitting_one(
    section, key, value, expected
):
    """A key that takes one of several forms (null or a mapping, a list or `auto`) reports
    what is wrong inside the form the value has, not "not valid under any of the given
    schemas"."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config[section][key] = value
    assert schema_errors(config, SCHEMA) == [expected]


def test_valid_config_has_no_schema_errors():
    assert (
        schema_errors(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), SCHEMA) == []
    )


# --- cross-key and registry checks ---------------------------------------------------------


def test_faithfulness_severities_that_are_never_perturbed():
    config = default_config(perturb={"severities": [1, 2, 3]})
    errors = [e for e in config_errors(config) if e.startswith("analysis.faithfulness")]
    assert errors == [
        "analysis.faithfulness.severities: [5] not in perturb.severities [1, 2, 3], so "
        "faithfulness would score those severities' images that are never made. List "
        "severities from perturb.severities there (or null for all of them), or add [5] to "
        "perturb.severities."
    ]
    config["analysis"]["faithfulness"]["severities"] = None  # every perturbed severity
    assert not [e for e in config_errors(config) if e.startswith("analysis.faithfulness")]


def test_cam_layer_missing_from_an_architecture():
    config = default_config(
        train={"architectures": ["resnet18", "mobilenet_v2"]},
        attribute={"params": {"gradcam": {"cam_layer": "layer4"}}},
    )
    errors = [e for e in config_errors(config) if "cam_layer" in e]
    assert len(errors) == 1, errors
    assert "'layer4' is not a layer of mobilenet_v2" in errors[0]
    assert "features" in errors[0]  # its top-level layers are listed


def test_more_folds_than_the_rarest_class(medmnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no resources/ here: the local mirror folder is read
    config = default_config(folds={"k": 200})
    config["mirror"] = str(medmnist_dir)
    errors = [e for e in config_errors(config) if e.startswith("folds.k")]
    # BreastMNIST train + val: 147 + 21 malignant images
    assert errors == [
        "folds.k: 200 stratified folds need at least 200 images of every class, but the "
        "rarest class of breastmnist (train + val) has 168. Set folds.k between 2 and 168."
    ]
    config["folds"]["k"] = 5
    assert not [e for e in config_errors(config) if e.startswith("folds.k")]


# --- damaged weight files ------------------------------------------------------------------


@pytest.fixture
def weights_file(tmp_path) -> Path:
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(tv_models.resnet18(weights=None).state_dict(), path)
    return path


def test_truncated_weights_file_is_caught_at_config_time(weights_file, tmp_path):
    assert weights_file_problem(weights_file) is None
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    config = default_config(
        train={"weights": "imagenet", "weights_files": {"resnet18": str(truncated)}}
    )
    errors = [e for e in config_errors(config) if e.startswith("train.weights")]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"train.weights_files.resnet18: {truncated} is a damaged")
    assert "download https://download.pytorch.org/models/resnet18-f37072fd.pth" in errors[0]
    assert "weights_only" not in errors[0]
    garbage = tmp_path / "notes.pth"
    garbage.write_text("these are not weights")
    assert "is not a PyTorch weights file" in weights_file_problem(garbage)


def test_unreadable_state_dict_names_file_and_fix_never_unpickling(weights_file, tmp_path):
    truncated = tmp_path / "model.pt"
    truncated.write_bytes(weights_file.read_bytes()[:4096])
    with pytest.raises(ValueError) as caught:
        read_state_dict(truncated, "trained resnet18 model", "Delete it.")
    assert str(truncated) in str(caught.value) and "Delete it." in str(caught.value)
    pickled = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a pickled module, not a state_dict
    with pytest.raises(ValueError) as caught:
        read_state_dict(pickled, "trained resnet18 model", "Delete it.")
    message = str(caught.value)
    assert "holds Python objects besides tensors" in message
    assert "weights_only" not in message and "Weights only" not in message


# --- damaged intermediate tables -----------------------------------------------------------


def test_truncated_parquet_names_the_file_and_how_to_rebuild_it(tmp_path):
    path = tmp_path / "results" / "metrics" / "table.parquet"
    write_parquet(pd.DataFrame({"a": range(100)}), path)
    good = read_parquet(path)
    path.write_bytes(path.read_bytes()[:-20])
    copy = Path(shutil.copy(path, tmp_path / "copy.parquet"))
    for paths, named in ((path, path), ([copy, path], copy)):
        with pytest.raises(UnreadableTableError) as caught:
            read_parquet(paths)
        assert str(caught.value).startswith(f"{named} is not a readable Parquet file (")
        assert str(caught.value).endswith(f"snakemake --forcerun {named}")
    assert len(good) == 100


def test_severity_table_outside_the_perturbations_range():
    config = default_config(
        perturb={"params": {"gaussian_noise": {"severity_table": [-0.1, 0.1, 0.2, 0.3, 1.5]}}}
    )
    errors = [e for e in config_errors(config) if e.startswith("perturb.params")]
    assert errors == [
        "perturb.params.gaussian_noise.severity_table: [-0.1, 1.5] outside 0..1, the values "
        "gaussian_noise is defined for (noise standard deviation (fraction of 255)). Use "
        "values in that range; the default table is [0.04, 0.08, 0.12, 0.18, 0.26]."
    ]
    config["perturb"]["params"]["gaussian_noise"]["severity_table"] = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert not [e for e in config_errors(config) if e.startswith("perturb.params")]
