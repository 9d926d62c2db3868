"""Cost of the statistics step (intervals, tests, trends, η², findings inputs) at the paper
preset's scale, as a ratio to the attribution step's job-seconds. Target (issue 19): <= 5 %.

Why a ratio measured in one process: the machine is shared and its speed changes from
minute to minute; both sides are timed here, interleaved.

* Attribution side: the default methods (config/config.yaml attribute.methods and their
  params) on ``--attributed`` BreastMNIST test images with an untrained CIFAR-style ResNet-18
  (cost does not depend on the weights), scaled linearly to the paper preset's maps per
  (model, method): max_images x (1 + perturbations x severities); times folds x methods.
* Statistics side: the summarise rule's statistics (summarise_change, per-fold detection,
  severity_trends, variance_decomposition) and detection_by_family on a change table of the
  paper preset's size (folds x methods x perturbations x severities x images), with
  realistic columns drawn at random (costs depend on sizes, not on values).

Run from the repository root::

    PYTHONPATH=src .venv/bin/python bench/statistics_cost.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "medmnist" / "breastmnist.npz"


def paper_scale() -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    paper = yaml.safe_load((REPO / "config" / "presets" / "paper.yaml").read_text())
    methods = paper.get("attribute", {}).get("methods", config["attribute"]["methods"])
    params = {**config["attribute"]["params"], **paper.get("attribute", {}).get("params", {})}
    return {
        "folds": paper["folds"]["k"],
        "images": paper["attribute"]["max_images"],
        "methods": methods,
        "params": params,
        "perturbations": config["perturb"]["perturbations"],
        "severities": config["perturb"]["severities"],
        "resamples": config["metrics"]["bootstrap_resamples"],
        "cv_folds": config["analysis"]["detection"]["cv_folds"],
    }


def attribution_seconds_per_map(scale: dict, n_images: int) -> dict[str, float]:
    import torch

    from saliency_robustness.attribution.cam_layer import default_cam_layer
    from saliency_robustness.attribution.maps import compute_maps
    from saliency_robustness.attribution.registry import method_params
    from saliency_robustness.models.build import build_model

    with np.load(DATA) as data:
        images, labels = data["test_images"][:n_images], data["test_labels"][:n_images, 0]
    torch.manual_seed(0)
    model = build_model("resnet18", 1, 2, 28).eval()
    cam_layer = default_cam_layer(model, "resnet18", 28)
    seconds = {}
    for method in scale["methods"]:
        params = method_params(method, scale["params"].get(method, {}), cam_layer)
        compute_maps(model, images[:2], labels[:2], method, params, batch_size=32, seed=0)
        start = time.perf_counter()
        compute_maps(model, images, labels, method, params, batch_size=32, seed=0)
        seconds[method] = (time.perf_counter() - start) / n_images
    return seconds


def change_table(scale: dict, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    keys = pd.MultiIndex.from_product(
        [range(scale["folds"]), scale["methods"], scale["perturbations"], scale["severities"],
         range(scale["images"])],
        names=["fold", "method", "perturbation", "severity", "image_index"],
    ).to_frame(index=False)  # fmt: skip
    n = len(keys)
    wrong = rng.random(n) < 0.3
    return keys.assign(
        dataset="breastmnist",
        arch="resnet18",
        target=0,
        wrong=wrong,
        clean_wrong=wrong & (rng.random(n) < 0.4),
        induced=wrong & (rng.random(n) < 0.6),
        flipped=rng.random(n) < 0.2,
        collapsed=rng.random(n) < 0.05,
        is_constant=rng.random(n) < 0.05,
        confidence_drop=rng.normal(size=n),
        msp=rng.uniform(0.5, 1, n),
        rmse=rng.random(n),
        ssim=rng.random(n),
        spearman=rng.uniform(-1, 1, n),
        topk_iou=rng.random(n),
        map_entropy=rng.random(n),
        map_gini=rng.random(n),
    )


def statistics_seconds(change: pd.DataFrame, scale: dict) -> dict[str, float]:
    from saliency_robustness.analysis.detection import (
        detection_by_family,
        misclassification_detection,
    )
    from saliency_robustness.analysis.saliency_change import (
        severity_trends,
        summarise_change,
        variance_decomposition,
    )

    families = {name: name for name in scale["perturbations"]}
    bootstrap = {"n_resamples": scale["resamples"], "seed": 0}
    steps = {
        "summarise_change": lambda: summarise_change(change, **bootstrap),
        "misclassification_detection": lambda: misclassification_detection(change),
        "severity_trends": lambda: severity_trends(change, **bootstrap),
        "variance_decomposition": lambda: variance_decomposition(change),
        "detection_by_family": lambda: detection_by_family(
            change, families, scale["cv_folds"], **bootstrap
        ),
    }
    seconds = {}
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        seconds[name] = time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attributed", type=int, default=32, help="images attributed per method")
    args = parser.parse_args()
    scale = paper_scale()
    maps_per_model_method = scale["images"] * (
        1 + len(scale["perturbations"]) * len(scale["severities"])
    )
    per_map = attribution_seconds_per_map(scale, args.attributed)
    attribution = sum(per_map.values()) * maps_per_model_method * scale["folds"]
    change = change_table(scale)
    stats = statistics_seconds(change, scale)
    total = sum(stats.values())
    print(f"paper scale per dataset: {scale['folds']} folds x {len(scale['methods'])} methods x "
          f"{maps_per_model_method} maps; change table {len(change)} rows; "
          f"{scale['resamples']} bootstrap resamples")  # fmt: skip
    for method, seconds in per_map.items():
        print(f"  attribution {method:<22} {seconds * 1000:8.2f} ms per map")
    print(f"attribution job-seconds (extrapolated): {attribution:9.1f}")
    for name, seconds in stats.items():
        print(f"  statistics {name:<28} {seconds:8.2f} s")
    print(f"statistics seconds:                     {total:9.1f}")
    print(f"ratio statistics / attribution: {total / attribution:.2%} (target <= 5 %)")


if __name__ == "__main__":
    main()
