"""Partial reruns rerun only what changed: dry runs against a complete tiny run."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import yaml

from conftest import REPO, snakemake

pytestmark = pytest.mark.workflow

TINY = yaml.safe_load((REPO / "config" / "presets" / "tiny.yaml").read_text())
K = TINY["folds"]["k"]
N_PERTURBATIONS = len(TINY["perturb"]["perturbations"])
N_METHODS = len(TINY["attribute"]["methods"])


def planned_jobs(workdir, *args, edit: dict | None = None, tmp_path=None) -> Counter:
    """Jobs a dry run would execute, by rule (Snakemake's 'Job stats' table)."""
    presets = ["tiny"]
    if edit:
        override = tmp_path / "edit.yaml"
        override.write_text(yaml.safe_dump(edit))
        presets.append(override)
    result = snakemake(workdir, "--dry-run", *args, presets=tuple(presets))
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    if "Job stats:" not in text:
        assert "Nothing to be done" in text, text[-3000:]
        return Counter()
    table = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    jobs = Counter()
    for line in table.splitlines():
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if match and match[1] != "total":
            jobs[match[1]] = int(match[2])
    print(dict(jobs))  # the closing note quotes these lists
    return jobs


def test_complete_run_has_nothing_to_do(tiny_run):
    assert planned_jobs(tiny_run) == Counter()


def test_until_train_stops_after_training(tmp_path):
    jobs = planned_jobs(tmp_path, "--until", "train")
    assert jobs == Counter({"download_medmnist": 1, "folds": 1, "train": K})


def test_forcerun_perturb_keeps_models(tiny_run):
    jobs = planned_jobs(tiny_run, "--forcerun", "perturb")
    assert not {"download_medmnist", "folds", "train"} & set(jobs)
    assert jobs["perturb"] == N_PERTURBATIONS
    assert jobs["evaluate"] == K and jobs["attribute"] == N_PERTURBATIONS * N_METHODS
    # the clean maps and the randomisation checks never read perturbed images
    assert not {"attribute_clean", "sanity"} & set(jobs)


def test_editing_plot_settings_reruns_only_plots(tiny_run, tmp_path):
    jobs = planned_jobs(tiny_run, edit={"plots": {"dpi": 61}}, tmp_path=tmp_path)
    assert jobs["plot_training_curves"] == 1
    assert all(rule.startswith("plot_") or rule == "all" for rule in jobs), jobs


def test_editing_one_method_reruns_only_that_method(tiny_run, tmp_path):
    params = {"integrated_gradients": {"n_steps": 9, "internal_batch_size": 64}}
    jobs = planned_jobs(tiny_run, edit={"attribute": {"params": params}}, tmp_path=tmp_path)
    # integrated_gradients only: its clean maps and one job per perturbation (every fold)
    assert jobs["attribute_clean"] == 1 and jobs["attribute"] == N_PERTURBATIONS
    assert jobs["saliency_change"] == 1
    assert not {"download_medmnist", "folds", "train", "evaluate", "perturb"} & set(jobs)


def test_editing_one_perturbation_reruns_only_that_perturbation(tiny_run, tmp_path):
    edit = {"perturb": {"params": {"contrast": {"severity_table": [0.7, 0.5, 0.35, 0.25, 0.15]}}}}
    jobs = planned_jobs(tiny_run, edit=edit, tmp_path=tmp_path)
    assert jobs["perturb"] == 1  # contrast only; the other perturbations are kept
    assert jobs["evaluate"] == K  # it reads every set
    assert jobs["attribute"] == N_METHODS  # contrast's maps only
    assert not {"download_medmnist", "folds", "train", "attribute_clean", "sanity"} & set(jobs)


def test_adding_a_perturbation_attributes_only_that_perturbation(tiny_run, tmp_path):
    perturbations = [*TINY["perturb"]["perturbations"], "gamma"]
    edit = {"perturb": {"perturbations": perturbations}}
    jobs = planned_jobs(tiny_run, edit=edit, tmp_path=tmp_path)
    assert jobs["perturb"] == 1
    assert jobs["attribute"] == N_METHODS  # one job per method: gamma's maps, every fold
    assert jobs["saliency_change"] == N_METHODS
    assert not {"download_medmnist", "folds", "train", "attribute_clean", "sanity"} & set(jobs)


def test_adding_a_method_attributes_only_that_method(tiny_run, tmp_path):
    methods = [*TINY["attribute"]["methods"], "input_x_gradient"]
    jobs = planned_jobs(tiny_run, edit={"attribute": {"methods": methods}}, tmp_path=tmp_path)
    # the other methods' attribute jobs keep their params: each holds its own method's only
    assert jobs["attribute_clean"] == 1 and jobs["attribute"] == N_PERTURBATIONS
    assert not {"train", "evaluate", "perturb"} & set(jobs)


def test_adding_an_architecture_trains_only_that_architecture(tiny_run, tmp_path):
    """A train job's params hold its own architecture's settings only, so listing another
    architecture (or ensemble) leaves every finished job alone."""
    archs = [*TINY["train"]["architectures"], "squeezenet1_1"]
    jobs = planned_jobs(tiny_run, edit={"train": {"architectures": archs}}, tmp_path=tmp_path)
    assert jobs["train"] == K and jobs["evaluate"] == K  # squeezenet1_1's folds only
    assert not {"download_medmnist", "folds", "perturb"} & set(jobs)


def test_adding_an_ensemble_trains_only_its_new_member(tiny_run, tmp_path):
    edit = {
        "train": {
            "architectures": [*TINY["train"]["architectures"], "res_squeeze"],
            "ensembles": {"res_squeeze": [TINY["train"]["architectures"][0], "squeezenet1_1"]},
        }
    }
    jobs = planned_jobs(tiny_run, edit=edit, tmp_path=tmp_path)
    assert jobs["train"] == K  # squeezenet1_1; the finished member is reused
    assert jobs["evaluate"] == K  # the ensemble's folds
    assert not {"download_medmnist", "folds", "perturb"} & set(jobs)
