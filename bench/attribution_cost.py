"""Cost of each saliency method, in forward+backward passes of the same model.

Why units instead of seconds: the machine this runs on is shared and its speed changes
from minute to minute, so each method's time is divided by the time of one
forward+backward pass of the same model at the same batch size, measured in the same
process and interleaved with the method's own repeats. A method that costs 1 unit per
image is as expensive as training the model for one step on that image.

Targets from the issue (the table's "target" and "holds" columns; not asserted):

* Gradient and CAM methods (saliency, input_x_gradient, deeplift, guided_backprop,
  guided_gradcam and every pytorch-grad-cam method): <= 1.5 units per image.
* Integrated Gradients and GradientSHAP: <= 1.2 x their steps / samples units per image.
* Peak memory <= 2 GB at 28 px for every method.

Peak memory is measured in a fresh process per (method, size): ``ru_maxrss`` after the
first ``compute_maps`` call minus ``ru_maxrss`` after the model is built, the data loaded
and the method's library imported, so the number is what the computation itself adds
("extra"); "total" is the process's whole peak.

Methods that loop over images one at a time inside a batch (``PER_IMAGE``: their cost per
image does not depend on the batch) run on ``--per-image-n-images`` images (default 16)
to keep the run short; every other method runs on ``--n-images`` (default 64, one batch).
The reference forward+backward pass always uses a full batch of 64.

Run from the repository root::

    PYTHONPATH=src .venv/bin/python bench/attribution_cost.py
    PYTHONPATH=src .venv/bin/python bench/attribution_cost.py --sizes 28 --methods saliency
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# ../shared beside the repository holds the real MedMNIST files.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "breastmnist.npz"
ARCH = "resnet18"
BATCH_SIZE = 64
THREADS = 2
# Methods whose implementation handles one image at a time (ScoreCAM scores every channel
# of one image, LIME and Kernel SHAP fit one surrogate per image, the shap explainers
# explain one image per call).
PER_IMAGE = (
    "scorecam",
    "ablationcam",
    "lime",
    "kernel_shap",
    "shap_partition",
    "shap_gradient",
    "shap_kernel",
)
# Cost targets in units of fwd+bwd per image: a number, or (parameter, factor).
UNIT_TARGETS = {
    **dict.fromkeys(
        [
            "saliency",
            "input_x_gradient",
            "deeplift",
            "guided_backprop",
            "guided_gradcam",
            "gradcam",
            "gradcam_plus_plus",
            "hirescam",
            "xgradcam",
            "layercam",
            "eigencam",
            "eigengradcam",
            "scorecam",
            "ablationcam",
        ],
        1.5,
    ),
    "integrated_gradients": ("n_steps", 1.2),
    "gradient_shap": ("n_samples", 1.2),
}
MEMORY_TARGET_MIB = 2000 / 1.048576  # 2 GB at 28 px


def _max_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_images(size: int, n_images: int, data: Path):
    """The first ``n_images`` BreastMNIST test images as uint8 at ``size`` px, and labels."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from saliency_robustness.datasets.npz import load_npz

    arrays = load_npz(data, "breastmnist")
    images = arrays["test_images"][:n_images]
    labels = arrays["test_labels"][:n_images].reshape(-1).astype(np.int64)
    if size != images.shape[1]:
        tensor = torch.as_tensor(images).float().unsqueeze(1)
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
        images = tensor.round().clamp(0, 255).squeeze(1).to(torch.uint8).numpy()
    return images, labels


def _fwd_bwd_seconds(model, inputs, targets) -> float:
    """One forward + backward of the summed target-class logits (grads for inputs and weights)."""
    model.zero_grad(set_to_none=True)
    x = inputs.detach().requires_grad_(True)
    start = time.perf_counter()
    logits = model(x)
    logits.gather(1, targets[:, None]).sum().backward()
    return time.perf_counter() - start


def unit_target(method: str, params: dict) -> float | None:
    """The issue's cost target for ``method`` in units per image, or None."""
    target = UNIT_TARGETS.get(method)
    if isinstance(target, tuple):
        name, factor = target
        return factor * params[name]
    return target


def worker(
    method: str, size: int, n_images: int, repeats: int, budget_s: float, threads: int
) -> dict:
    """Measure one method at one size in this (fresh) process; returns a JSON-able dict."""
    import torch

    torch.set_num_threads(threads)
    # Import the methods' libraries before the baseline so their import is not counted.
    import captum.attr  # noqa: F401
    import pytorch_grad_cam  # noqa: F401
    import skimage.filters  # noqa: F401
    import skimage.segmentation  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    from saliency_robustness.attribution.cam_layer import default_cam_layer
    from saliency_robustness.attribution.maps import compute_maps
    from saliency_robustness.attribution.registry import get_method, method_params
    from saliency_robustness.models.build import build_model
    from saliency_robustness.models.tensors import images_to_tensor

    if get_method(method).library == "shap":
        import shap  # noqa: F401 - only for its methods, so the others' baseline is as before

    all_images, all_labels = load_images(size, max(n_images, BATCH_SIZE), DATA)
    images, labels = all_images[:n_images], all_labels[:n_images]
    torch.manual_seed(0)
    model = build_model(ARCH, 1, 2, size).eval()
    cam_layer = default_cam_layer(model, ARCH, size)
    params = method_params(method, {}, cam_layer)
    baseline_rss = _max_rss_mib()

    # First call: peak memory (before anything else can raise ru_maxrss) and warm-up.
    start = time.perf_counter()
    compute_maps(model, images, labels, method, params, batch_size=BATCH_SIZE, seed=0)
    cold_s = time.perf_counter() - start
    peak_total = _max_rss_mib()
    peak_extra = peak_total - baseline_rss

    inputs = images_to_tensor(all_images[:BATCH_SIZE])
    targets = torch.as_tensor(all_labels[:BATCH_SIZE])
    _fwd_bwd_seconds(model, inputs, targets)  # warm-up
    fwd_bwd, calls = [], []
    spent = cold_s
    # Interleave the reference and the method so load changes hit both alike; a method
    # slower than the time budget (Integrated Gradients) keeps its cold call as the sample.
    for _ in range(repeats):
        if spent > budget_s:
            break
        fwd_bwd.append(_fwd_bwd_seconds(model, inputs, targets))
        start = time.perf_counter()
        compute_maps(model, images, labels, method, params, batch_size=BATCH_SIZE, seed=0)
        calls.append(time.perf_counter() - start)
        spent += calls[-1] + fwd_bwd[-1]
    for _ in range(max(0, 3 - len(fwd_bwd))):  # at least 3 reference samples
        fwd_bwd.append(_fwd_bwd_seconds(model, inputs, targets))
    method_s = statistics.median(calls) if calls else cold_s
    per_image = method_s / len(images)
    fwd_bwd_per_image = statistics.median(fwd_bwd) / len(inputs)
    units = per_image / fwd_bwd_per_image
    target = unit_target(method, params)
    return {
        "method": method,
        "size": size,
        "n_images": len(images),
        "cam_layer": params.get("cam_layer"),
        "units": units,
        "unit_target": target,
        "units_hold": None if target is None else bool(units <= target),
        "peak_extra_mib": peak_extra,
        "peak_total_mib": peak_total,
        "memory_holds": None if size != 28 else bool(peak_extra <= MEMORY_TARGET_MIB),
        "baseline_rss_mib": baseline_rss,
        "ms_per_image": 1000 * per_image,
        "fwd_bwd_ms_per_image": 1000 * fwd_bwd_per_image,
        "timed_runs": len(calls) if calls else "1 (cold)",
    }


def run_worker(
    method: str, size: int, n_images: int, repeats: int, budget_s: float, threads: int
) -> dict:
    """Run ``worker`` in a fresh interpreter so ru_maxrss belongs to this method alone."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        f"--methods={method}",
        f"--sizes={size}",
        f"--n-images={n_images}",
        f"--repeats={repeats}",
        f"--budget-s={budget_s}",
        f"--threads={threads}",
    ]
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{method} at {size} px failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _holds(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "**no**")


def format_table(rows: list[dict]) -> str:
    """Markdown table of the measurements."""
    lines = [
        "| method | size | images | units of fwd+bwd per image | unit target | holds "
        "| peak RSS MiB extra (total) | <= 2 GB | ms per image | fwd+bwd ms per image "
        "| timed runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = "-" if r["unit_target"] is None else f"{r['unit_target']:g}"
        lines.append(
            f"| {r['method']} | {r['size']} | {r['n_images']} | {r['units']:.2f} | {target} "
            f"| {_holds(r['units_hold'])} "
            f"| {r['peak_extra_mib']:.0f} ({r['peak_total_mib']:.0f}) "
            f"| {_holds(r['memory_holds'])} "
            f"| {r['ms_per_image']:.1f} | {r['fwd_bwd_ms_per_image']:.1f} | {r['timed_runs']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from saliency_robustness.attribution.registry import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 128])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per method")
    parser.add_argument(
        "--n-images", type=int, default=BATCH_SIZE, help="test images per size (default 1 batch)"
    )
    parser.add_argument(
        "--per-image-n-images",
        type=int,
        default=16,
        help=f"test images for the methods that loop over images ({', '.join(PER_IMAGE)})",
    )
    parser.add_argument(
        "--budget-s", type=float, default=60.0, help="stop repeating a method after this long"
    )
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = worker(
            args.methods[0], args.sizes[0], args.n_images, args.repeats, args.budget_s, args.threads
        )
        print(json.dumps(result))
        return

    rows = []
    started = time.perf_counter()
    for size in args.sizes:
        for method in args.methods:
            n_images = (
                min(args.n_images, args.per_image_n_images)
                if method in PER_IMAGE
                else (args.n_images)
            )
            row = run_worker(method, size, n_images, args.repeats, args.budget_s, args.threads)
            print(f"# {method} {size} px: {row['units']:.2f} units", file=sys.stderr, flush=True)
            rows.append(row)
    layers = sorted({f"{r['size']} px: {r['cam_layer']}" for r in rows if r["cam_layer"]})
    print(
        f"{ARCH}, batch {BATCH_SIZE}, {args.threads} threads, BreastMNIST test images "
        f"(--n-images {args.n_images}, per-image methods {args.per_image_n_images}), "
        f"CAM layer {'; '.join(layers) or '-'}, total {time.perf_counter() - started:.0f} s\n"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
