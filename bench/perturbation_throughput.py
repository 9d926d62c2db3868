"""Throughput of each registered perturbation on the BreastMNIST test set at 28 px.

Why: the perturb rule runs every perturbation at every severity for every test set, so a
slow perturbation dominates that step. The machine is shared, so compare the ratio to the
fastest perturbation (measured in the same run, repeats interleaved across perturbations)
rather than the absolute images/s.

Run from the repository root::

    PYTHONPATH=src .venv/bin/python bench/perturbation_throughput.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from saliency_robustness.data import load_npz
from saliency_robustness.perturbations import PERTURBATIONS, SEVERITIES, perturb_images

# ../shared beside the repository holds the real MedMNIST files.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "breastmnist.npz"


def measure(images: np.ndarray, names: list[str], repeats: int) -> dict[str, dict[int, float]]:
    """Median images/s of ``perturb_images`` for each perturbation and severity."""
    for name in names:  # warm-up: lazy imgaug import and first-call costs
        perturb_images(images, name, SEVERITIES[0], seed=0)
    times: dict[str, dict[int, list[float]]] = {n: {s: [] for s in SEVERITIES} for n in names}
    for _ in range(repeats):  # interleaved, so a burst of load hits every perturbation
        for name in names:
            for severity in SEVERITIES:
                start = time.perf_counter()
                perturb_images(images, name, severity, seed=0)
                times[name][severity].append(time.perf_counter() - start)
    return {
        name: {s: len(images) / statistics.median(t) for s, t in per.items()}
        for name, per in times.items()
    }


def format_table(rates: dict[str, dict[int, float]]) -> str:
    """Markdown table: mean images/s over severities, ratio to the fastest, per severity."""
    means = {name: float(np.mean(list(per.values()))) for name, per in rates.items()}
    fastest = max(means.values())
    header = " | ".join(f"s{s}" for s in SEVERITIES)
    lines = [
        f"| perturbation | images/s (mean over severities) | time vs fastest | {header} |",
        "|---|---|---|" + "---|" * len(SEVERITIES),
    ]
    for name, per in sorted(rates.items(), key=lambda item: -means[item[0]]):
        cells = " | ".join(f"{per[s]:.0f}" for s in SEVERITIES)
        lines.append(f"| {name} | {means[name]:.0f} | {fastest / means[name]:.2f}x | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--perturbations", nargs="+", default=list(PERTURBATIONS), choices=list(PERTURBATIONS)
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per severity")
    args = parser.parse_args(argv)

    images = load_npz(DATA, "breastmnist")["test_images"]
    rates = measure(images, args.perturbations, args.repeats)
    print(
        f"{len(images)} BreastMNIST test images at {images.shape[1]} px, seed 0, "
        f"median of {args.repeats} runs per severity\n"
    )
    print(format_table(rates))


if __name__ == "__main__":
    main()
