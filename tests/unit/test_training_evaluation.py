"""Seeded training (reproducible on CPU, milestones, mixed precision) and classification
metrics and evaluation of a trained model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from saliency_robustness.evaluation import (
    METRIC_NAMES,
    classification_metrics,
    evaluate_model,
    predict_proba,
)
from saliency_robustness.training import TrainSettings, train_classifier

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "val_auc", "lr", "seconds"]


# --- training ---------------------------------------------------------------------------------


def test_trained_fixture_history(trained):
    history = trained.history
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == [1]
    assert trained.best_epoch == 1
    assert np.isfinite(history[["train_loss", "val_loss", "val_acc"]].to_numpy()).all()
    assert history["lr"].tolist() == [1e-3]
    assert set(trained.best_val) == set(METRIC_NAMES)
    assert trained.best_val["acc"] == pytest.approx(history["val_acc"].iloc[0])
    assert not trained.model.training


def _small_run(breast, seed: int, mixed_precision: bool = False):
    train = (breast["train_images"][:16], breast["train_labels"][:16])
    val = (breast["val_images"][:8], breast["val_labels"][:8])
    settings = TrainSettings(
        epochs=2, batch_size=8, milestones=(1,), gamma=0.5, seed=seed,
        mixed_precision=mixed_precision,
    )  # fmt: skip
    return train_classifier("resnet18", train, val, 2, settings, torch.device("cpu"))


def test_train_settings_from_the_validated_default_config():
    """The train and train_shuffled_labels scripts build their settings from config.train."""
    import yaml
    from snakemake.utils import validate

    repo = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    validate(config, str(repo / "workflow" / "schemas" / "config.schema.yaml"))
    train = {**config["train"], "weights_files": {"resnet18": "/weights/r18.pth"}}
    settings = TrainSettings.from_config(train, "resnet18", seed=7)
    assert settings.epochs == config["train"]["epochs"]
    assert settings.milestones == tuple(config["train"]["milestones"])
    assert (settings.seed, settings.weights_file) == (7, "/weights/r18.pth")
    assert TrainSettings.from_config(train, "mobilenet_v2", seed=7).weights_file is None


def test_training_with_the_same_seed_is_reproducible_on_cpu(breast):
    first, second = _small_run(breast, seed=3), _small_run(breast, seed=3)
    deterministic = [c for c in HISTORY_COLUMNS if c != "seconds"]
    pd.testing.assert_frame_equal(first.history[deterministic], second.history[deterministic])
    assert first.best_epoch == second.best_epoch
    for key, value in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[key], value), key
    # the learning-rate milestone applies after epoch 1
    assert first.history["lr"].tolist() == pytest.approx([1e-3, 5e-4])
    assert first.history["epoch"].tolist() == [1, 2]


def test_mixed_precision_on_cpu_warns_and_trains_in_float32(breast, caplog):
    caplog.set_level("WARNING", logger="saliency_robustness.training")
    plain, mixed = _small_run(breast, seed=3), _small_run(breast, seed=3, mixed_precision=True)
    assert "mixed_precision applies to CUDA only" in caplog.text
    for key, value in plain.model.state_dict().items():
        assert torch.equal(mixed.model.state_dict()[key], value), key


def test_training_with_another_seed_differs(breast):
    train = (breast["train_images"][:16], breast["train_labels"][:16])
    val = (breast["val_images"][:8], breast["val_labels"][:8])
    weights = []
    for seed in (3, 4):
        settings = TrainSettings(epochs=1, batch_size=8, seed=seed)
        result = train_classifier("resnet18", train, val, 2, settings, torch.device("cpu"))
        weights.append(result.model.state_dict()["conv1.weight"])
    assert not torch.equal(*weights)


def test_training_rejects_empty_sets(breast):
    empty = (breast["val_images"][:0], breast["val_labels"][:0])
    train = (breast["train_images"][:8], breast["train_labels"][:8])
    with pytest.raises(ValueError, match="must not be empty"):
        train_classifier("resnet18", train, empty, 2, TrainSettings(epochs=1), "cpu")


# --- evaluation -------------------------------------------------------------------------------


def test_classification_metrics_on_a_hand_made_binary_example():
    labels = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    metrics = classification_metrics(labels, np.stack([1 - p1, p1], axis=1))
    # predicted [0, 1, 0, 1]: one TP, one FP, one FN, one TN; 3 of 4 pairs ranked right
    assert metrics == pytest.approx(
        {"acc": 0.5, "balanced_acc": 0.5, "auc": 0.75, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    )


def test_classification_metrics_binary_unbalanced():
    labels = np.array([[0], [0], [0], [1]])  # MedMNIST shape (N, 1)
    p1 = np.array([0.2, 0.3, 0.7, 0.8])
    metrics = classification_metrics(labels, np.stack([1 - p1, p1], axis=1))
    assert metrics["acc"] == pytest.approx(0.75)
    assert metrics["balanced_acc"] == pytest.approx((2 / 3 + 1) / 2)
    assert metrics["auc"] == pytest.approx(1.0)
    assert metrics["precision"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(1.0)
    assert metrics["f1"] == pytest.approx(2 / 3)


def test_perfect_predictions_give_accuracy_and_auc_one():
    labels = np.array([0, 1, 2, 1, 0, 2])
    probabilities = np.eye(3)[labels] * 0.7 + 0.1
    metrics = classification_metrics(labels, probabilities)
    assert set(metrics) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert metrics[name] == pytest.approx(1.0), name


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_auc_is_nan_when_one_class_is_present():
    labels = np.array([1, 1, 1])
    p1 = np.array([0.2, 0.6, 0.9])
    metrics = classification_metrics(labels, np.stack([1 - p1, p1], axis=1))
    assert math.isnan(metrics["auc"])
    assert metrics["acc"] == pytest.approx(2 / 3)


def test_predict_proba_rows_sum_to_one_and_do_not_depend_on_batch_size(model, breast):
    images = breast["test_images"][:10]
    big = predict_proba(model, images, batch_size=10)
    small = predict_proba(model, images, batch_size=3)
    assert big.shape == (10, 2)
    np.testing.assert_allclose(big.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(big, small, atol=1e-5)


def test_evaluate_model_shapes_and_clean_rows_per_perturbation(model, breast):
    clean, labels = breast["test_images"][:12], breast["test_labels"][:12]
    perturbed = {
        "gaussian_noise": ([1, 3], np.stack([255 - clean, clean // 2])),
        "contrast": ([5], np.stack([clean // 3])),
    }
    predictions, metrics = evaluate_model(model, clean, labels, perturbed, 8, "cpu")
    assert len(predictions) == 12 * (3 + 2)
    assert len(metrics) == 3 + 2
    assert metrics[["perturbation", "severity"]].values.tolist() == [
        ["gaussian_noise", 0],
        ["gaussian_noise", 1],
        ["gaussian_noise", 3],
        ["contrast", 0],
        ["contrast", 5],
    ]
    assert set(METRIC_NAMES) <= set(metrics.columns)
    clean_probs = predict_proba(model, clean, 8)
    for name in perturbed:
        rows = predictions[(predictions["perturbation"] == name) & (predictions["severity"] == 0)]
        assert rows["image_index"].tolist() == list(range(12))
        np.testing.assert_array_equal(rows["label"], labels.reshape(-1))
        np.testing.assert_array_equal(rows["predicted"], clean_probs.argmax(axis=1))
        np.testing.assert_allclose(np.stack(rows["probabilities"]), clean_probs, atol=1e-6)
    clean_metrics = metrics[metrics["severity"] == 0].drop(columns="perturbation")
    assert clean_metrics.drop_duplicates().shape[0] == 1  # same clean values under each name
    expected = classification_metrics(labels, clean_probs)
    for name in METRIC_NAMES:
        assert clean_metrics[name].iloc[0] == pytest.approx(expected[name], nan_ok=True)
    noisy = predictions[(predictions["perturbation"] == "gaussian_noise")]
    noisy = noisy[noisy["severity"] == 1]
    np.testing.assert_allclose(
        np.stack(noisy["probabilities"]), predict_proba(model, 255 - clean, 8), atol=1e-6
    )


def test_evaluate_model_without_perturbations_reports_clean_as_none(model, breast):
    clean, labels = breast["test_images"][:6], breast["test_labels"][:6]
    predictions, metrics = evaluate_model(model, clean, labels, {}, 4, "cpu")
    assert predictions["perturbation"].unique().tolist() == ["none"]
    assert metrics[["perturbation", "severity"]].values.tolist() == [["none", 0]]
