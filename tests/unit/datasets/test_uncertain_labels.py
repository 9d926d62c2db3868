"""Uncertain labels of multi-label own data (CheXpert's -1): the CSV syntax, the npz storage,
soft targets in the BCE loss (seeded, resumable), metrics that leave uncertain entries and
absent labels out, and Grad-CAM / LIME for the top-3 labels of an own-data study.

The own data are the seeded synthetic lesion images written to PNG files with a CSV, five
labels read off each image (the three lesion kinds, "several", "clear") and a fixed pattern
of them marked uncertain; models are real ResNet-18s trained here on CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score
from snakemake.utils import validate
from torch import nn

import saliency_robustness.training as training
from saliency_robustness.attribution.maps import compute_maps
from saliency_robustness.attribution.table import attribute_clean, attribute_perturbed
from saliency_robustness.config_checks import config_errors
from saliency_robustness.datasets.custom import (
    build_custom_dataset,
    custom_dataset_errors,
    write_npz,
)
from saliency_robustness.datasets.folds import fold_split, make_folds, pooled_train_val
from saliency_robustness.datasets.labels import (
    UNCERTAIN,
    csv_has_uncertain_labels,
    parse_multi_label_cell,
    soft_targets,
)
from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.datasets.synthetic import KINDS, make_synthetic
from saliency_robustness.evaluation import (
    METRIC_NAMES,
    classification_metrics,
    metric_rows,
    per_label_metrics,
    predict_proba,
    prediction_rows,
)
from saliency_robustness.tables import maps_from_table
from saliency_robustness.training import (
    TrainSettings,
    checkpoint_path,
    train_classifier,
    training_fingerprint,
)

NAMES = [*KINDS, "several", "clear"]  # blob, ring, bar, >= 2 lesions, no lesion
N = {"train": 48, "val": 16, "test": 8}
CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[3]
KEYS = {"dataset": "chest", "arch": "resnet18", "fold": 0}


def _label_matrix(kinds: np.ndarray) -> np.ndarray:
    present = kinds.astype(int)
    several = (present.sum(axis=1) >= 2).astype(int)
    clear = (present.sum(axis=1) == 0).astype(int)
    return np.column_stack([present, several, clear])


def _uncertain_pattern(n: int, offset: int) -> np.ndarray:
    """Which entries the CSV marks uncertain: a fixed, irregular pattern (about 1 in 5)."""
    rows, columns = np.meshgrid(np.arange(n) + offset, np.arange(len(NAMES)), indexing="ij")
    return (3 * rows + 7 * columns) % 5 == 0


def _cell(values: np.ndarray, uncertain: np.ndarray) -> str:
    entries = [
        f"{name}:-1" if unsure else name
        for name, value, unsure in zip(NAMES, values, uncertain, strict=True)
        if unsure or value
    ]
    return ";".join(entries)


def _write_folder(root: Path, with_uncertain: bool) -> tuple[Path, dict[str, np.ndarray]]:
    """PNG images, CSV; returns the root and the expected label matrix per split (-1 kept)."""
    arrays = make_synthetic(N, size=28, seed=5, task="multi-label")
    (root / "images").mkdir(parents=True)
    rows, expected, offset = [], {}, 0
    for split, n in N.items():
        values = _label_matrix(arrays[f"{split}_labels"])
        uncertain = _uncertain_pattern(n, offset) & with_uncertain
        offset += n
        expected[split] = np.where(uncertain, UNCERTAIN, values)
        for i in range(n):
            path = f"images/{split}_{i:03d}.png"
            Image.fromarray(arrays[f"{split}_images"][i]).save(root / path)
            rows.append((path, _cell(values[i], uncertain[i]), split))
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(root / "labels.csv", index=False)
    return root, expected


def _spec(root: Path, **extra) -> dict:
    return {
        "source": "folder",
        "root": str(root),
        "csv": "labels.csv",
        "task": "multi-label",
        "labels": NAMES,
        **extra,
    }


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> tuple[dict, dict[str, np.ndarray], Path]:
    root, expected = _write_folder(tmp_path_factory.mktemp("own") / "chest", True)
    return build_custom_dataset(_spec(root), 28), expected, root


@pytest.fixture(scope="module")
def certain_only(tmp_path_factory) -> tuple[dict, dict[str, np.ndarray], Path]:
    root, expected = _write_folder(tmp_path_factory.mktemp("own_certain") / "chest", False)
    return build_custom_dataset(_spec(root), 28), expected, root


def _sets(arrays: dict, n_train: int = N["train"]) -> tuple[tuple, tuple]:
    return (
        (arrays["train_images"][:n_train], arrays["train_labels"][:n_train]),
        (arrays["val_images"], arrays["val_labels"]),
    )


# --- CSV syntax and storage --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("blob;ring:-1", [1, -1, 0, 0, 0]),
        ("", [0, 0, 0, 0, 0]),
        ("bar:1; clear:0 ;ring", [0, 1, 1, 0, 0]),
        ("several:-1;blob:-1;blob", "given twice with different values"),
        ("ring:2", "must be 1 (present), 0 (absent) or -1 (uncertain), not '2'"),
        ("-1", "value '-1' without a label name; write 'name:-1'"),
        ("edema:-1", "unknown label 'edema' in 'edema:-1'; valid labels: blob, ring"),
        ("edema", "unknown label 'edema'; valid labels"),
    ],
)
def test_multi_label_cell_syntax(cell: str, expected) -> None:
    parsed = parse_multi_label_cell(cell, NAMES)
    if isinstance(expected, str):
        assert isinstance(parsed, str) and expected in parsed, parsed
    else:
        assert parsed.dtype == np.int8
        np.testing.assert_array_equal(parsed, expected)


def test_npz_stores_uncertain_labels_as_int8_minus_one(own, tmp_path: Path) -> None:
    arrays, expected, root = own
    for split in N:
        labels = arrays[f"{split}_labels"]
        assert labels.dtype == np.int8 and labels.shape == (N[split], len(NAMES))
        np.testing.assert_array_equal(labels, expected[split])
    assert (arrays["train_labels"] == UNCERTAIN).sum() > 10  # the pattern marks plenty
    write_npz(arrays, tmp_path / "chest_28.npz")
    loaded = load_npz(tmp_path / "chest_28.npz")  # the MedMNIST reader keeps them
    assert loaded["train_labels"].dtype == np.int8
    np.testing.assert_array_equal(loaded["test_labels"], arrays["test_labels"])
    assert csv_has_uncertain_labels(root / "labels.csv")


def test_without_uncertain_labels_the_npz_is_unchanged_uint8(certain_only) -> None:
    arrays, expected, root = certain_only
    for split in N:
        assert arrays[f"{split}_labels"].dtype == np.uint8  # as before uncertain labels
        np.testing.assert_array_equal(arrays[f"{split}_labels"], expected[split])
    assert not csv_has_uncertain_labels(root / "labels.csv")


def test_single_label_csv_rejects_minus_one_naming_file_row_and_fix(tmp_path: Path) -> None:
    root = tmp_path / "single"
    root.mkdir()
    image = np.zeros((28, 28), np.uint8)
    rows = []
    for i, label in enumerate(["benign", "-1", "malignant", "malignant:-1"]):
        Image.fromarray(image).save(root / f"{i}.png")
        rows.append((f"{i}.png", label))
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(root / "labels.csv", index=False)
    spec = _spec(root, task="binary-class", labels=["benign", "malignant"])
    errors = custom_dataset_errors("mine", spec)
    csv = root / "labels.csv"
    assert len(errors) == 2, errors
    for line, cell in ((3, "-1"), (5, "malignant:-1")):
        (message,) = [e for e in errors if f"line {line} " in e]
        assert message.startswith(f"data.custom.mine: {csv}, line {line} (path '{line - 2}.png')")
        assert f"label '{cell}' marks an uncertain label (-1)" in message
        assert "only task multi-label supports" in message
        assert "give the row one of benign, malignant, or drop the row" in message
    spec["task"] = "multi-class"
    assert len(custom_dataset_errors("mine", spec)) == 2


def test_folds_stratify_uncertain_first_labels_with_the_absent_ones(own) -> None:
    arrays, _, _ = own
    _, labels, sources = pooled_train_val(arrays)
    assert (labels[:, 0] == UNCERTAIN).any()
    folds = make_folds(labels, sources, k=2, seed=0)
    assert set(folds["label"]) <= {0, 1}
    np.testing.assert_array_equal(folds["label"], np.maximum(labels[:, 0], 0))
    split = fold_split(arrays, folds, 0)
    assert (split["train"][1] == UNCERTAIN).any()  # -1 reaches training as -1


# --- soft targets ----------------------------------------------------------------------------


def test_soft_targets_are_seeded_draws_in_the_range_and_certain_labels_stay(own) -> None:
    labels = own[0]["train_labels"]
    uncertain = labels == UNCERTAIN
    targets = soft_targets(labels, 0.55, 0.85, seed=7)
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(targets[~uncertain], labels[~uncertain])
    drawn = targets[uncertain]
    assert ((drawn >= 0.55) & (drawn <= 0.85)).all() and not (targets == UNCERTAIN).any()
    assert len(np.unique(drawn)) == len(drawn)  # one draw per entry, not one per label
    np.testing.assert_array_equal(soft_targets(labels, 0.55, 0.85, seed=7), targets)
    assert not np.array_equal(soft_targets(labels, 0.55, 0.85, seed=8), targets)
    assert (soft_targets(labels, 0.7, 0.7, seed=7)[uncertain] == np.float32(0.7)).all()
    certain = np.clip(labels, 0, 1)
    np.testing.assert_array_equal(soft_targets(certain, 0.55, 0.85, 7), certain)


class _RecordingBCE(nn.BCEWithLogitsLoss):
    """BCEWithLogitsLoss that keeps every (logits, targets, loss) it is called with."""

    calls: list = []

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = super().forward(logits, targets)
        _RecordingBCE.calls.append((logits.detach().clone(), targets.clone(), loss.item()))
        return loss


@pytest.mark.parametrize("uncertain_range", [(0.55, 0.85), (0.6, 0.6)])
def test_soft_targets_reach_the_bce_loss(own, monkeypatch, uncertain_range) -> None:
    """The loss of every training batch is BCE on the logits against the seeded soft targets
    of its images: no -1 reaches BCE, uncertain entries train on targets in the range."""
    arrays = own[0]
    monkeypatch.setattr(training.nn, "BCEWithLogitsLoss", _RecordingBCE)
    _RecordingBCE.calls = []
    settings = TrainSettings(
        epochs=1, batch_size=16, lr=0.0, seed=11, uncertain_labels=uncertain_range
    )
    train, val = _sets(arrays)
    result = train_classifier("resnet18", train, val, len(NAMES), settings, CPU, multi_label=True)
    labels = train[1]
    expected = soft_targets(labels, *uncertain_range, seed=11)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(11))
    batches = order.split(16)
    assert len(_RecordingBCE.calls) == len(batches) == 3
    total = 0.0
    for idx, (logits, targets, loss) in zip(batches, _RecordingBCE.calls, strict=True):
        np.testing.assert_array_equal(targets.numpy(), expected[idx.numpy()])
        assert not (targets == UNCERTAIN).any()
        unsure = torch.as_tensor(labels[idx.numpy()] == UNCERTAIN)
        assert unsure.any()
        low, high = uncertain_range
        assert ((targets[unsure] >= low) & (targets[unsure] <= high)).all()
        reference = nn.functional.binary_cross_entropy_with_logits(logits, targets)
        assert loss == pytest.approx(reference.item(), rel=1e-6)
        # the same logits against -1 (no soft targets) would give another loss
        minus_one = torch.as_tensor(labels[idx.numpy()], dtype=torch.float32)
        assert nn.functional.binary_cross_entropy_with_logits(logits, minus_one) != pytest.approx(
            loss, rel=1e-3
        )
        total += loss * len(idx)
    assert result.history["train_loss"].iloc[0] == pytest.approx(total / len(labels), rel=1e-6)


def test_validation_leaves_uncertain_labels_out(own) -> None:
    arrays = own[0]
    settings = TrainSettings(epochs=1, batch_size=16, seed=2)
    train, val = _sets(arrays)
    result = train_classifier("resnet18", train, val, len(NAMES), settings, CPU, multi_label=True)
    val_labels = val[1]
    probs = predict_proba(result.model, val[0], 16, multi_label=True)
    kept = val_labels != UNCERTAIN
    aucs = [
        roc_auc_score(val_labels[kept[:, j], j], probs[kept[:, j], j])
        for j in range(len(NAMES))
        if len(np.unique(val_labels[kept[:, j], j])) == 2
    ]
    assert result.best_val["auc"] == pytest.approx(np.mean(aucs), abs=1e-6)
    p = np.clip(probs.astype(np.float64), 1e-12, 1 - 1e-12)[kept]
    y = val_labels[kept]
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert result.history["val_loss"].iloc[0] == pytest.approx(bce, rel=1e-6)


def test_resume_with_uncertain_labels_is_bit_exact(own, tmp_path: Path, caplog) -> None:
    """Killed after the epoch-1 checkpoint and rerun: the same weights and history as a run
    that was not interrupted (the soft targets are recomputed from the seed, not stored)."""
    arrays = own[0]
    settings = TrainSettings(epochs=2, batch_size=16, seed=4)
    train, val = _sets(arrays, 32)
    args = ("resnet18", train, val, len(NAMES), settings, CPU)
    whole = train_classifier(*args, multi_label=True)
    checkpoint = checkpoint_path(tmp_path / "model.pt")
    real_save = training._save_checkpoint

    def save_then_stop(path, state):
        real_save(path, state)
        raise KeyboardInterrupt  # the job dies right after the checkpoint is on disk

    training._save_checkpoint = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train_classifier(*args, multi_label=True, checkpoint=checkpoint)
    finally:
        training._save_checkpoint = real_save
    assert checkpoint.exists()
    with caplog.at_level(logging.INFO, logger="saliency_robustness.training"):
        resumed = train_classifier(*args, multi_label=True, checkpoint=checkpoint)
    assert "epoch 1 of 2 done" in caplog.text
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    columns = ["epoch", "train_loss", "val_loss", "val_acc", "val_auc", "lr"]
    pd.testing.assert_frame_equal(
        resumed.history[columns], whole.history[columns], check_exact=True
    )


def test_the_range_is_part_of_the_resume_fingerprint(own) -> None:
    arrays = own[0]
    data = (arrays["train_images"][:4], arrays["train_labels"][:4])

    def fingerprint(settings: TrainSettings) -> str:
        return training_fingerprint("resnet18", settings, len(NAMES), True, CPU, data)

    default = TrainSettings(epochs=1)
    assert default.uncertain_labels == (0.55, 0.85)
    assert fingerprint(default) != fingerprint(TrainSettings(epochs=1, uncertain_labels=(0.5, 1)))


def _default_config(**train) -> dict:
    """config/config.yaml with ``train`` keys replaced, completed by the schema's defaults."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["train"] = {**config.get("train", {}), **train}
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def test_config_key_default_range_and_low_above_high() -> None:
    config = _default_config()
    assert config["train"]["uncertain_labels"] == {"low": 0.55, "high": 0.85}
    assert TrainSettings.from_config(config["train"], "resnet18", 0).uncertain_labels == (
        0.55,
        0.85,
    )
    assert not [e for e in config_errors(config) if "uncertain_labels" in e]
    config = _default_config(uncertain_labels={"low": 0.9, "high": 0.6})
    errors = [e for e in config_errors(config) if "uncertain_labels" in e]
    assert errors == [
        "train.uncertain_labels: low (0.9) is above high (0.6); soft targets are drawn from "
        "[low, high], so set low <= high (the default is 0.55 to 0.85)."
    ]
    # the train rule leaves the key out for datasets without uncertain labels: the default
    params = {k: v for k, v in config["train"].items() if k != "uncertain_labels"}
    assert TrainSettings.from_config(params, "resnet18", 0).uncertain_labels == (0.55, 0.85)


# --- metrics: uncertain entries and absent labels ----------------------------------------------

LABELS = np.array(
    [[1, 0, 1, 0], [0, -1, 1, 0], [1, 1, -1, 0], [0, 1, 1, 0], [-1, 0, 0, 0], [0, 1, 0, 0]]
)
PROBS = np.array(
    [
        [0.9, 0.2, 0.7, 0.1],
        [0.4, 0.1, 0.5, 0.3],
        [0.6, 0.8, 0.3, 0.2],
        [0.7, 0.6, 0.9, 0.6],
        [0.3, 0.4, 0.2, 0.1],
        [0.2, 0.3, 0.6, 0.4],
    ]
)


def test_per_label_metrics_score_only_certain_images() -> None:
    table = per_label_metrics(LABELS, PROBS)
    for j in range(3):
        kept = LABELS[:, j] != UNCERTAIN
        assert table["auc"].iloc[j] == pytest.approx(roc_auc_score(LABELS[kept, j], PROBS[kept, j]))
        predicted = PROBS[kept, j] > 0.5
        assert table["acc"].iloc[j] == pytest.approx((predicted == LABELS[kept, j]).mean())
    # label 0 by hand: positives 0.9, 0.6 vs negatives 0.4, 0.7, 0.2 -> 5 of 6 pairs
    assert table["auc"].iloc[0] == pytest.approx(5 / 6)


def test_macro_auc_skips_a_label_absent_from_the_test_set() -> None:
    """Label 3 has no positive test image: NaN in its own row, left out of the macro AUC."""
    table = per_label_metrics(LABELS, PROBS)
    assert np.isnan(table["auc"].iloc[3]) and np.isnan(table["balanced_acc"].iloc[3])
    metrics = classification_metrics(LABELS, PROBS, multi_label=True)
    assert metrics["auc"] == pytest.approx(table["auc"].iloc[:3].mean())
    assert metrics["auc"] != pytest.approx(np.nan_to_num(table["auc"]).mean())
    rows = pd.DataFrame(metric_rows(LABELS, PROBS, True, ["a", "b", "c", "absent"]))
    assert rows["label"].tolist() == ["all", "a", "b", "c", "absent"]
    assert np.isnan(rows.loc[rows["label"] == "absent", "auc"]).all()
    assert rows["auc"].iloc[0] == pytest.approx(rows["auc"].iloc[1:4].mean())
    # a label uncertain in every image has no metric at all and counts in no mean
    labels = LABELS.copy()
    labels[:, 3] = UNCERTAIN
    table = per_label_metrics(labels, PROBS)
    assert table[list(METRIC_NAMES)].iloc[3].isna().all()
    metrics = classification_metrics(labels, PROBS, multi_label=True)
    assert metrics["acc"] == pytest.approx(table["acc"].iloc[:3].mean())


def test_every_label_present_and_certain_gives_the_same_numbers_as_before() -> None:
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 1, 0]])
    probs = PROBS[:, :3]
    metrics = classification_metrics(labels.astype(np.uint8), probs, multi_label=True)
    # bit for bit what the mean of the full columns' per-label scores was before
    per_label = [roc_auc_score(labels[:, j], probs[:, j]) for j in range(3)]
    assert metrics["auc"] == pd.Series(per_label).mean()
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, probs, average="macro"))
    assert metrics["acc"] == pytest.approx(((probs > 0.5) == labels).mean())
    assert not np.isnan(per_label_metrics(labels, probs)[list(METRIC_NAMES)]).any().any()


def test_prediction_rows_keep_the_uncertain_label() -> None:
    rows = prediction_rows(LABELS, PROBS, "none", 0, multi_label=True)
    np.testing.assert_array_equal(np.stack(rows["labels"]), LABELS)
    assert np.stack(rows["labels"]).dtype == np.int8


# --- Grad-CAM and LIME for the top-3 labels of an own-data study -------------------------------


@pytest.fixture(scope="module")
def own_model(own) -> nn.Module:
    arrays = own[0]
    train, val = _sets(arrays)
    settings = TrainSettings(epochs=2, batch_size=16, seed=0)
    return train_classifier(
        "resnet18", train, val, len(NAMES), settings, CPU, multi_label=True
    ).model


@pytest.mark.parametrize(
    ("method", "params"),
    [("gradcam", {}), ("lime", {"n_samples": 32, "n_segments": 16})],
)
def test_top_3_label_maps_on_own_multi_label_data(own, own_model, method, params) -> None:
    arrays = own[0]
    clean, labels = arrays["test_images"][:3], arrays["test_labels"][:3]
    assert (labels == UNCERTAIN).any()  # the attributed images include an uncertain label
    perturbed = {"contrast": ([3], np.stack([clean // 2]))}
    clean_table = attribute_clean(
        own_model, clean, labels, method, params, KEYS, batch_size=4, multi_label=True, top_k=3
    )
    perturbed_table = attribute_perturbed(
        own_model, clean_table, perturbed, method, params, batch_size=4, multi_label=True
    )
    frame = pd.concat([clean_table.to_pandas(), perturbed_table.to_pandas()], ignore_index=True)
    assert len(frame) == 3 * 3 * 2  # images x top-3 targets x (clean + severity 3)
    clean_probs = predict_proba(own_model, clean, 8, multi_label=True)
    top3 = np.argsort(-clean_probs, axis=1, kind="stable")[:, :3]
    for severity, group in frame.groupby("severity"):
        assert group["image_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        targets = group["target"].to_numpy()
        np.testing.assert_array_equal(targets.reshape(3, 3), top3)  # the same at every severity
        rows = group["image_index"].to_numpy()
        np.testing.assert_array_equal(group["label"], labels[rows, targets])
        maps = maps_from_table(group)
        assert maps.shape == (9, 28, 28) and np.isfinite(maps).all()
        if severity == 0:
            expected = compute_maps(own_model, clean[rows], targets, method, params, 4, seed=0)
            np.testing.assert_allclose(maps, expected, atol=1e-5)
            # three labels of one image: three different maps
            assert not np.allclose(maps[0], maps[1]) and not np.allclose(maps[1], maps[2])
