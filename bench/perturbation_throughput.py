"""Throughput of each registered perturbation at 28 and 224 px, against a memory copy.

Why: the perturb rule runs every perturbation at every severity over every test set, so a
slow perturbation dominates that stage. The machine is shared, so the table reports each
perturbation's time relative to a plain memory copy (``np.copy``) of the same batch,
measured in the same run with repeats interleaved, next to the absolute images/s.
Images are real BreastMNIST test images (28 px; bilinearly upsampled for 224 px), made RGB
with an H&E-like tint for the RGB-only perturbations; severity 3.

Run from the repository root::

    PYTHONPATH=src .venv/bin/python bench/perturbation_throughput.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from skimage.transform import resize

from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.perturbations.apply import perturb_images
from saliency_robustness.perturbations.registry import PERTURBATIONS, RGB_ONLY

# ../shared beside the repository holds the real MedMNIST files.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "breastmnist.npz"
SEVERITY = 3


def batches(n: dict[int, int]) -> dict[tuple[int, bool], np.ndarray]:
    """Gray and RGB batches at each side (side -> number of images)."""
    test = load_npz(DATA, "breastmnist")["test_images"]
    out = {}
    for side, count in n.items():
        gray = test[:count]
        if side != gray.shape[1]:
            gray = np.stack(
                [resize(i.astype(np.float64), (side, side), order=1) for i in gray]
            ).clip(0, 255)
            gray = np.rint(gray).astype(np.uint8)
        x = gray.astype(np.float64) / 255
        rgb = np.stack([0.55 + 0.45 * x, 0.25 + 0.6 * x, 0.5 + 0.45 * x], axis=-1)
        out[side, False] = gray
        out[side, True] = np.rint(rgb * 255).astype(np.uint8)
    return out


def measure(
    data: dict[tuple[int, bool], np.ndarray], names: list[str], repeats: int
) -> dict[tuple[str, int], tuple[float, float]]:
    """(perturbation, side) -> (median images/s, median time / median copy time)."""
    sides = sorted({side for side, _ in data})
    rgb_only = {name: PERTURBATIONS[name].channels == RGB_ONLY for name in names}
    for name in names:  # warm-up: lazy imports and first-call costs
        perturb_images(data[sides[0], rgb_only[name]][:1], name, SEVERITY, seed=0)
    times: dict[tuple[str, int], list[float]] = {}
    copies: dict[tuple[int, bool], list[float]] = {key: [] for key in data}
    for _ in range(repeats):  # interleaved, so a burst of load hits everything alike
        for key, images in data.items():
            start = time.perf_counter()
            np.copy(images)
            copies[key].append(time.perf_counter() - start)
        for name in names:
            for side in sides:
                images = data[side, rgb_only[name]]
                start = time.perf_counter()
                perturb_images(images, name, SEVERITY, seed=0)
                times.setdefault((name, side), []).append(time.perf_counter() - start)
    out = {}
    for (name, side), t in times.items():
        median = statistics.median(t)
        copy = statistics.median(copies[side, rgb_only[name]])
        out[name, side] = (len(data[side, rgb_only[name]]) / median, median / copy)
    return out


def format_table(rates: dict[tuple[str, int], tuple[float, float]], sides: list[int]) -> str:
    head = " | ".join(f"{s} px images/s | {s} px time / copy" for s in sides)
    lines = [f"| perturbation | backend | {head} |", "|---|---|" + "---|---|" * len(sides)]
    names = sorted({n for n, _ in rates}, key=lambda n: rates[n, sides[-1]][0])
    for name in names:
        cells = " | ".join(f"{rates[name, s][0]:.0f} | {rates[name, s][1]:.3g}x" for s in sides)
        lines.append(f"| {name} | {PERTURBATIONS[name].backend} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--perturbations", nargs="+", default=list(PERTURBATIONS), choices=list(PERTURBATIONS)
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per perturbation")
    parser.add_argument("--n28", type=int, default=156, help="images at 28 px")
    parser.add_argument("--n224", type=int, default=16, help="images at 224 px")
    args = parser.parse_args(argv)
    # As in the perturb rule (one thread per job): torchio's small per-image FFTs gain nothing
    # from intra-op threads, and spinning OpenMP threads distort timings on a shared machine.
    torch.set_num_threads(1)

    sizes = {28: args.n28, 224: args.n224}
    rates = measure(batches(sizes), args.perturbations, args.repeats)
    print(
        f"BreastMNIST test images ({args.n28} at 28 px, {args.n224} at 224 px), severity "
        f"{SEVERITY}, seed 0, median of {args.repeats} runs; slowest at 224 px first\n"
    )
    print(format_table(rates, sorted(sizes)))
    slowest = sorted(args.perturbations, key=lambda n: rates[n, 224][0])
    print(f"\nSlowest three at 224 px: {', '.join(slowest[:3])}")


if __name__ == "__main__":
    main()
