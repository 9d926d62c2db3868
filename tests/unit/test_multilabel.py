"""Multi-label path (ChestMNIST-style): sigmoid outputs, BCE training, per-label and macro
metrics, top-k attribution targets and the clean/perturbed join on the target label.

Data are the seeded synthetic multi-label set (three lesion kinds, each present or not);
models are real ResNet-18s trained here on CPU. Metric values are checked against
scikit-learn and MedMNIST's own ``Evaluator`` functions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import roc_auc_score
from torch import nn

from saliency_robustness.analysis.detection import misclassification_detection
from saliency_robustness.analysis.saliency_change import saliency_change
from saliency_robustness.attribution.maps import compute_maps
from saliency_robustness.attribution.table import (
    attribute_clean,
    attribute_perturbed,
    saliency_schema,
)
from saliency_robustness.config_checks import top_k_target_errors
from saliency_robustness.datasets.info import is_multi_label
from saliency_robustness.datasets.synthetic import KINDS, make_synthetic
from saliency_robustness.evaluation import (
    METRIC_NAMES,
    classification_metrics,
    evaluate_model,
    metric_rows,
    per_label_metrics,
    predict_proba,
)
from saliency_robustness.models.tensors import images_to_tensor
from saliency_robustness.tables import maps_from_table, with_clean_rows
from saliency_robustness.training import TrainSettings, train_classifier

KEYS = {"dataset": "synthetic_ml", "arch": "resnet18", "fold": 0}
N_LABELS = len(KINDS)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return make_synthetic({"train": 64, "val": 32, "test": 16}, size=28, task="multi-label")


@pytest.fixture(scope="module")
def frozen(data):
    """Trained with lr 0: the weights stay at their seeded initialisation, so the recorded
    training loss can be recomputed from the returned model."""
    settings = TrainSettings(epochs=1, batch_size=32, lr=0.0, seed=3)
    train = (data["train_images"], data["train_labels"])
    val = (data["val_images"], data["val_labels"])
    return train_classifier(
        "resnet18", train, val, N_LABELS, settings, torch.device("cpu"), multi_label=True
    )


@pytest.fixture(scope="module")
def trained(data):
    settings = TrainSettings(epochs=2, batch_size=32, seed=0)
    train = (data["train_images"], data["train_labels"])
    val = (data["val_images"], data["val_labels"])
    return train_classifier(
        "resnet18", train, val, N_LABELS, settings, torch.device("cpu"), multi_label=True
    )


def test_tasks_that_are_multi_label():
    assert is_multi_label("multi-label, binary-class")  # ChestMNIST in medmnist.INFO
    assert is_multi_label("multi-label")  # synthetic generator
    for task in ("binary-class", "multi-class", "ordinal-regression"):
        assert not is_multi_label(task)


# --- metrics on known values --------------------------------------------------------------

LABELS = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 1, 0]])
PROBS = np.array(
    [
        [0.9, 0.2, 0.7],
        [0.4, 0.1, 0.5],  # 0.5 exactly: not above the threshold, so predicted absent
        [0.6, 0.8, 0.3],
        [0.7, 0.6, 0.9],
        [0.3, 0.4, 0.2],
        [0.2, 0.3, 0.6],
    ]
)


def test_per_label_and_macro_auc_match_sklearn_and_medmnist():
    table = per_label_metrics(LABELS, PROBS)
    expected = roc_auc_score(LABELS, PROBS, average=None)
    np.testing.assert_allclose(table["auc"], expected)
    # hand check of label 0: positives 0.9, 0.6, 0.3 vs negatives 0.4, 0.7, 0.2 -> 6 of 9 pairs
    assert table["auc"].iloc[0] == pytest.approx(6 / 9)
    metrics = classification_metrics(LABELS, PROBS, multi_label=True)
    assert metrics["auc"] == pytest.approx(roc_auc_score(LABELS, PROBS, average="macro"))
    assert metrics["auc"] == pytest.approx(getAUC(LABELS, PROBS, "multi-label, binary-class"))


def test_acc_is_medmnists_label_wise_accuracy_at_threshold_one_half():
    metrics = classification_metrics(LABELS, PROBS, multi_label=True)
    predicted = PROBS > 0.5
    label_wise = (predicted == LABELS.astype(bool)).mean()
    exact_match = (predicted == LABELS.astype(bool)).all(axis=1).mean()
    assert metrics["acc"] == pytest.approx(label_wise)
    assert metrics["acc"] == pytest.approx(getACC(LABELS, PROBS, "multi-label, binary-class"))
    assert metrics["acc"] != pytest.approx(exact_match)  # the example tells the two apart
    # the 0.5 in row 1 / label 2 counts as absent: true label 1 there, so it is a miss
    assert per_label_metrics(LABELS, PROBS)["recall"].iloc[2] == pytest.approx(2 / 3)


def test_labels_with_one_value_are_left_out_of_the_macro_auc():
    labels = LABELS.copy()
    labels[:, 1] = 0  # label 1 absent everywhere: its AUC is undefined
    table = per_label_metrics(labels, PROBS)
    assert np.isnan(table["auc"].iloc[1]) and np.isnan(table["balanced_acc"].iloc[1])
    metrics = classification_metrics(labels, PROBS, multi_label=True)
    assert metrics["auc"] == pytest.approx(table["auc"].iloc[[0, 2]].mean())
    assert metrics["acc"] == pytest.approx(((PROBS > 0.5) == labels).mean())


def test_multi_label_needs_a_0_1_label_matrix():
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        classification_metrics(LABELS[:, :1], PROBS, multi_label=True)
    with pytest.raises(ValueError, match="0 or 1"):
        classification_metrics(LABELS * 2, PROBS, multi_label=True)


def test_metric_rows_aggregate_first_then_one_row_per_label():
    rows = pd.DataFrame(metric_rows(LABELS, PROBS, True, list(KINDS)))
    assert rows["label"].tolist() == ["all", *KINDS]
    assert list(rows.columns) == ["label", *METRIC_NAMES]
    for name in METRIC_NAMES:
        assert rows[name].iloc[0] == pytest.approx(rows[name].iloc[1:].mean())
    single = metric_rows(np.array([0, 1, 1, 0]), np.array([[0.8, 0.2], [0.3, 0.7]] * 2))
    assert [row["label"] for row in single] == ["all"]


# --- training -------------------------------------------------------------------------------


def test_training_loss_is_bce_on_logits(frozen, data):
    """With lr 0 the recorded loss must equal BCEWithLogits over the same shuffled batches."""
    model = frozen.model.train()  # batch statistics, as during the epoch
    x = images_to_tensor(data["train_images"])
    y = torch.as_tensor(data["train_labels"], dtype=torch.float32)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        total = sum(
            nn.functional.binary_cross_entropy_with_logits(model(x[idx]), y[idx]).item() * len(idx)
            for idx in order.split(32)
        )
    frozen.model.eval()
    assert frozen.history["train_loss"].iloc[0] == pytest.approx(total / len(x), rel=1e-4)


def test_multi_label_training_keeps_the_best_macro_auc_epoch(trained, data):
    history = trained.history
    assert len(history) == 2
    assert np.isfinite(history[["train_loss", "val_loss", "val_acc", "val_auc"]]).all().all()
    assert history["train_loss"].iloc[1] < history["train_loss"].iloc[0]
    assert trained.best_val["auc"] == pytest.approx(history["val_auc"].max())
    probs = predict_proba(trained.model, data["val_images"], 16, multi_label=True)
    assert trained.best_val["auc"] == pytest.approx(
        roc_auc_score(data["val_labels"], probs, average="macro"), abs=1e-6
    )


def test_predict_proba_gives_one_sigmoid_per_label(trained, data):
    images = data["test_images"][:8]
    probs = predict_proba(trained.model, images, 3, multi_label=True)
    with torch.no_grad():
        expected = torch.sigmoid(trained.model.eval()(images_to_tensor(images))).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert probs.shape == (8, N_LABELS)
    assert not np.allclose(probs.sum(axis=1), 1.0)  # independent labels, not a softmax


def test_training_rejects_single_column_labels_for_multi_label(data):
    train = (data["train_images"][:8], data["train_labels"][:8, :1])
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        train_classifier(
            "resnet18", train, train, N_LABELS, TrainSettings(epochs=1), CPU, multi_label=True
        )


# --- evaluation tables ----------------------------------------------------------------------


def test_evaluate_model_multi_label_tables(trained, data):
    clean, labels = data["test_images"], data["test_labels"]
    perturbed = {"contrast": ([2], np.stack([clean // 2]))}
    predictions, metrics = evaluate_model(
        trained.model, clean, labels, perturbed, 8, "cpu", multi_label=True,
        label_names=list(KINDS),
    )  # fmt: skip
    assert len(predictions) == 16 * 2
    assert {"labels", "predicted_labels", "probabilities"} <= set(predictions.columns)
    assert "label" not in predictions.columns  # a vector per image, not one class
    clean_rows = predictions[predictions["severity"] == 0]
    probs = predict_proba(trained.model, clean, 8, multi_label=True)
    np.testing.assert_array_equal(np.stack(clean_rows["labels"]), labels)
    np.testing.assert_array_equal(np.stack(clean_rows["predicted_labels"]), probs > 0.5)
    assert metrics["label"].tolist() == ["all", *KINDS] * 2
    clean_all = metrics[(metrics["severity"] == 0) & (metrics["label"] == "all")].iloc[0]
    assert clean_all["auc"] == pytest.approx(roc_auc_score(labels, probs, average="macro"))
    ring = metrics[(metrics["severity"] == 0) & (metrics["label"] == "ring")].iloc[0]
    assert ring["auc"] == pytest.approx(roc_auc_score(labels[:, 1], probs[:, 1]))


# --- attribution: top-k targets -------------------------------------------------------------


@pytest.fixture(scope="module")
def attributed(trained, data):
    clean, labels = data["test_images"][:5], data["test_labels"][:5]
    perturbed = {"contrast": ([1, 4], np.stack([clean // 2, clean // 4]))}
    clean_table = attribute_clean(
        trained.model, clean, labels, "saliency", {}, KEYS, batch_size=4, multi_label=True,
        top_k=2,
    )  # fmt: skip
    perturbed_table = attribute_perturbed(
        trained.model, clean_table, perturbed, "saliency", {}, batch_size=4, multi_label=True
    )
    return (clean_table, perturbed_table), clean, labels, perturbed


def test_top_k_rows_targets_and_probabilities(attributed, trained):
    tables, clean, labels, perturbed = attributed
    for table in tables:
        assert table.schema.equals(saliency_schema(28, 28, N_LABELS, completeness=True))
    frame = pd.concat([table.to_pandas() for table in tables], ignore_index=True)
    assert len(frame) == 5 * 2 * 3  # images x targets x (clean + 2 severities)
    clean_probs = predict_proba(trained.model, clean, 8, multi_label=True)
    top2 = np.argsort(-clean_probs, axis=1, kind="stable")[:, :2]
    for severity, group in frame.groupby("severity"):
        assert group["image_index"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        np.testing.assert_array_equal(group["target"].to_numpy().reshape(5, 2), top2)
        images = clean if severity == 0 else perturbed["contrast"][1][[1, 4].index(severity)]
        probs = predict_proba(trained.model, images, 8, multi_label=True)
        rows, targets = group["image_index"].to_numpy(), group["target"].to_numpy()
        np.testing.assert_allclose(np.stack(group["probabilities"]), probs[rows], atol=1e-6)
        np.testing.assert_allclose(group["target_probability"], probs[rows, targets], atol=1e-6)
        np.testing.assert_array_equal(group["label"], labels[rows, targets])
        np.testing.assert_array_equal(group["predicted"], probs[rows, targets] > 0.5)
        maps = maps_from_table(group)
        expected = compute_maps(trained.model, images[rows], targets, "saliency", {}, 4)
        np.testing.assert_allclose(maps, expected, atol=1e-5)
    first = maps_from_table(frame[frame["severity"] == 0])
    assert not np.allclose(first[0], first[1])  # two labels of one image: two maps


def test_target_label_ranks_present_labels_first(trained, data):
    clean, labels = data["test_images"][:6], data["test_labels"][:6]
    table = attribute_clean(
        trained.model, clean, labels, "saliency", {}, KEYS, target="label", batch_size=6,
        multi_label=True, top_k=1,
    ).to_pandas()  # fmt: skip
    probs = predict_proba(trained.model, clean, 8, multi_label=True)
    for i, target in zip(table["image_index"], table["target"], strict=True):
        present = np.flatnonzero(labels[i])
        candidates = present if len(present) else np.arange(N_LABELS)
        assert target == candidates[np.argmax(probs[i, candidates])]
    assert (table["label"] == labels.any(axis=1)).all()


def test_top_k_larger_than_the_label_count_is_refused(trained, data):
    with pytest.raises(ValueError, match="attribute.top_k_targets is 4 .* 3 labels"):
        attribute_clean(
            trained.model, data["test_images"][:2], data["test_labels"][:2], "saliency", {},
            KEYS, multi_label=True, top_k=4,
        )  # fmt: skip


def test_single_label_ignores_top_k(trained, data):
    """top_k only applies to multi-label data: a single-label table keeps one row per image."""
    labels = data["test_labels"][:3, :1]  # a 0/1 class column, softmax over the 3 outputs
    table = attribute_clean(
        trained.model, data["test_images"][:3], labels, "saliency", {}, KEYS, top_k=3
    )
    assert table.num_rows == 3


# --- saliency change joins on the target ----------------------------------------------------


def test_saliency_change_joins_on_the_target(trained, data):
    """An unchanged 'perturbation' must give zero change for every (image, target); a join that
    ignored the target would compare one label's map with another's."""
    clean, labels = data["test_images"][:4], data["test_labels"][:4]
    perturbed = {"identity": ([1], np.stack([clean])), "contrast": ([3], np.stack([clean // 3]))}
    clean_table = attribute_clean(
        trained.model, clean, labels, "saliency", {}, KEYS, batch_size=4, multi_label=True,
        top_k=3,
    )  # fmt: skip
    perturbed_table = attribute_perturbed(
        trained.model, clean_table, perturbed, "saliency", {}, batch_size=4, multi_label=True
    )
    frame = with_clean_rows(
        pd.concat([clean_table.to_pandas(), perturbed_table.to_pandas()], ignore_index=True)
    )
    change = saliency_change(frame, top_k_percent=10, multi_label=True)
    assert len(change) == 2 * 4 * 3
    same = change[change["perturbation"] == "identity"]
    np.testing.assert_allclose(same["rmse"], 0.0, atol=1e-6)
    np.testing.assert_allclose(same["ssim"], 1.0, atol=1e-6)
    assert not same["flipped"].any()
    np.testing.assert_allclose(same["confidence_drop"], 0.0, atol=1e-6)
    dim = change[change["perturbation"] == "contrast"].reset_index(drop=True)
    perturbed_rows = frame[frame["severity"] == 3].reset_index(drop=True)
    clean_rows = frame[(frame["severity"] == 0) & (frame["perturbation"] == "contrast")]
    np.testing.assert_array_equal(dim["target"], perturbed_rows["target"])
    np.testing.assert_array_equal(dim["wrong"], perturbed_rows["predicted"] != dim["label"])
    np.testing.assert_array_equal(dim["clean_predicted"], clean_rows["predicted"])
    np.testing.assert_allclose(
        dim["confidence_drop"],
        clean_rows["target_probability"].to_numpy() - perturbed_rows["target_probability"],
        atol=1e-6,
    )
    detection = misclassification_detection(change)
    assert set(detection["perturbation"]) == {"identity", "contrast", "all"}


def test_saliency_change_names_a_perturbed_row_without_clean_row(attributed):
    frame = with_clean_rows(pd.concat([table.to_pandas() for table in attributed[0]]))
    broken = frame[~((frame["severity"] == 0) & (frame["image_index"] == 2))]
    with pytest.raises(ValueError, match="no clean row"):
        saliency_change(broken, top_k_percent=10)


# --- config-time check -------------------------------------------------------------------


def test_config_check_refuses_more_targets_than_labels():
    config = {
        "data": {
            "datasets": ["chestmnist", "synml", "breastmnist"],
            "custom": {"synml": {"source": "synthetic", "task": "multi-label"}},
        },
        "attribute": {"top_k_targets": 4},
    }
    errors = top_k_target_errors(config)
    assert errors == [
        "attribute.top_k_targets: 4 targets per image, but synml has only 3 labels; set it "
        "between 1 and 3."
    ]  # ChestMNIST has 14 labels; BreastMNIST is single-label (k is ignored there)
    config["attribute"]["top_k_targets"] = 15
    assert [e.split(",")[1].split(";")[0] for e in top_k_target_errors(config)] == [
        " but chestmnist has only 14 labels",
        " but synml has only 3 labels",
    ]
