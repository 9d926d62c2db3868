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


def dry_run(workdir, *args, edit: dict | None = None, tmp_path=None, presets=("tiny",)) -> str:
    """The text of a dry run with the presets plus an optional config edit."""
    presets = list(presets)
    if edit:
        override = tmp_path / "edit.yaml"
        override.write_text(yaml.safe_dump(edit))
        presets.append(override)
    result = snakemake(workdir, "--dry-run", *args, presets=tuple(presets))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def planned_jobs(
    workdir, *args, edit: dict | None = None, tmp_path=None, addition: bool = False, **kwargs
) -> Counter:
    """Jobs a dry run would execute, by rule (Snakemake's 'Job stats' table). With
    ``addition`` (the edit only adds to the study) no job may run because its params
    changed."""
    text = dry_run(workdir, *args, edit=edit, tmp_path=tmp_path, **kwargs)
    if addition:
        assert_no_params_changed(job_details(text))
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


def job_details(text: str) -> list[dict]:
    """Each job of a dry run's text: its rule, wildcards and Snakemake's reason for it."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", text)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block)[1]
        reason = re.search(r"^ +reason: (.*)$", block, re.MULTILINE)
        wildcards = re.search(r"^ +wildcards: (.*)$", block, re.MULTILINE)
        pairs = wildcards[1].split(", ") if wildcards else []
        jobs.append(
            {
                "rule": rule,
                "reason": reason[1] if reason else "",
                "wildcards": dict(pair.split("=", 1) for pair in pairs),
            }
        )
    return jobs


def assert_no_params_changed(jobs: list[dict]) -> None:
    """An addition never reruns a finished job because its params changed."""
    changed = [job for job in jobs if "Params have changed" in job["reason"]]
    assert not changed, changed


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
    jobs = planned_jobs(tiny_run, edit=edit, tmp_path=tmp_path, addition=True)
    assert jobs["perturb"] == 1
    assert jobs["attribute"] == N_METHODS  # one job per method: gamma's maps, every fold
    assert jobs["saliency_change"] == N_METHODS
    assert not {"download_medmnist", "folds", "train", "attribute_clean", "sanity"} & set(jobs)


def test_adding_a_method_attributes_only_that_method(tiny_run, tmp_path):
    methods = [*TINY["attribute"]["methods"], "input_x_gradient"]
    jobs = planned_jobs(
        tiny_run, edit={"attribute": {"methods": methods}}, tmp_path=tmp_path, addition=True
    )
    # the other methods' attribute jobs keep their params: each holds its own method's only
    assert jobs["attribute_clean"] == 1 and jobs["attribute"] == N_PERTURBATIONS
    assert not {"train", "evaluate", "perturb"} & set(jobs)


def test_adding_an_architecture_trains_only_that_architecture(tiny_run, tmp_path):
    """A train job's params hold its own architecture's settings only, so listing another
    architecture (or ensemble) leaves every finished job alone."""
    archs = [*TINY["train"]["architectures"], "squeezenet1_1"]
    jobs = planned_jobs(
        tiny_run, edit={"train": {"architectures": archs}}, tmp_path=tmp_path, addition=True
    )
    assert jobs["train"] == K and jobs["evaluate"] == K  # squeezenet1_1's folds only
    assert not {"download_medmnist", "folds", "perturb"} & set(jobs)


def test_adding_an_ensemble_trains_only_its_new_member(tiny_run, tmp_path):
    edit = {
        "train": {
            "architectures": [*TINY["train"]["architectures"], "res_squeeze"],
            "ensembles": {"res_squeeze": [TINY["train"]["architectures"][0], "squeezenet1_1"]},
        }
    }
    jobs = planned_jobs(tiny_run, edit=edit, tmp_path=tmp_path, addition=True)
    assert jobs["train"] == K  # squeezenet1_1; the finished member is reused
    assert jobs["evaluate"] == K  # the ensemble's folds
    assert not {"download_medmnist", "folds", "perturb"} & set(jobs)


# --- additions to a complete small run: one fold, one severity, one dataset ------------------

# One fold of one model, one perturbation at one severity, one method, no analysis families:
# the smallest complete study that each addition below grows by one.
SMALL = {
    "folds": {"run": [0]},
    "perturb": {"perturbations": ["gaussian_noise"], "severities": [1]},
    "attribute": {"methods": ["saliency"]},
    "analysis": {"run": []},
}


def _merged(edit: dict) -> dict:
    merged = {key: dict(value) for key, value in SMALL.items()}
    for key, value in edit.items():
        merged.setdefault(key, {}).update(value)
    return merged


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, mirror_url) -> tuple:
    workdir = tmp_path_factory.mktemp("small_run")
    small = workdir / "small.yaml"
    small.write_text(yaml.safe_dump(SMALL))
    result = snakemake(workdir, "--config", f"mirror={mirror_url}", presets=("tiny", small))
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, small


def _plan(small_run, tmp_path, edit: dict, params_may_change: tuple[str, ...] = ()) -> list:
    """The jobs a dry run plans after ``edit``; none may run because its params changed
    except jobs of the rules in ``params_may_change``."""
    workdir, _ = small_run
    override = tmp_path / "grown.yaml"
    override.write_text(yaml.safe_dump(_merged(edit)))
    jobs = job_details(dry_run(workdir, presets=("tiny", override)))
    print(Counter(job["rule"] for job in jobs))  # the closing note quotes these counts
    assert_no_params_changed([job for job in jobs if job["rule"] not in params_may_change])
    return jobs


def _rules(jobs: list[dict]) -> Counter:
    return Counter(job["rule"] for job in jobs)


def test_small_run_is_complete(small_run):
    workdir, small = small_run
    assert planned_jobs(workdir, presets=("tiny", small)) == Counter()


def test_adding_a_fold_trains_and_evaluates_only_that_fold(small_run, tmp_path):
    jobs = _plan(small_run, tmp_path, {"folds": {"run": [0, 1]}})
    rules = _rules(jobs)
    assert rules["train"] == 1 and rules["evaluate"] == 1
    assert all(j["wildcards"]["fold"] == "1" for j in jobs if j["rule"] in ("train", "evaluate"))
    # attribution jobs cover every fold of one (model, method): they rerun on the new input
    assert rules["attribute_clean"] == 1 and rules["attribute"] == 1
    assert not {"download_medmnist", "folds", "perturb"} & set(rules)


def test_adding_a_severity_reperturbs_and_reattributes_only_perturbed_images(small_run, tmp_path):
    """One file holds a perturbation's every severity, so the list of severities is the
    perturb job's params: that job reruns (the only params change), and so does everything
    that reads perturbed images. Models and clean maps stay. (A perturb job per severity
    was measured: the same attribution work, and a 24 % slower full-study dry run from
    the severity-many input files of every attribute, evaluate and faithfulness job.)"""
    jobs = _plan(small_run, tmp_path, {"perturb": {"severities": [1, 3]}}, ("perturb",))
    rules = _rules(jobs)
    assert rules["perturb"] == 1 and rules["evaluate"] == 1 and rules["attribute"] == 1
    changed = [j["rule"] for j in jobs if "Params have changed" in j["reason"]]
    assert changed == ["perturb"]
    assert not {"download_medmnist", "folds", "train", "attribute_clean"} & set(rules)


def test_adding_a_dataset_computes_only_that_dataset(small_run, tmp_path):
    jobs = _plan(small_run, tmp_path, {"data": {"datasets": ["breastmnist", "pneumoniamnist"]}})
    rules = _rules(jobs)
    assert rules["download_medmnist"] == 1 and rules["folds"] == 1 and rules["train"] == 1
    per_dataset = [j for j in jobs if "dataset" in j["wildcards"]]
    assert per_dataset and {j["wildcards"]["dataset"] for j in per_dataset} == {"pneumoniamnist"}
    # jobs without a dataset wildcard: the target rule and study-wide figures only
    assert {j["rule"] for j in jobs if "dataset" not in j["wildcards"]} <= {"all"}
