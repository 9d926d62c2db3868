"""The five source studies as presets (config/presets/study_*.yaml): every one plans a
complete DAG from its own config, and the smallest (the thesis) runs end to end.

Data the presets need and this machine lacks is made the way a researcher would provide it:
the CheXpert preset's own-data folder (images + labels.csv with uncertain labels) is written
here from the synthetic lesion generator, and the ImageNet-pretrained presets get intact
torch state_dict archives as train.weights_files (a dry run checks that each file is an
intact archive and never reads its tensors; training would, and would then reject a file of
the wrong architecture).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO, snakemake
from saliency_robustness.datasets.synthetic import make_synthetic

pytestmark = pytest.mark.workflow

PRESETS = REPO / "config" / "presets"
STUDIES = ["thesis", "pcam", "covid", "chexpert", "skin"]


def _preset(name: str) -> dict:
    return yaml.safe_load((PRESETS / f"study_{name}.yaml").read_text())


def _weights_files(preset: dict, folder: Path) -> dict[str, str]:
    """An intact torch archive for every architecture the preset trains from ImageNet."""
    import torch
    import torchvision

    path = folder / "squeezenet1_1_random.pth"
    if not path.exists():
        torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
    train = preset["train"]
    archs = set(train["architectures"])
    for spec in (train.get("variants") or {}).values():
        archs.add(spec["arch"])
    for members in [
        *(train.get("combined") or {}).values(),
        *(train.get("ensembles") or {}).values(),
    ]:
        archs.update(members)
    archs -= set(train.get("variants") or {}) | set(train.get("combined") or {})
    archs -= set(train.get("ensembles") or {})
    return {arch: str(path) for arch in sorted(archs)}


def write_chexpert_folder(root: Path, labels: list[str], seed: int = 0) -> pd.DataFrame:
    """An own-data multi-label folder in the preset's layout: PNG images of the synthetic
    multi-label lesion set (its three lesion kinds are the first three findings), two more
    findings drawn at random, and about one entry in six uncertain (name:-1)."""
    arrays = make_synthetic({"train": 90, "val": 30, "test": 40}, task="multi-label", seed=seed)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for split in ("train", "val", "test"):
        kinds = arrays[f"{split}_labels"]
        extra = rng.integers(0, 2, size=(len(kinds), len(labels) - kinds.shape[1]))
        values = np.concatenate([kinds, extra], axis=1).astype(int)
        values[rng.random(values.shape) < 1 / 6] = -1
        for index, (image, row) in enumerate(zip(arrays[f"{split}_images"], values, strict=True)):
            name = f"images/{split}_{index}.png"
            Image.fromarray(image).save(root / name)
            cell = ";".join(f"{label}:{v}" for label, v in zip(labels, row, strict=True) if v)
            rows.append({"path": name, "label": cell, "split": split})
    table = pd.DataFrame(rows)
    table.to_csv(root / "labels.csv", index=False)
    return table


def _job_counts(text: str) -> Counter:
    """Snakemake's 'Job stats' table of a dry run, by rule."""
    table = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = Counter()
    for line in table.splitlines():
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if match and match[1] != "total":
            counts[match[1]] = int(match[2])
    return counts


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_preset_plans_its_study(study, tmp_path, mirror_url):
    preset = _preset(study)
    extra = {"mirror": mirror_url}
    if "imagenet" in yaml.safe_dump(preset["train"]):
        extra["train"] = {"weights_files": _weights_files(preset, tmp_path)}
    if study == "chexpert":
        spec = preset["data"]["custom"]["chexpert"]
        write_chexpert_folder(tmp_path / spec["root"], spec["labels"])
    override = tmp_path / "here.yaml"
    override.write_text(yaml.safe_dump(extra))
    result = snakemake(tmp_path, "--dry-run", presets=(PRESETS / f"study_{study}.yaml", override))
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = _job_counts(result.stdout + result.stderr)
    print(study, sum(jobs.values()), dict(jobs))  # the closing note quotes these counts
    train = preset["train"]
    n_models = len(train["architectures"]) - len(train.get("ensembles") or {})
    n_folds = preset["folds"]["k"]
    assert jobs["train"] == n_models * n_folds
    n_methods = len(preset["attribute"]["methods"])
    n_perturbations = len(preset["perturb"]["perturbations"])
    assert jobs["attribute_clean"] == len(train["architectures"]) * n_methods
    assert jobs["attribute"] == len(train["architectures"]) * n_methods * n_perturbations
    families = set(preset.get("analysis", {}).get("run", []))
    assert ("agreement" in jobs) == ("agreement" in families)
    assert ("faithfulness" in jobs) == ("faithfulness" in families)
    has_masks = study in ("covid", "skin")  # the synthetic lesion set
    assert ("localisation" in jobs) == has_masks


def test_chexpert_folder_holds_uncertain_labels(tmp_path):
    labels = _preset("chexpert")["data"]["custom"]["chexpert"]["labels"]
    table = write_chexpert_folder(tmp_path, labels)
    entries = [entry for cell in table["label"].fillna("") for entry in cell.split(";") if entry]
    uncertain = sum(entry.endswith(":-1") for entry in entries)
    assert 0.05 < uncertain / len(entries) < 0.5


# The thesis preset at test scale: every perturbation and method of the study, on one
# severity, two folds, two epochs and a few images.
THESIS_HERE = {
    "folds": {"k": 2},
    "train": {"epochs": 2, "batch_size": 64},
    "perturb": {"severities": [5]},
    "attribute": {
        "max_images": 6,
        "batch_size": 6,
        "params": {"integrated_gradients": {"n_steps": 8}},
    },
    "resources": {"train": {"threads": 1}, "evaluate": {"threads": 1}, "attribute": {"threads": 1}},
}


def test_thesis_preset_runs_end_to_end(tmp_path, mirror_url):
    override = tmp_path / "here.yaml"
    override.write_text(yaml.safe_dump({**THESIS_HERE, "mirror": mirror_url}))
    thesis = PRESETS / "study_thesis.yaml"
    result = snakemake(tmp_path, presets=(thesis, override))
    assert result.returncode == 0, result.stderr[-6000:]
    perturbations = _preset("thesis")["perturb"]["perturbations"]
    # classification AUC / ACC per perturbation and severity, every fold
    metrics = pd.concat(
        pd.read_parquet(path)
        for path in (tmp_path / "results" / "evaluation" / "breastmnist" / "resnet18").glob(
            "fold*/metrics.parquet"
        )
    )
    overall = metrics[metrics["label"] == "all"]  # clean images are severity 0 of each
    assert set(overall["perturbation"]) == set(perturbations)
    assert set(overall["severity"]) == {0, *THESIS_HERE["perturb"]["severities"]}
    assert overall[["auc", "acc"]].notna().all().all()
    # the saliency RMSE of every method under every perturbation
    for method in _preset("thesis")["attribute"]["methods"]:
        change = pd.read_parquet(
            tmp_path / "results" / "metrics" / "saliency_change" / "breastmnist" / "resnet18"
            / f"{method}.parquet"
        )  # fmt: skip
        assert set(change["perturbation"]) == set(perturbations)
        assert change["rmse"].notna().all()
    assert (
        tmp_path / "results" / "plots" / "breastmnist" / "classification_vs_severity.png"
    ).exists()
    again = snakemake(tmp_path, "--dry-run", presets=(thesis, override))
    assert "Nothing to be done" in again.stdout + again.stderr
