"""How long a dry run of the full study takes, and where the time goes.

    PYTHONPATH=src .venv/bin/python bench/dry_run_cost.py [--repeats 3] [--profile] [CHECKOUT ...]

Each CHECKOUT (default: this repository) is a workflow folder with a Snakefile. The script
runs ``snakemake -n --quiet rules --configfile bench/full_study.yaml`` in a fresh empty
working directory (nothing built: every job is planned), CHECKOUTs interleaved ``--repeats``
times so that a busy machine slows them alike, and prints per checkout the planned jobs,
and the median wall and CPU (user + system) seconds. CPU seconds
hold up on a shared machine; wall seconds equal them on an idle one.

``--profile`` also runs each checkout once under cProfile and splits the time into: reading
the Snakefile (config checks, imports of the library), building the DAG (input functions,
matching files to rules, job objects), and the dry-run printout of every job (Snakemake
formats every job's files, resources and script source). Profiled seconds are inflated by
cProfile; the shares are what counts.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "bench" / "full_study.yaml"
# cProfile entries (file:line(function) substrings) behind each share of a profiled run
BUCKETS = {
    "Snakefile and config checks": "Snakefile:1(<module>)",
    "DAG: input functions": "rules.py:659(apply_input_function)",
    "DAG: matching input files to rules": "dag.py:2655(file2jobs)",
    "DAG: total": "workflow.py:1274(_build_dag)",
    "dry-run printout of each job": "dryrun.py:43(printjob)",
    "job resources (in printout and DAG)": "rules.py:1066(expand_resources)",
    "script source read per job": "script/__init__.py:1361(get_source)",
}


def command(checkout: Path, workdir: Path, profile: Path | None = None) -> list[str]:
    python = [sys.executable]
    if profile is not None:
        python += ["-m", "cProfile", "-o", str(profile)]
    return [
        *python, "-m", "snakemake", "--snakefile", str(checkout / "Snakefile"),
        "--directory", str(workdir), "-n", "--quiet", "rules", "--cores", "1",
        "--configfile", str(checkout / "config" / "config.yaml"), str(CONFIG),
    ]  # fmt: skip


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dry_run(checkout: Path) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        cpu, start = children_cpu(), time.perf_counter()
        result = subprocess.run(
            command(checkout, Path(workdir)), capture_output=True, text=True, cwd=workdir,
            env={**os.environ, "PYTHONPATH": ""},
        )  # fmt: skip
        wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    if result.returncode != 0:
        raise SystemExit(f"{checkout}: dry run failed\n{result.stderr[-3000:]}")
    total = re.search(r"^total\s+(\d+)", result.stdout + result.stderr, re.M)
    return {"wall": wall, "cpu": cpu, "jobs": int(total[1]) if total else 0}


def profile_shares(checkout: Path) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "profile.out"
        subprocess.run(
            command(checkout, Path(workdir) / "run", path), capture_output=True, cwd=workdir,
            env={**os.environ, "PYTHONPATH": ""}, check=True,
        )  # fmt: skip
        stats = pstats.Stats(str(path))
    total = stats.total_tt
    lookups = sum(v[1] for k, v in stats.stats.items() if k[2] == "file2jobs")
    print(f"  profiled: {total:.0f} s under cProfile; {lookups} input files matched to rules")
    for label, key in BUCKETS.items():
        cumulative = sum(v[3] for k, v in stats.stats.items() if key in f"{k[0]}:{k[1]}({k[2]})")
        print(f"    {label:<40} {cumulative:7.1f} s  {100 * cumulative / total:5.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", type=Path, default=[REPO])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    runs = {checkout: [] for checkout in args.checkouts}
    for _ in range(args.repeats):
        for checkout in args.checkouts:
            runs[checkout].append(dry_run(checkout))
    for checkout, results in runs.items():
        wall = statistics.median(r["wall"] for r in results)
        cpu = statistics.median(r["cpu"] for r in results)
        walls = ", ".join(f"{r['wall']:.1f}" for r in results)
        cpus = ", ".join(f"{r['cpu']:.1f}" for r in results)
        print(f"{checkout}: {results[0]['jobs']} jobs; dry run median wall {wall:.1f} s "
              f"({walls}), CPU {cpu:.1f} s ({cpus})")  # fmt: skip
        if args.profile:
            profile_shares(checkout)


if __name__ == "__main__":
    main()
