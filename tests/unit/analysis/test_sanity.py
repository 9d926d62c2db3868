"""Cascading model randomisation on the real briefly trained ResNet-18."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from saliency_robustness.analysis.sanity import (
    cascading_randomisation,
    data_randomisation,
    hog_similarity,
    model_randomisation,
    randomisation_order,
    shuffled_labels,
)
from saliency_robustness.analysis.sanity_summary import summarise_randomisation


def test_randomisation_order_is_output_side_first(model):
    assert randomisation_order(model) == [
        "fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"
    ]  # fmt: skip
    layers = randomisation_order(model, "layers")
    assert layers[0] == "fc" and layers[-1] == "conv1" and len(layers) > 7
    with pytest.raises(ValueError, match="granularity"):
        randomisation_order(model, "blocks")


def test_cascade_leaves_the_trained_model_alone(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    last = [net for _, net in cascading_randomisation(model, seed=0)][-1]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(last.fc.weight, model.fc.weight)
    assert not torch.equal(last.conv1.weight, model.conv1.weight)


def test_gradient_maps_change_under_randomisation_sobel_does_not(model, clean_test_images):
    images = clean_test_images[:6]
    targets = np.ones(len(images), int)
    frames = []
    for method in ("saliency", "sobel"):
        table = model_randomisation(model, images, targets, method, {}, seed=0)
        frames.append(table.assign(method=method))
        assert table["stage_index"].nunique() == 8
        first = table[table["stage_index"] == 0]
        assert np.allclose(first[["ssim", "spearman", "hog"]], 1.0)
    summary = summarise_randomisation(pd.concat(frames), pass_threshold=0.5)
    last = summary[summary["stage_index"] == 7].set_index(["method", "metric"])["mean"]
    # vanilla gradients of a fully randomised model look nothing like the trained model's
    assert last[("saliency", "spearman")] < 0.3 and last[("saliency", "ssim")] < 0.3
    # an edge detector of the image ignores the model: identical maps at every stage
    assert np.allclose(last.loc["sobel"], 1.0)
    passed = summary.groupby(["method", "metric"])["passed"].first()
    assert passed.loc["saliency"].all() and not passed.loc["sobel"].any()


def test_hog_similarity_and_shuffled_labels():
    maps = np.random.default_rng(0).random((2, 28, 28))
    assert np.allclose(hog_similarity(maps, maps), 1.0)
    assert np.isnan(hog_similarity(np.zeros((1, 28, 28)), maps[:1])).all()
    labels = np.array([0] * 30 + [1] * 10)
    shuffled = shuffled_labels(labels, seed=3)
    assert sorted(shuffled) == sorted(labels) and not np.array_equal(shuffled, labels)


def test_data_randomisation_against_a_model_trained_on_shuffled_labels(
    model, breast, clean_test_images
):
    from saliency_robustness.training import TrainSettings, train_classifier

    train_labels = breast["train_labels"][:128]
    shuffled = train_classifier(
        "resnet18",
        (breast["train_images"][:128], shuffled_labels(train_labels, seed=0)),
        (breast["val_images"][:32], shuffled_labels(breast["val_labels"][:32], seed=1)),
        2,
        TrainSettings(epochs=1, batch_size=64, seed=0),
        torch.device("cpu"),
    ).model.eval()
    images = clean_test_images[:4]
    targets = np.ones(4, int)
    table = data_randomisation(model, shuffled, images, targets, "sobel", {})
    assert table["stage"].tolist() == ["none"] * 4 + ["shuffled labels"] * 4
    assert np.allclose(table[["ssim", "spearman", "hog"]], 1.0)  # the control ignores the model
    gradients = data_randomisation(model, shuffled, images, targets, "saliency", {})
    assert (gradients.loc[gradients["stage_index"] == 1, "ssim"] < 1).all()
