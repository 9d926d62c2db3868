"""Cross-check of the faithfulness and sanity metrics against Quantus 0.6.0 (dev only).

Compared value by value on the same model, inputs and maps:

- deletion curve (``faithfulness.deletion_insertion_curves``) vs ``quantus.PixelFlipping``
  with ``features_in_step = H*W / steps`` and a black (-1) baseline: Quantus reports the
  points after each step (ours also holds point 0, the untouched image) and its AUC uses
  ``dx=1`` over those points, ours the removed fraction 0..1, so the curves are compared.
- cascading randomisation (``sanity.model_randomisation`` with ``granularity='layers'``) vs
  ``quantus.MPRT`` (``layer_order='top_down'``): same layer order and seeding, Spearman rank
  correlation of the maps after every layer.

Not compared, because the definitions differ: Quantus's FaithfulnessCorrelation (correlation
over random pixel subsets, not a curve), its MaxSensitivity/LocalLipschitzEstimate and
Infidelity (they draw their own noise; ours are captum's ``sensitivity_max`` and ``infidelity``
on a seeded generator) and its ROAD (which scores accuracy of the imputed image; ours is
pytorch-grad-cam's probability change).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saliency_robustness.analysis.faithfulness import deletion_insertion_curves
from saliency_robustness.analysis.map_similarity import normalise_maps, spearman
from saliency_robustness.analysis.sanity import model_randomisation, randomisation_order
from saliency_robustness.attribution.maps import compute_maps, input_maps
from saliency_robustness.models.tensors import images_to_tensor

quantus = pytest.importorskip("quantus")  # requirements-dev.txt pins it; not a runtime dependency


@pytest.fixture(scope="module")
def batch(model, clean_test_images):
    images = clean_test_images[:4]
    targets = np.ones(len(images), int)
    maps = normalise_maps(compute_maps(model, images, targets, "saliency", {}, 4))
    return images, targets, maps.astype(np.float32)


def test_deletion_curve_equals_quantus_pixel_flipping(model, batch):
    images, targets, maps = batch
    # a map without ties: pixel order is then unique (Quantus sorts unstably)
    maps = maps + np.random.default_rng(0).random(maps.shape).astype(np.float32) * 1e-4
    steps = 4
    inputs = images_to_tensor(images)
    ours, _ = deletion_insertion_curves(model, inputs, maps, targets, steps)
    metric = quantus.PixelFlipping(
        features_in_step=inputs[0, 0].numel() // steps,
        perturb_baseline=-1.0,
        normalise=False,
        abs=False,
        disable_warnings=True,
        display_progressbar=False,
    )
    theirs = metric(
        model=model,
        x_batch=inputs.numpy(),
        y_batch=targets,
        a_batch=maps[:, None],
        device="cpu",
        softmax=True,
        channel_first=True,
    )
    assert np.allclose(np.asarray(theirs), ours[:, 1:], atol=1e-5)


def test_cascading_randomisation_equals_quantus_mprt(model, batch):
    images, targets, _ = batch
    ours = model_randomisation(model, images, targets, "saliency", {}, granularity="layers")

    def explain(model, inputs, targets, **kwargs):
        x = torch.as_tensor(inputs).requires_grad_(True)
        maps = input_maps(model, x, torch.as_tensor(targets).long(), "saliency", {})
        return normalise_maps(maps)[:, None]

    original = normalise_maps(compute_maps(model, images, targets, "saliency", {}, 4))
    metric = quantus.MPRT(
        similarity_func=lambda a, b, batched=True: spearman(a, b),
        layer_order="top_down",
        seed=0,
        normalise=False,
        abs=False,
        disable_warnings=True,
        display_progressbar=False,
    )
    theirs = metric(
        model=model,
        x_batch=images_to_tensor(images).numpy(),
        y_batch=targets,
        a_batch=original[:, None].astype(np.float32),
        explain_func=explain,
        device="cpu",
        channel_first=True,
    )
    layers = randomisation_order(model, "layers")
    assert list(theirs)[1:] == layers
    for index, layer in enumerate(layers, start=1):
        mine = ours.loc[ours["stage_index"] == index, "spearman"].to_numpy()
        assert np.allclose(mine, theirs[layer], atol=1e-6), layer
