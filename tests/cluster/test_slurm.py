"""The tiny preset on a real one-node SLURM cluster through profiles/slurm.

tests/cluster/start_slurm.sh installs and starts SLURM (slurmctld, slurmd, slurmdbd with
mariadb, munge) on 127.0.0.1 with two fake GPUs; see tests/cluster/README.md. The run uses
the profile as it is (its account and partitions are the ones the script creates), with only
the status polling made fast, and without the saliency-analysis families (`analysis.run: []`):
their 17 jobs cost CI minutes while testing nothing about SLURM that the other rules do not.
Checked: the run succeeds and its tables equal a local run's; every job ran as a SLURM job
(the profile's many-job rules as job arrays, one sbatch per array) with the profile's
partition, account and GPU request; GPU jobs got CUDA_VISIBLE_DEVICES from SLURM, others did
not; a failing job is reported as failed with its log files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO

pytestmark = pytest.mark.cluster

HERE = Path(__file__).resolve().parent
PROFILE = REPO / "profiles" / "slurm"
PROFILE_CONFIG = yaml.safe_load((PROFILE / "config.yaml").read_text())
TASK_ENV = Path("/var/log/slurm-test/task-env")  # written by start_slurm.sh's TaskProlog
RUN_TIMEOUT_S = 30 * 60
# The profile's polling defaults (40 s before the first check, 10 s between checks, growing
# while nothing finishes) suit a real cluster; here every level of the DAG would wait them.
FAST_POLLING = (
    "--slurm-init-seconds-before-status-checks", "1",
    "--seconds-between-status-checks", "1",
)  # fmt: skip
NO_ANALYSIS = HERE / "no_analysis.yaml"
# outputs of the analysis families, which the SLURM run leaves out (see the module docstring)
ANALYSIS_RESULTS = {
    "faithfulness", "faithfulness_over_folds", "sanity", "agreement", "detection_by_family",
    "method_comparison", "findings",
}  # fmt: skip


def _profile_names() -> tuple[str, list[str]]:
    """The account and partitions the profile asks for (the test cluster creates them)."""
    defaults = PROFILE_CONFIG["default-resources"]
    partitions = [str(defaults["slurm_partition"])]
    for resources in PROFILE_CONFIG.get("set-resources", {}).values():
        partition = resources.get("slurm_partition")
        if partition is not None and str(partition) not in partitions:
            partitions.append(str(partition))
    return str(defaults["slurm_account"]), partitions


def _gpu_rules() -> set[str]:
    return {
        rule
        for rule, resources in PROFILE_CONFIG.get("set-resources", {}).items()
        if int(resources.get("gpu", 0) or 0) > 0
    }


def _array_rules() -> set[str]:
    """The rules the profile submits as SLURM job arrays (`slurm-array-jobs`)."""
    setting = str(PROFILE_CONFIG.get("slurm-array-jobs") or "")
    return {rule.strip() for rule in setting.replace(";", ",").split(",") if rule.strip()}


def _partition_of(rule: str) -> str:
    default = PROFILE_CONFIG["default-resources"]["slurm_partition"]
    resources = PROFILE_CONFIG.get("set-resources", {}).get(rule, {})
    return str(resources.get("slurm_partition", default))


def _clean_env() -> dict[str, str]:
    """The caller's environment without SLURM or GPU settings, so that whatever the jobs see
    comes from SLURM (sbatch --export=ALL passes the submitting environment on)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "SBATCH_", "SRUN_")) and key != "CUDA_VISIBLE_DEVICES"
    }
    env["PYTHONPATH"] = ""  # the library must reach scripts via the Snakefile
    return env


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    account, partitions = _profile_names()
    env = {
        **os.environ,
        "SLURM_TEST_ACCOUNT": account,
        "SLURM_TEST_PARTITIONS": " ".join(partitions),
    }
    result = subprocess.run(
        [str(HERE / "start_slurm.sh")],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    if result.returncode == 100:
        pytest.skip(
            "\n" + "!" * 78 + "\n"
            "SLURM NOT TESTED: tests/cluster/start_slurm.sh could not install SLURM "
            "(needs root and apt-get with Debian's slurm-wlm, slurmdbd, munge, mariadb-server):\n"
            + result.stderr[-2000:]
            + "!" * 78
        )
    if result.returncode != 0:
        pytest.fail(f"start_slurm.sh failed ({result.returncode}):\n{result.stderr[-6000:]}")
    started_here = "starting " in result.stderr
    yield
    if started_here and not os.environ.get("SLURM_TEST_KEEP"):
        subprocess.run([str(HERE / "stop_slurm.sh")], capture_output=True, timeout=120)


@dataclass
class SlurmRun:
    workdir: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    run_id: str
    started: datetime

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _command(workdir: Path, targets: tuple[str, ...], config: tuple[str, ...]) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", *targets,
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--profile", str(PROFILE),
        # profiles/default would otherwise also load and win over the profile per key
        "--workflow-profile", "none",
        *FAST_POLLING,
        "--configfile", str(REPO / "config" / "config.yaml"),
        str(REPO / "config" / "presets" / "tiny.yaml"),
        str(NO_ANALYSIS),
        "--config", *config,
    ]  # fmt: skip


def _run_id(text: str) -> str:
    match = re.search(r"SLURM run ID: (\S+)", text)
    return match.group(1) if match else ""


def _cancel(run_id: str) -> None:
    if run_id:
        subprocess.run(["scancel", "--name", run_id], capture_output=True, timeout=60)


def start_slurm_snakemake(
    workdir: Path, *targets: str, config: tuple[str, ...], logs: Path
) -> tuple[subprocess.Popen, float, datetime]:
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
        process = subprocess.Popen(
            _command(workdir, targets, config),
            cwd=workdir,
            env=_clean_env(),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    return process, time.monotonic(), datetime.now()


def _abort(process: subprocess.Popen, logs: Path) -> None:
    process.terminate()  # Snakemake cancels its SLURM jobs on SIGTERM
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
    _cancel(_run_id((logs / "stderr").read_text()))


def finish_slurm_snakemake(
    process: subprocess.Popen, workdir: Path, start: float, started: datetime, logs: Path
) -> SlurmRun:
    try:
        process.wait(timeout=max(1, RUN_TIMEOUT_S - (time.monotonic() - start)))
    except BaseException:
        _abort(process, logs)
        raise
    stdout, stderr = (logs / "stdout").read_text(), (logs / "stderr").read_text()
    return SlurmRun(
        workdir,
        process.returncode,
        stdout,
        stderr,
        time.monotonic() - start,
        _run_id(stderr),
        started,
    )


def _report(request, line: str) -> None:
    """A line in pytest's terminal output, also when output is captured."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(f"[tests/cluster] {line}")
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n[tests/cluster] {line}")


@pytest.fixture(scope="module")
def slurm_run(request, slurm_cluster, mirror_url: str, tmp_path_factory) -> SlurmRun:
    """The tiny preset through profiles/slurm. The local reference run (`tiny_run`) is
    computed meanwhile when no earlier test has made it yet: the SLURM run spends much of its
    time waiting for the scheduler and for sacct polls."""
    workdir = tmp_path_factory.mktemp("slurm_run")
    logs = tmp_path_factory.mktemp("slurm_run_logs")
    process, start, started = start_slurm_snakemake(
        workdir, config=(f"mirror={mirror_url}",), logs=logs
    )
    try:
        request.getfixturevalue("tiny_run")
    except BaseException:
        _abort(process, logs)
        raise
    run = finish_slurm_snakemake(process, workdir, start, started, logs)
    _report(
        request,
        f"SLURM run of the tiny preset: {run.seconds:.0f} s wall time, {_sbatch_calls(run)} "
        f"sbatch calls ({run.stderr.count('Submitted array job with')} of them job arrays) "
        f"(exit {run.returncode})",
    )
    if run.returncode != 0:
        pytest.fail(f"snakemake on SLURM failed:\n{run.stdout[-3000:]}\n{run.stderr[-12000:]}")
    return run


def _sbatch_calls(run: SlurmRun) -> int:
    """sbatch calls of the run: one per single job, one per job array (the plugin logs each)."""
    return run.stderr.count("has been submitted with SLURM jobid") + run.stderr.count(
        "Submitted array job with"
    )


def _sacct(run: SlurmRun) -> pd.DataFrame:
    """One row per SLURM job of the run (jobs are named by the run's ID); an array task is a
    job of its own (JobIDRaw) with JobID ``<array job>_<task>``, and ``sbatch`` is the ID
    that its sbatch call returned (the array's, or the job's own)."""
    since = (run.started - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    fields = ["JobID", "JobIDRaw", "State", "Partition", "Account", "AllocTRES", "Comment"]
    result = subprocess.run(
        ["sacct", "-X", "-P", "-n", "--name", run.run_id, "--starttime", since,
         "--format", ",".join(fields)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    rows = [line.split("|", len(fields) - 1) for line in result.stdout.splitlines() if line]
    jobs = pd.DataFrame(rows, columns=fields)
    jobs["rule"] = jobs["Comment"].str.extract(r"^rule_(.+?)(?:_wildcards_.*)?$", expand=False)
    jobs["array_task"] = jobs["JobID"].str.contains("_")
    jobs["sbatch"] = jobs["JobID"].str.split("_").str[0]
    return jobs


def test_slurm_run_succeeds_with_every_rule_as_a_slurm_job(slurm_run):
    assert slurm_run.run_id
    assert "steps (100%) done" in slurm_run.stderr
    jobs = _sacct(slurm_run)
    # every submitted job and array task is a SLURM job, and each sbatch call one ID
    tasks = sum(
        int(last) - int(first) + 1
        for first, last in re.findall(r"The individual task IDs are (\d+)-(\d+)", slurm_run.stderr)
    )
    assert len(jobs) == slurm_run.stderr.count("has been submitted with SLURM jobid") + tasks > 0
    assert jobs["sbatch"].nunique() == _sbatch_calls(slurm_run)
    assert (jobs["State"] == "COMPLETED").all(), jobs[["JobIDRaw", "State", "Comment"]]
    assert jobs["rule"].notna().all(), jobs["Comment"]
    account, _ = _profile_names()
    assert (jobs["Account"] == account).all()
    for rule, partition in zip(jobs["rule"], jobs["Partition"], strict=True):
        assert partition == _partition_of(rule), rule
    expected_rules = {
        "download_medmnist", "folds", "train", "perturb", "evaluate", "attribute",
        "saliency_change", "summarise", "plot_examples", "plot_training_curves",
    }  # fmt: skip
    assert expected_rules <= set(jobs["rule"])


def test_many_job_rules_run_as_job_arrays(slurm_run):
    """The profile's many-job rules go out as SLURM job arrays: one sbatch for all the jobs of
    a rule that are ready together. train (after folds) and perturb (after the download) have
    all their jobs ready at once, so each is exactly one array. Other rules' jobs can become
    ready one by one (e.g. evaluate after each fold's training) and then go out singly."""
    array_rules = _array_rules()
    assert {"train", "perturb", "evaluate", "attribute", "saliency_change"} <= array_rules
    jobs = _sacct(slurm_run)
    assert set(jobs.loc[jobs["array_task"], "rule"]) <= array_rules
    for rule in ("train", "perturb"):
        of_rule = jobs[jobs["rule"] == rule]
        assert len(of_rule) >= 2, rule
        assert of_rule["array_task"].all() and of_rule["sbatch"].nunique() == 1, of_rule
    assert _sbatch_calls(slurm_run) < len(jobs)


def test_profile_hands_every_ready_job_to_slurm_while_arrays_are_on():
    """With job arrays, plugin 2.6.0-2.8.0 never submits an array rule's selected jobs while
    more of its ready jobs are left unselected, and the run hangs (plugin issue #473): a
    `jobs` cap, the default max-jobs-per-timespan (100/1s) or global resources would do that
    in a study wider than the tiny one here, so the profile must set none of them."""
    assert _array_rules()
    assert str(PROFILE_CONFIG["jobs"]) == "unlimited"
    assert int(str(PROFILE_CONFIG["max-jobs-per-timespan"]).split("/")[0]) >= 10_000
    assert "resources" not in PROFILE_CONFIG


def test_gpu_jobs_got_a_gpu_and_cuda_visible_devices_from_slurm(slurm_run):
    """sacct's AllocTRES shows the GPU allocation; the TaskProlog's record of each task's
    environment shows that SLURM set CUDA_VISIBLE_DEVICES in the job step that runs the rule
    (step 0, the plugin's `srun`; array tasks run the rule in the batch step itself), and only
    in GPU jobs. The test's own environment has no CUDA_VISIBLE_DEVICES, so it cannot have
    been passed on from the submitting process."""
    gpu_rules = _gpu_rules()
    assert {"train", "attribute"} <= gpu_rules
    jobs = _sacct(slurm_run)
    assert set(jobs["rule"]) & gpu_rules == gpu_rules
    for job in jobs.itertuples():
        has_gpu = "gres/gpu=1" in job.AllocTRES.split(",")
        assert has_gpu == (job.rule in gpu_rules), (job.rule, job.AllocTRES)
        step = TASK_ENV / f"{job.JobIDRaw}.{'batch' if job.array_task else 0}.env"
        assert step.is_file(), f"no TaskProlog record for job {job.JobIDRaw} ({job.rule})"
        env = dict(line.split("=", 1) for line in step.read_text().splitlines())
        if job.rule in gpu_rules:
            assert re.fullmatch(r"\d+", env["CUDA_VISIBLE_DEVICES"]), (job.rule, env)
        else:
            assert env["CUDA_VISIBLE_DEVICES"] == "<unset>", (job.rule, env)


def _comparable(path: Path):
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
        return table.drop(columns=["seconds"], errors="ignore")  # wall time per epoch
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    raise AssertionError(path)


def test_results_equal_a_local_run(slurm_run, tiny_run):
    """Same config and seed, CPU in both (the fake GPUs have no driver, so `device: auto`
    falls back to the CPU): every table, array and weight is identical. PNGs are not compared
    byte for byte. The SLURM run has everything but the analysis families' outputs."""

    def is_analysis(path: Path) -> bool:
        return bool(ANALYSIS_RESULTS & {*path.parts, path.stem})

    compared = 0
    for local in sorted((tiny_run / "results").rglob("*")):
        relative = local.relative_to(tiny_run)
        if not local.is_file() or local.suffix == ".png" or is_analysis(relative):
            continue
        remote = slurm_run.workdir / relative
        assert remote.is_file(), remote
        expected, actual = _comparable(local), _comparable(remote)
        if isinstance(expected, pd.DataFrame):
            pd.testing.assert_frame_equal(actual, expected, check_exact=True)
        elif local.suffix == ".npz":
            assert expected.keys() == actual.keys()
            for key in expected:
                np.testing.assert_array_equal(actual[key], expected[key], err_msg=str(local))
        elif local.suffix == ".pt":
            assert expected.keys() == actual.keys()
            assert all(torch.equal(actual[key], expected[key]) for key in expected), local
        else:
            assert actual == expected, local
        compared += 1
    assert compared >= 30  # perturbed, models, evaluation, saliency, metrics, summaries

    def pngs(run: Path) -> set[Path]:
        return {path.relative_to(run) for path in (run / "results").rglob("*.png")}

    assert pngs(slurm_run.workdir) == {path for path in pngs(tiny_run) if not is_analysis(path)}
    results = (slurm_run.workdir / "results").rglob("*")
    assert not any(is_analysis(path.relative_to(slurm_run.workdir)) for path in results)


def test_failing_job_is_reported_with_its_logs(request, slurm_run, mirror_url, tmp_path):
    """`device: cuda` on the fake GPUs: the train job fails inside SLURM (no CUDA driver), and
    its error message names the CUDA_VISIBLE_DEVICES it was given, which SLURM set. Snakemake
    must exit non-zero, report the SLURM job as failed and name the rule's log and the SLURM
    log."""
    if torch.cuda.is_available():
        pytest.skip("a real GPU is visible here: device: cuda would succeed")
    workdir = shutil.copytree(slurm_run.workdir, tmp_path / "run", symlinks=True)
    target = "results/models/breastmnist/resnet18/fold0/model.pt"
    process, start, started = start_slurm_snakemake(
        workdir,
        target,
        config=(f"mirror={mirror_url}", "device=cuda"),  # a params change: train reruns
        logs=tmp_path / "logs",
    )
    run = finish_slurm_snakemake(process, workdir, start, started, tmp_path / "logs")
    _report(request, f"SLURM run with a failing job: {run.seconds:.0f} s wall time")
    assert run.returncode != 0, run.stderr[-5000:]
    rule_log = "logs/train/breastmnist/resnet18/fold0.log"
    assert "Error in rule train" in run.stderr
    assert re.search(r"SLURM-job '\d+' failed, SLURM status is: 'FAILED'", run.stderr)
    log_line = next(line for line in run.stderr.splitlines() if line.strip().startswith("log:"))
    assert rule_log in log_line
    slurm_log = re.search(r"(\S+/\.snakemake/slurm_logs/rule_train/\S+\.log)", log_line)
    assert slurm_log and Path(slurm_log.group(1)).is_file()  # kept for failed jobs
    message = (workdir / rule_log).read_text()
    assert "device: cuda was requested but no CUDA GPU is visible" in message
    assert re.search(r"CUDA_VISIBLE_DEVICES='\d+'", message), message[-2000:]
    assert f"Logfile {rule_log}:" in run.stderr  # show-failed-logs prints it
    assert not (workdir / target).exists()
    jobs = _sacct(run)
    assert list(jobs["State"]) == ["FAILED"] and list(jobs["rule"]) == ["train"]
