"""The Snakemake process and the table and plot jobs run without the deep-learning stack.

Planning a study (parsing the Snakefile, checking the config, the input functions) reads
only the light registries and dataset metadata, and a table or plot job imports only what
it draws with: no torch, torchvision, captum, grad-cam, imgaug, torchio, shap or medmnist.
Checked three ways: which modules a real dry run of the default and of the full study has
loaded when it ends; which modules each light job of a real tiny run has loaded; and a
fresh virtualenv with only Snakemake and the light packages, which plans both studies and
reports a config error.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, requirement_pins, snakemake

pytestmark = pytest.mark.workflow

HEAVY = (
    "torch",
    "torchvision",
    "captum",
    "pytorch_grad_cam",
    "imgaug",
    "torchio",
    "shap",
    "medmnist",
    "cv2",
)
FULL_STUDY = REPO / "bench" / "full_study.yaml"
# The packages the Snakemake process needs (README "With conda"), at the versions of
# requirements.txt; PyYAML comes with Snakemake.
LIGHT_PACKAGES = ("snakemake", "jsonschema", "numpy", "pandas", "pillow")
# Rules whose jobs must not import the heavy stack (table and plot jobs, and data jobs).
LIGHT_ENVS = ("data.yaml", "metrics.yaml", "plots.yaml")

# Started as `python -c RECORDER ...snakemake arguments`: runs Snakemake and, when the
# process ends, prints which heavy modules it had imported.
RECORDER = f"""
import atexit, json, sys
atexit.register(lambda: print("HEAVY_MODULES=" + json.dumps(
    [m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr))
from snakemake.cli import main
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""

# A sitecustomize for the jobs of a real run: each Python job writes the heavy modules it
# had imported at exit, to a file named after its script.
JOB_RECORDER = f"""
import atexit, json, os, sys
from pathlib import Path

def _record():
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    folder = Path(os.environ["LIGHT_PROCESS_RECORDS"])
    heavy = [m for m in {HEAVY!r} if m in sys.modules]
    (folder / f"{{script}}.{{os.getpid()}}.json").write_text(json.dumps(heavy))

atexit.register(_record)
"""


def _heavy_modules(result: subprocess.CompletedProcess) -> list[str]:
    lines = [line for line in result.stderr.splitlines() if line.startswith("HEAVY_MODULES=")]
    assert lines, f"the recorder did not run:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return json.loads(lines[-1].split("=", 1)[1])


@pytest.mark.parametrize("study", ["default", "full"])
def test_planning_a_study_imports_no_deep_learning_stack(tmp_path, study):
    presets = () if study == "default" else (FULL_STUDY,)
    result = snakemake(
        tmp_path,
        "-n",
        "--quiet",
        "rules",
        presets=presets,
        python=(sys.executable, "-c", RECORDER),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _heavy_modules(result) == []


def _light_rules() -> dict[str, str]:
    """Rule name -> script of every rule whose conda env is one of LIGHT_ENVS (a rule made
    by ``use rule A ... as B with:`` inherits A's env and script unless it sets them)."""
    env_and_script, templates = {}, set()
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        blocks = re.split(r"^(?=rule |use rule )", path.read_text(), flags=re.M)
        for block in blocks:
            conda = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            script = re.search(r'script:\s*\n\s*"([^"]+)"', block)
            own = (conda and Path(conda[1]).name, script and Path(script[1]).name)
            if block.startswith("rule "):
                env_and_script[block[5:].split(":", 1)[0].strip()] = own
            elif used := re.match(r"use rule (\w+)(?: from (\w+))? as (\w+)", block):
                base = env_and_script.get(used[1], (None, None))
                env_and_script[used[3]] = (own[0] or base[0], own[1] or base[1])
                if used[2]:  # the base is a rule of a module, not of the workflow
                    templates.add(used[1])
    return {
        name: script
        for name, (env, script) in env_and_script.items()
        if env in LIGHT_ENVS and script and name not in templates
    }


def test_light_jobs_of_a_real_run_import_no_deep_learning_stack(tiny_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    hooks, records = tmp_path / "hooks", tmp_path / "records"
    hooks.mkdir()
    records.mkdir()
    (hooks / "sitecustomize.py").write_text(JOB_RECORDER)
    light = _light_rules()
    # the table and plot jobs (the data jobs are light too, but train jobs depend on them)
    rerun = [name for name in light if name not in ("download_medmnist", "folds", "custom_dataset")]
    result = snakemake(
        workdir,
        "--forcerun",
        *rerun,
        extra_env={"PYTHONPATH": str(hooks), "LIGHT_PROCESS_RECORDS": str(records)},
    )
    assert result.returncode == 0, result.stderr[-5000:]
    recorded = {}
    for path in records.glob("*.json"):
        script = path.name.rsplit(".", 2)[0]
        recorded.setdefault(script.split(".", 1)[-1], []).append(json.loads(path.read_text()))
    scripts = set(light.values())
    ran = {script for script in recorded if script in scripts}
    # every light script the tiny study has ran (localisation needs masks, custom data)
    not_in_tiny = {"localisation.py", "summarise_localisation.py"}  # need lesion masks
    not_rerun = {"download_medmnist.py", "make_folds.py", "build_custom_dataset.py"}
    assert ran == scripts - not_in_tiny - not_rerun
    heavy = {script: found for script in ran for found in recorded[script] if found}
    assert heavy == {}, f"light jobs imported the heavy stack: {heavy}"


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    """A fresh virtualenv with Snakemake and the light packages only."""
    venv = tmp_path_factory.mktemp("light") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", *requirement_pins(*LIGHT_PACKAGES)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if install.returncode != 0:
        pytest.fail(f"could not install the light packages:\n{install.stderr[-3000:]}")
    return venv


@pytest.mark.parametrize("study", ["default", "full"])
def test_snakemake_with_only_the_light_packages_plans_a_study(light_venv, tmp_path, study):
    presets = () if study == "default" else (FULL_STUDY,)
    python = str(light_venv / "bin" / "python")
    result = snakemake(
        tmp_path, "-n", "--quiet", "rules", presets=presets, python=(python, "-m", "snakemake")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "This was a dry-run" in result.stdout + result.stderr


def test_snakemake_with_only_the_light_packages_reports_config_errors(light_venv, tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "attribute:\n  methods: [saliency, gradcamm]\n"
        "perturb:\n  perturbations: [gaussian_noise, motion_blurr]\n"
        "train:\n  architectures: [resnet18, resnet9]\n"
    )
    python = str(light_venv / "bin" / "python")
    result = snakemake(tmp_path, "-n", presets=("tiny", typo), python=(python, "-m", "snakemake"))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "attribute.methods: unknown name 'gradcamm'" in output
    assert "perturb.perturbations: unknown name 'motion_blurr'" in output or (
        "motion_blurr" in output
    )
    assert "train.architectures: unknown name 'resnet9'" in output
    assert "ModuleNotFoundError" not in output
