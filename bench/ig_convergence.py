"""Convergence of Integrated Gradients with its number of steps, and what the steps cost.

For each ``n_steps`` (default 16, 32, 64, 128) it attributes, with the library's own
``compute_maps_and_completeness`` (captum IntegratedGradients, black baseline,
Gauss-Legendre points, ``internal_batch_size`` 256), the model's predicted class on the
first ``--n-images`` BreastMNIST test images (default 24, the default study's
``attribute.max_images``) and, with the same targets, on the first ``--n-perturbed`` of
them (default 8) under each default perturbation (gaussian_noise, motion_blur, contrast)
at severities ``--severities`` (default 1, 3, 5; the perturb rule's seed 42). It prints
the median and max relative completeness error |delta| / |f(x) - f(black)| (delta:
captum's convergence delta; f: the target logit), clean and perturbed, the median and max
|delta| (logits), and the time per image of the clean call in units of one
forward+backward pass of the same model at the same batch (32; the summed target logits,
gradients for the input and the weights, as in attribution_cost.py), measured in the same
process with the repeats interleaved, so the ratio holds on a busy machine where seconds
do not. "default study IG core-min" scales that to the default study's 1152 IG maps
(3 folds x 24 images x (clean + 3 perturbations x 5 severities)) at this run's speed.

The models: the default study's ResNet-18s (config/config.yaml: 28 px BreastMNIST, 3
stratified folds with seed 42, training seed 42 + fold, 8 epochs, batch 128, Adam 1e-3,
best validation AUC), one per ``--folds`` entry (default 0), trained here with the
repository's ``training`` code (about 80 s each on one core) unless ``--model`` gives
their weights, one file per fold (e.g. the workflow's
``results/models/breastmnist/resnet18/fold{k}/model.pt``); ``--save-model PATH`` keeps
fold k's as ``PATH.k.pt``. Errors are pooled over the folds.

Run from the repository root::

    PYTHONPATH=src .venv/bin/python bench/ig_convergence.py              # ~8 min on 1 core
    PYTHONPATH=src .venv/bin/python bench/ig_convergence.py --folds 0 1 2  # ~25 min
    PYTHONPATH=src .venv/bin/python bench/ig_convergence.py --save-model /tmp/resnet18.pt
    PYTHONPATH=src .venv/bin/python bench/ig_convergence.py --folds 0 1 2 --steps 64 \\
        --model /tmp/resnet18.{0,1,2}.pt --n-perturbed 24 --severities 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from saliency_robustness.attribution.maps import compute_maps, compute_maps_and_completeness
from saliency_robustness.attribution.registry import method_params
from saliency_robustness.datasets.folds import fold_split, make_folds, pooled_train_val
from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.evaluation import predict_proba
from saliency_robustness.models.loading import load_model
from saliency_robustness.models.tensors import images_to_tensor
from saliency_robustness.models.weights import save_weights
from saliency_robustness.perturbations.apply import perturb_images
from saliency_robustness.training import TrainSettings, train_classifier

# ../shared beside the repository holds the real MedMNIST files.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "breastmnist.npz"
SEED = 42  # config/config.yaml
FOLDS, FOLD = 3, 0
BATCH_SIZE = 32  # attribute.batch_size
PERTURBATIONS = ("gaussian_noise", "motion_blur", "contrast")
# Maps of the default study: 3 folds x 24 images x (clean + 3 perturbations x 5 severities).
STUDY_MAPS = 3 * 24 * (1 + 3 * 5)


def train_default_model(arrays: dict, fold: int, epochs: int) -> torch.nn.Module:
    """One fold of the default study's ResNet-18, as workflow/scripts/train.py trains it."""
    _, labels, sources = pooled_train_val(arrays)
    folds = make_folds(labels, sources, k=FOLDS, seed=SEED)
    splits = fold_split(arrays, folds, fold)
    settings = TrainSettings(epochs=epochs, batch_size=128, lr=1e-3, seed=SEED + fold)
    start = time.perf_counter()
    result = train_classifier(
        "resnet18", splits["train"], splits["val"], 2, settings, torch.device("cpu")
    )
    print(
        f"trained resnet18 fold {fold} for {epochs} epochs in {time.perf_counter() - start:.0f} s:"
        f" best epoch {result.best_epoch}, validation AUC {result.best_val['auc']:.3f}",
        flush=True,
    )
    return result.model.eval()


def fwd_bwd_seconds(model: torch.nn.Module, images: np.ndarray, targets: np.ndarray) -> float:
    """One forward + backward of the summed target logits (input and weight gradients)."""
    model.zero_grad(set_to_none=True)
    x = images_to_tensor(images).requires_grad_(True)
    start = time.perf_counter()
    model(x).gather(1, torch.as_tensor(targets).long()[:, None]).sum().backward()
    return time.perf_counter() - start


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def summary(errors: np.ndarray) -> str:
    errors = errors[np.isfinite(errors)]
    return f"{100 * np.median(errors):.1f} | {100 * errors.max():.1f}"


def measure(model, arrays: dict, args) -> dict[int, dict]:
    """Per n_steps: completeness errors and |delta| (clean, perturbed) and the cost ratio."""
    clean = arrays["test_images"][: args.n_images]
    targets = predict_proba(model, clean).argmax(axis=1)
    k = min(args.n_perturbed, len(clean))
    perturbed = np.concatenate(
        [
            perturb_images(clean[:k], name, severity, SEED)
            for name in PERTURBATIONS
            for severity in args.severities
        ]
    )
    perturbed_targets = np.tile(targets[:k], len(PERTURBATIONS) * len(args.severities))
    reference = clean[:BATCH_SIZE]
    fwd_bwd_seconds(model, reference, targets[:BATCH_SIZE])  # warm-up
    results = {}
    for steps in args.steps:
        params = method_params("integrated_gradients", {"n_steps": steps})
        unit = statistics.median(
            fwd_bwd_seconds(model, reference, targets[:BATCH_SIZE]) / len(reference)
            for _ in range(args.repeats)
        )
        seconds, (_, check) = timed(
            compute_maps_and_completeness, model, clean, targets,
            "integrated_gradients", params, BATCH_SIZE,
        )  # fmt: skip
        _, perturbed_check = compute_maps_and_completeness(
            model, perturbed, perturbed_targets, "integrated_gradients", params, BATCH_SIZE
        )
        results[steps] = {
            "clean": check.error,
            "perturbed": perturbed_check.error,
            "delta": np.abs(np.concatenate([check.delta, perturbed_check.delta])),
            "ratio": seconds / len(clean) / unit,
            "ms": 1000 * seconds / len(clean),
            "unit_ms": 1000 * unit,
        }
        print(f"  {steps} steps: {row(steps, [results[steps]])}", flush=True)
    # the completeness check's own cost: the same call without it
    params = method_params("integrated_gradients", {"n_steps": args.steps[0]})
    without, _ = timed(
        compute_maps, model, clean, targets, "integrated_gradients", params, BATCH_SIZE
    )
    with_check, _ = timed(
        compute_maps_and_completeness, model, clean, targets, "integrated_gradients", params,
        BATCH_SIZE,
    )  # fmt: skip
    print(
        f"  completeness check at {args.steps[0]} steps: {without:.2f} s without, "
        f"{with_check:.2f} s with ({100 * (with_check / without - 1):+.0f} %)",
        flush=True,
    )
    return results


def row(steps: int, parts: list[dict]) -> str:
    """One table row pooled over folds (errors pooled, cost ratios' median)."""
    clean = np.concatenate([part["clean"] for part in parts])
    perturbed = np.concatenate([part["perturbed"] for part in parts])
    delta = np.concatenate([part["delta"] for part in parts])
    ratio = statistics.median(part["ratio"] for part in parts)
    ms = statistics.median(part["ms"] for part in parts)
    unit_ms = statistics.median(part["unit_ms"] for part in parts)
    return (
        f"| {steps} | {summary(clean)} | {summary(perturbed)} | "
        f"{summary(np.concatenate([clean, perturbed]))} | {np.median(delta):.3f} | "
        f"{delta.max():.3f} | {ratio:.1f} | {ratio / steps:.2f} | {ms:.0f} | {unit_ms:.1f} | "
        f"{STUDY_MAPS * ratio * unit_ms / 1000 / 60:.1f} |"
    )


HEADER = (
    "| n_steps | clean: median % | max % | perturbed: median % | max % | all: median % | "
    "max % | median \\|delta\\| | max \\|delta\\| | units of fwd+bwd per image | "
    "units per step | ms per image | fwd+bwd ms per image | default study IG core-min (est.) |\n"
    + "|---" * 14
    + "|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, nargs="+", help="trained resnet18 weights, one per --folds entry"
    )
    parser.add_argument("--save-model", type=Path, help="save fold k's weights as PATH.k.pt")
    parser.add_argument("--folds", type=int, nargs="+", default=[FOLD])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--n-images", type=int, default=24)
    parser.add_argument("--n-perturbed", type=int, default=8)
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--repeats", type=int, default=3, help="fwd+bwd reference passes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if args.model is not None and len(args.model) != len(args.folds):
        parser.error(f"--model needs one file per fold ({args.folds}), got {len(args.model)}.")
    torch.set_num_threads(args.threads)
    arrays = load_npz(args.data, "breastmnist")
    print(
        f"resnet18 28 px, {args.threads} threads, {args.n_images} clean test images and "
        f"{args.n_perturbed} of them x {', '.join(PERTURBATIONS)} x severities "
        f"{args.severities}, batch {BATCH_SIZE}, folds {args.folds}",
        flush=True,
    )
    per_fold = []
    for index, fold in enumerate(args.folds):
        if args.model is not None:
            model = load_model(args.model[index], "resnet18", 1, 2, 28)
        else:
            model = train_default_model(arrays, fold, args.epochs)
            if args.save_model is not None:
                save_weights(model, args.save_model.with_suffix(f".{fold}.pt"))
        per_fold.append(measure(model.eval(), arrays, args))
    print(f"\nfolds {args.folds} pooled:\n{HEADER}")
    for steps in args.steps:
        print(row(steps, [results[steps] for results in per_fold]))


if __name__ == "__main__":
    main()
