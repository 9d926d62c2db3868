"""Fixtures of the attribution tests: real BreastMNIST test images with the trained
ResNet-18's predictions, a small set of perturbed versions, and method parameters that
keep every method fast."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from saliency_robustness.attribution.registry import method_params
from saliency_robustness.evaluation import predict_proba
from saliency_robustness.models.registry import get_architecture

CAM_LAYER = get_architecture("resnet18").cam_layer
# Few steps, samples and windows where a test is about shapes, batching and seeds, not
# accuracy; chunk sizes below the sample counts so that the chunking runs too.
FAST = {
    "integrated_gradients": {"n_steps": 4},
    "gradient_shap": {"n_samples": 4, "internal_batch_size": 3},
    "smoothgrad": {"nt_samples": 4, "internal_batch_size": 3},
    "deeplift": {"internal_batch_size": 3},
    "occlusion": {"window": 14, "stride": 7, "perturbations_per_eval": 4},
    "lime": {"n_samples": 8, "perturbations_per_eval": 4},
    "kernel_shap": {"n_samples": 8, "perturbations_per_eval": 4},
    # One forward pass per channel of the CAM layer and image: layer1 has the fewest (64).
    "scorecam": {"cam_layer": "layer1", "batch_size": 64},
    "ablationcam": {"cam_layer": "layer1", "batch_size": 64},
    "shap_partition": {"max_evals": 64},
    "shap_gradient": {"n_samples": 4, "batch_size": 3},
    "shap_kernel": {"n_samples": 64, "batch_size": 16},
}


@pytest.fixture(scope="session")
def fast_params() -> Callable[[str], dict]:
    """A method's parameters with ``FAST``'s overrides, CAM methods at the ResNet's layer."""
    return lambda name: method_params(name, FAST.get(name), CAM_LAYER)


@pytest.fixture(scope="module")
def images(clean_test_images) -> np.ndarray:
    return clean_test_images[:8]


@pytest.fixture(scope="module")
def predicted(model, images) -> np.ndarray:
    return predict_proba(model, images).argmax(axis=1)


@pytest.fixture(scope="module")
def small_set(clean_test_images, breast):
    """Six clean images, their labels, and perturbed versions as the perturb rule gives
    them: name -> (severities, images (S, N, H, W))."""
    clean = clean_test_images[:6]
    labels = breast["test_labels"][:6]
    perturbed = {
        "gaussian_noise": ([1, 5], np.stack([255 - clean, clean // 4])),
        "contrast": ([3], np.stack([clean // 2 + 64])),
    }
    return clean, labels, perturbed
