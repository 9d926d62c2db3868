"""Cost of each faithfulness and sanity metric per image, in forward passes of the model,
against Quantus 0.6.0's implementation of the closest metric on the same batch.

Why forward passes: they are what these metrics spend their time on and they do not change
with the load of a shared machine. A forward hook on the model counts the images it
processes (summed over calls) and the calls themselves; "fwd/image" is images processed
divided by the batch size, "calls" the number of forward calls (batching: one call per step
for the whole batch means few calls). Seconds per image are printed too (same process, so
the ratio is meaningful even if the absolute numbers are not). Backward passes (maps
recomputed by sensitivity and MPRT) are not forward passes; they are counted separately
through a tensor hook on the model's output ("bwd/image").

Pairs (ours vs Quantus): deletion+insertion curves vs PixelFlipping (deletion only, so ours
is divided by two for the ratio, column "per curve"); ROAD vs quantus.ROAD at the same
percentages; captum infidelity vs quantus.Infidelity; captum sensitivity_max vs
quantus.MaxSensitivity at the same number of samples; cascading randomisation
(``granularity`` stages and layers) vs quantus.MPRT. Confidence change
(pytorch-grad-cam) has no Quantus counterpart.

Run from the repository root::

    PYTHONPATH=src .venv/bin/python bench/saliency_metrics_cost.py            # ~3 min
    PYTHONPATH=src .venv/bin/python bench/saliency_metrics_cost.py --n-images 8 --threads 1
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from saliency_robustness.analysis.faithfulness import (
    confidence_change,
    deletion_insertion_curves,
    infidelity_scores,
    road_scores,
    sensitivity_scores,
)
from saliency_robustness.analysis.map_similarity import normalise_maps
from saliency_robustness.analysis.sanity import model_randomisation
from saliency_robustness.attribution.maps import compute_maps, input_maps
from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.models.build import build_model
from saliency_robustness.models.tensors import images_to_tensor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "breastmnist.npz"


class Counter:
    """Forward calls, images forwarded and backward passes through any model in the process
    (hooks on every ResNet, including the deep copies that randomisation makes)."""

    def __init__(self) -> None:
        self.calls = self.images = self.backwards = 0
        self.handle = torch.nn.modules.module.register_module_forward_hook(self.hook)

    def hook(self, module, inputs, output) -> None:
        if type(module).__name__ != "ResNet":
            return
        self.calls += 1
        self.images += len(inputs[0])
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(self.count_backward)

    def count_backward(self, grad: torch.Tensor) -> None:
        self.backwards += len(grad)

    def measure(self, function: Callable[[], object], n: int) -> dict:
        self.calls = self.images = self.backwards = 0
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            function()
        seconds = time.perf_counter() - start
        return {
            "fwd": self.images / n,
            "bwd": self.backwards / n,
            "calls": self.calls,
            "s": seconds / n,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4, help="infidelity/sensitivity samples")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import quantus

    torch.manual_seed(0)
    model = build_model("resnet18", 1, 2, 28).eval()
    images = load_npz(DATA, "breastmnist")["test_images"][: args.n_images]
    n = len(images)
    targets = np.zeros(n, int)
    maps = normalise_maps(compute_maps(model, images, targets, "saliency", {}, n))
    maps = maps.astype(np.float32)
    inputs = images_to_tensor(images)
    x, a = inputs.numpy(), maps[:, None]
    percentiles = (20, 50, 80)

    def explain(model, inputs, targets, **kwargs):
        tensor = torch.as_tensor(inputs).requires_grad_(True)
        result = input_maps(model, tensor, torch.as_tensor(targets).long(), "saliency", {})
        return normalise_maps(result)[:, None]

    def quantus_call(metric, **extra):
        return lambda: metric(
            model=model, x_batch=x, y_batch=targets, a_batch=a, device="cpu",
            channel_first=True, **extra,
        )  # fmt: skip

    quiet = {"disable_warnings": True, "display_progressbar": False}
    pairs = [
        (
            "deletion + insertion curves (per curve)",
            lambda: deletion_insertion_curves(model, inputs, maps, targets, args.steps),
            quantus_call(
                quantus.PixelFlipping(
                    features_in_step=784 // args.steps,
                    perturb_baseline=-1.0,
                    normalise=False,
                    **quiet,
                ),
                softmax=True,
            ),  # fmt: skip
            2,
        ),
        (
            f"ROAD MoRF+LeRF, percentiles {percentiles}",
            lambda: road_scores(model, inputs, maps, targets, percentiles, 0),
            quantus_call(
                quantus.ROAD(percentages=list(percentiles), normalise=False, **quiet),
                softmax=True,
            ),
            1,
        ),
        (
            f"infidelity ({args.samples} samples)",
            lambda: infidelity_scores(model, inputs, maps, targets, args.samples, 0.1, 0),
            quantus_call(
                quantus.Infidelity(
                    n_perturb_samples=args.samples, perturb_patch_sizes=[4], **quiet
                ),
                softmax=True,
            ),
            1,
        ),
        (
            f"sensitivity_max ({args.samples} samples, saliency)",
            lambda: sensitivity_scores(
                model, inputs, targets, "saliency", {}, args.samples, 0.02, 0
            ),
            quantus_call(
                quantus.MaxSensitivity(nr_samples=args.samples, lower_bound=0.02, **quiet),
                explain_func=explain,
            ),
            1,
        ),
        (
            "cascading randomisation, layers (saliency)",
            lambda: model_randomisation(model, images, targets, "saliency", {}, "layers", n),
            quantus_call(quantus.MPRT(normalise=False, **quiet), explain_func=explain),
            1,
        ),
        (
            "cascading randomisation, stages (saliency)",
            lambda: model_randomisation(model, images, targets, "saliency", {}, "stages", n),
            quantus_call(quantus.MPRT(normalise=False, **quiet), explain_func=explain),
            1,
        ),
        (
            "confidence change (pytorch-grad-cam)",
            lambda: confidence_change(model, inputs, maps, targets),
            None,
            1,
        ),  # fmt: skip
    ]
    counter = Counter()
    print(f"{n} BreastMNIST test images, 28 px, untrained resnet18, {args.threads} threads")
    header = (
        "| metric | ours fwd/image | ours bwd/image | ours calls | Quantus fwd/image | "
        "Quantus calls | fwd ratio Quantus/ours | s/image ours | s/image Quantus | time ratio |"
    )
    print(header)
    print("|" + " --- |" * 10)
    for name, ours_fn, theirs_fn, per in pairs:
        ours = counter.measure(ours_fn, n)
        ours = {**ours, "fwd": ours["fwd"] / per, "s": ours["s"] / per}
        if theirs_fn is None:
            print(
                f"| {name} | {ours['fwd']:.1f} | {ours['bwd']:.1f} | {ours['calls']} | - | - | - "
                f"| {ours['s']:.4f} | - | - |"
            )
            continue
        theirs = counter.measure(theirs_fn, n)
        ratio = theirs["fwd"] / ours["fwd"] if ours["fwd"] else float("nan")
        print(
            f"| {name} | {ours['fwd']:.1f} | {ours['bwd']:.1f} | {ours['calls']} | "
            f"{theirs['fwd']:.1f} | {theirs['calls']} | {ratio:.2f} | {ours['s']:.4f} | "
            f"{theirs['s']:.4f} | {theirs['s'] / ours['s']:.2f} |"
        )


if __name__ == "__main__":
    main()
