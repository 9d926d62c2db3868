"""Start-up cost of each job's script: the CPU seconds a job spends before its first line of
work (starting Python, Snakemake's script preamble, importing the script's modules).

    .venv/bin/python bench/startup_cost.py [--repeats 5] [--study CONFIG] [CHECKOUT ...]

For every rule of each CHECKOUT (default: this repository) that runs a script, a fresh
interpreter runs the script's top-level imports plus ``import snakemake.script`` (what
Snakemake's preamble loads to unpickle the job's ``snakemake`` object), ``--repeats`` times,
CHECKOUTs interleaved so that a busy machine slows them alike; the median CPU (user +
system) seconds are reported, next to a bare ``python -c pass``. With ``--study`` (a config
file on top of config/config.yaml, repeatable; default: the default study), a dry run counts
that study's jobs per rule, and the total start-up CPU-seconds of the study are printed per
checkout: the sum over jobs of their rule's start-up.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rule_scripts(checkout: Path) -> dict[str, Path]:
    """Rule name -> script, with ``use rule A ... as B`` inheriting A's script."""
    scripts: dict[str, Path] = {}
    rules = checkout / "workflow" / "rules"
    for path in sorted(rules.glob("*.smk")):
        for block in re.split(r"^(?=rule |use rule )", path.read_text(), flags=re.M):
            script = re.search(r'script:\s*\n\s*"([^"]+)"', block)
            own = (rules / script[1]).resolve() if script else None
            if block.startswith("rule ") and own:
                scripts[block[5:].split(":", 1)[0].strip()] = own
            elif (used := re.match(r"use rule (\w+)(?: from \w+)? as (\w+)", block)) and (
                own or used[1] in scripts
            ):
                scripts[used[2]] = own or scripts[used[1]]
    return scripts


def import_lines(script: Path) -> str:
    tree = ast.parse(script.read_text())
    nodes = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    return "\n".join(ast.unparse(n) for n in nodes)


def cpu_seconds(code: str, checkout: Path) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout / "src")},
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def jobs_per_rule(checkout: Path, study: Path | None) -> dict[str, int]:
    files = [str(checkout / "config" / "config.yaml")] + ([str(study)] if study else [])
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "--snakefile", str(checkout / "Snakefile"),
             "--directory", workdir, "-n", "--quiet", "rules", "--cores", "1",
             "--configfile", *files],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""},
        )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"{checkout}: dry run failed\n{result.stderr[-3000:]}")
    counts = {}
    for line in (result.stdout + result.stderr).splitlines():
        if match := re.fullmatch(r"(\w+)\s+(\d+)", line.strip()):
            counts[match[1]] = int(match[2])
    counts.pop("total", None)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", type=Path, default=[REPO])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--study", type=Path, action="append", default=[])
    args = parser.parse_args()
    scripts = {checkout: rule_scripts(checkout) for checkout in args.checkouts}
    codes = {
        checkout: {
            rule: "import snakemake.script\n" + import_lines(script)
            for rule, script in rules.items()
        }
        for checkout, rules in scripts.items()
    }
    bare = [cpu_seconds("pass", REPO) for _ in range(args.repeats)]
    print(f"bare interpreter (python -c pass): {statistics.median(bare):.2f} CPU-s")
    cost = {checkout: {} for checkout in args.checkouts}
    for rule in sorted({rule for rules in codes.values() for rule in rules}):
        samples = {checkout: [] for checkout in args.checkouts}
        for _ in range(args.repeats):
            for checkout in args.checkouts:
                if rule in codes[checkout]:
                    samples[checkout].append(cpu_seconds(codes[checkout][rule], checkout))
        for checkout, values in samples.items():
            if values:
                cost[checkout][rule] = statistics.median(values)
        row = "  ".join(
            f"{cost[c][rule]:6.2f}" if rule in cost[c] else "     -" for c in args.checkouts
        )
        print(f"{rule:<36} {row}")
    for study in args.study or [None]:
        for checkout in args.checkouts:
            counts = jobs_per_rule(checkout, study)
            total = sum(cost[checkout].get(rule, 0.0) * n for rule, n in counts.items())
            print(
                f"{checkout}, {study.name if study else 'default study'}: "
                f"{sum(counts.values())} jobs; start-up {total:.0f} CPU-s in all "
                "(rules without a script, e.g. all, count 0)"
            )


if __name__ == "__main__":
    main()
