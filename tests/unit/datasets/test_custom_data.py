"""Your own data: a folder of real BreastMNIST images exported to PNG/JPEG/TIFF, masks drawn
here, and a CSV; every bad-input case fails with a message naming the CSV line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from saliency_robustness.config_checks import config_errors
from saliency_robustness.datasets.custom import (
    build_custom_dataset,
    custom_dataset_errors,
    has_masks,
    write_npz,
)
from saliency_robustness.datasets.folds import folds_from_column, pooled_train_val
from saliency_robustness.datasets.info import DataError, dataset_info
from saliency_robustness.datasets.npz import load_npz

N = {"train": 20, "val": 6, "test": 10}
LABELS = ["benign", "malignant"]  # hypothetical names for BreastMNIST's 0 / 1


def _disk_mask(height: int, width: int, i: int) -> np.ndarray:
    """A disk whose centre moves with the row, so each mask is distinct."""
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = 8 + i % 12, 10 + (3 * i) % 10
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= 16).astype(np.uint8) * 255


@pytest.fixture
def folder(tmp_path: Path, breast: dict[str, np.ndarray]) -> Path:
    """Real BreastMNIST images as PNG files with drawn masks, a split and a fold column."""
    root = tmp_path / "breast_folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for split, n in N.items():
        for i in range(n):
            name = f"{split}_{i:03d}"
            Image.fromarray(breast[f"{split}_images"][i]).save(root / "images" / f"{name}.png")
            Image.fromarray(_disk_mask(28, 28, i)).save(root / "masks" / f"{name}.png")
            label = LABELS[int(breast[f"{split}_labels"][i, 0])]
            fold = "" if split == "test" else str(i % 2)
            rows.append((f"images/{name}.png", label, f"masks/{name}.png", split, fold))
    pd.DataFrame(rows, columns=["path", "label", "mask", "split", "fold"]).to_csv(
        root / "labels.csv", index=False
    )
    return root


def _spec(root: Path, **extra) -> dict:
    return {
        "source": "folder",
        "root": str(root),
        "csv": "labels.csv",
        "task": "binary-class",
        "labels": LABELS,
        **extra,
    }


def _edit_csv(root: Path, row: int, **cells) -> None:
    table = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    for column, value in cells.items():
        table.loc[row, column] = value
    table.to_csv(root / "labels.csv", index=False)


def test_folder_round_trip_at_native_size(folder: Path, breast: dict) -> None:
    arrays = build_custom_dataset(_spec(folder), 28)
    for split, n in N.items():
        np.testing.assert_array_equal(arrays[f"{split}_images"], breast[f"{split}_images"][:n])
        np.testing.assert_array_equal(arrays[f"{split}_labels"], breast[f"{split}_labels"][:n])
        assert arrays[f"{split}_masks"].shape == (n, 28, 28)
        for i in range(n):  # the drawn mask, binarised
            np.testing.assert_array_equal(arrays[f"{split}_masks"][i], _disk_mask(28, 28, i) > 0)
        assert arrays[f"{split}_has_mask"].all()
    np.testing.assert_array_equal(arrays["train_folds"], np.arange(N["train"]) % 2)
    assert "test_folds" not in arrays


def test_resize_rgb_and_npz_contract(folder: Path, tmp_path: Path) -> None:
    arrays = build_custom_dataset(_spec(folder, channels=3), 64)
    assert arrays["train_images"].shape == (N["train"], 64, 64, 3)
    assert arrays["train_images"].dtype == np.uint8
    masks = arrays["train_masks"]
    assert masks.shape == (N["train"], 64, 64) and set(np.unique(masks)) == {0, 1}
    # Nearest-neighbour resize keeps the disk's area (x 64/28 squared) within rounding.
    assert abs(masks[0].sum() / (_disk_mask(28, 28, 0) > 0).sum() - (64 / 28) ** 2) < 0.5
    path = tmp_path / "out" / "custom_64.npz"
    write_npz(arrays, path)
    loaded = load_npz(path)  # the MedMNIST reader accepts it
    np.testing.assert_array_equal(loaded["test_masks"], arrays["test_masks"])


def test_folds_come_from_the_csv_column(folder: Path) -> None:
    arrays = build_custom_dataset(_spec(folder), 28)
    _, labels, sources = pooled_train_val(arrays)
    column = np.concatenate([arrays["train_folds"], arrays["val_folds"]])
    folds = folds_from_column(column, labels, sources, k=2)
    assert len(folds) == N["train"] + N["val"]
    np.testing.assert_array_equal(folds["fold"], column)
    with pytest.raises(DataError, match="set folds.k to match"):
        folds_from_column(column, labels, sources, k=3)


def test_without_split_column_a_seeded_stratified_test_split(folder: Path) -> None:
    table = pd.read_csv(folder / "labels.csv", dtype=str, keep_default_na=False)
    table.drop(columns=["split", "fold"]).to_csv(folder / "labels.csv", index=False)
    a = build_custom_dataset(_spec(folder, test_fraction=0.25), 28, seed=3)
    b = build_custom_dataset(_spec(folder, test_fraction=0.25), 28, seed=3)
    assert len(a["test_images"]) == 9 and len(a["train_images"]) == 27
    assert len(a["val_images"]) == 0
    np.testing.assert_array_equal(a["test_images"], b["test_images"])


def test_tiff_16_bit_and_jpeg(folder: Path, breast: dict) -> None:
    image = breast["train_images"][0]
    Image.fromarray(image.astype(np.uint16) * 257).save(folder / "images" / "deep.tif")
    Image.fromarray(image).save(folder / "images" / "photo.jpg", quality=95)
    _edit_csv(folder, 0, path="images/deep.tif")
    _edit_csv(folder, 1, path="images/photo.jpg")
    arrays = build_custom_dataset(_spec(folder), 28)
    scaled = np.rint((image - image.min()) / (image.max() - image.min()) * 255)
    np.testing.assert_array_equal(arrays["train_images"][0], scaled)  # min-max to 8 bit
    assert np.abs(arrays["train_images"][1].astype(int) - image).mean() < 3  # lossy JPEG


def test_multi_label_csv(folder: Path) -> None:
    table = pd.read_csv(folder / "labels.csv", dtype=str, keep_default_na=False)
    table["label"] = ["mass;calcification", "", "calcification"] * 12
    table.to_csv(folder / "labels.csv", index=False)
    spec = _spec(folder, task="multi-label", labels=["mass", "calcification", "cyst"])
    assert custom_dataset_errors("mine", spec, 2) == []
    arrays = build_custom_dataset(spec, 28)
    assert arrays["train_labels"][:3].tolist() == [[1, 1, 0], [0, 0, 0], [0, 1, 0]]


def test_dataset_info_and_has_masks(folder: Path) -> None:
    data = {"custom": {"mine": _spec(folder), "lesions": {"source": "synthetic"}}}
    info = dataset_info("mine", data)
    assert (info.task, info.n_channels, info.n_classes) == ("binary-class", 1, 2)
    assert info.labels == {"0": "benign", "1": "malignant"}
    synthetic = dataset_info("lesions", data)
    assert (synthetic.task, synthetic.n_classes) == ("multi-class", 3)
    assert dataset_info("breastmnist", data).task == "binary-class"
    with pytest.raises(DataError, match="Custom datasets \\(data.custom\\): mine, lesions"):
        dataset_info("nosuch", data)
    assert has_masks(_spec(folder))
    table = pd.read_csv(folder / "labels.csv", dtype=str, keep_default_na=False)
    table.drop(columns=["mask"]).to_csv(folder / "labels.csv", index=False)
    assert not has_masks(_spec(folder))
    assert "train_masks" not in build_custom_dataset(_spec(folder), 28)


# --- bad input: config time (no image decoding) ------------------------------------------------


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ({"path": "images/gone.png"}, "file .*gone.png does not exist"),
        ({"mask": "masks/gone.png"}, "mask file .*gone.png does not exist"),
        ({"path": "../outside.png"}, "escapes the data folder"),
        ({"path": "/etc/hostname"}, "escapes the data folder"),
        ({"label": "malignnat"}, "unknown label 'malignnat'; valid labels: benign, malignant"),
        ({"split": "training"}, "split 'training' is not one of train, val, test"),
        ({"fold": "7"}, "fold '7' is not 0..1 \\(folds.k = 2\\)"),
        ({"path": "labels.csv"}, "not PNG/JPEG/TIFF \\(DICOM is not supported"),
    ],
)
def test_config_time_errors_name_the_row(folder: Path, cells: dict, message: str) -> None:
    (folder.parent / "outside.png").write_bytes((folder / "images" / "train_000.png").read_bytes())
    _edit_csv(folder, 4, **cells)
    errors = custom_dataset_errors("mine", _spec(folder), k=2)
    assert len(errors) == 1, errors
    assert "labels.csv, line 6" in errors[0]  # row 4 = line 6 (header is line 1)
    assert errors[0].startswith("data.custom.mine:")
    assert re.search(message, errors[0]), errors[0]
    if "fold" in cells:  # k is the folds rule's business: it refuses fold 7 with k = 2
        arrays = build_custom_dataset(_spec(folder), 28)
        _, labels, sources = pooled_train_val(arrays)
        column = np.concatenate([arrays["train_folds"], arrays["val_folds"]])
        with pytest.raises(DataError, match="uses folds \\[0, 1, 7\\]"):
            folds_from_column(column, labels, sources, k=2)
        return
    with pytest.raises(DataError, match="line 6"):  # the data rule refuses it too
        build_custom_dataset(_spec(folder), 28)


def test_config_errors_reports_custom_problems(folder: Path) -> None:
    config = {
        "data": {"datasets": ["mine"], "custom": {"mine": _spec(folder, csv="nope.csv")}},
        "train": {"architectures": ["resnet18"]},
        "perturb": {"perturbations": ["contrast"], "params": {}},
        "attribute": {"methods": ["gradcam"], "params": {}},
        "folds": {"k": 2, "run": None},
    }
    errors = config_errors(config)
    assert any("nope.csv does not exist" in e for e in errors), errors
    config["data"]["custom"] = {"breastmnist": {"source": "synthetic"}}
    config["data"]["datasets"] = ["breastmnist"]
    assert any("is a MedMNIST name" in e for e in config_errors(config))
    config["data"]["custom"] = {"mine": {"source": "folder", "root": str(folder)}}
    config["data"]["datasets"] = ["mine"]
    assert any("needs csv, labels" in e for e in config_errors(config))


# --- bad input: found while reading the images (data rule) --------------------------------------


def test_unreadable_image_names_the_row(folder: Path) -> None:
    (folder / "images" / "train_002.png").write_text("not an image")
    assert custom_dataset_errors("mine", _spec(folder), 2) == []  # cheap checks cannot see it
    with pytest.raises(DataError, match="labels.csv, line 4 .*not a readable image"):
        build_custom_dataset(_spec(folder), 28)


def test_mask_of_another_size_names_the_row(folder: Path) -> None:
    Image.fromarray(_disk_mask(32, 32, 0)).save(folder / "masks" / "val_001.png")
    with pytest.raises(DataError, match="line 23 .*mask val_001.png is 32x32 px but the image"):
        build_custom_dataset(_spec(folder), 28)


# --- multi-level masks (layer maps) ------------------------------------------------------------


def _layer_map(i: int) -> np.ndarray:
    """Levels: 1 the drawn disk (the lesion), 2 a 2-pixel band around it, 3 the bottom rows."""
    lesion = _disk_mask(28, 28, i) > 0
    yy, xx = np.mgrid[0:28, 0:28]
    cy, cx = 8 + i % 12, 10 + (3 * i) % 10
    levels = np.zeros((28, 28), np.uint8)
    levels[24:] = 3
    levels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 2
    levels[lesion] = 1
    return levels


def _palette_png(levels: np.ndarray, path: Path) -> None:
    """A label-map PNG as annotation tools write it: palette index = level, coloured palette
    (index 1 red, 2 green, 3 blue: their luminances are not the levels)."""
    image = Image.new("P", levels.shape[::-1])
    image.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0, 0, 0, 200] + [0] * (256 * 3 - 12))
    image.putdata(levels.ravel().tolist())
    image.save(path)


def test_layer_map_masks_are_read_as_levels(folder: Path) -> None:
    levels = [_layer_map(i) for i in range(3)]
    Image.fromarray(levels[0]).save(folder / "masks" / "train_000.png")  # 8-bit grayscale
    _palette_png(levels[1], folder / "masks" / "train_001.png")
    Image.fromarray(levels[2].astype(np.uint16)).save(folder / "masks" / "layers.tif")  # 16 bit
    _edit_csv(folder, 2, mask="masks/layers.tif")
    assert Image.open(folder / "masks" / "train_001.png").mode == "P"
    arrays = build_custom_dataset(_spec(folder), 28)
    for i in range(3):
        np.testing.assert_array_equal(arrays["train_masks"][i], levels[i])
    for i in range(3, N["train"]):  # the other masks are 0/255: binary, levels {0, 1}
        np.testing.assert_array_equal(arrays["train_masks"][i], _disk_mask(28, 28, i) > 0)
    resized = build_custom_dataset(_spec(folder), 64)["train_masks"]
    for i in range(3):  # nearest neighbour: every pixel keeps one of the levels
        expected = Image.fromarray(levels[i]).resize((64, 64), Image.Resampling.NEAREST)
        np.testing.assert_array_equal(resized[i], np.asarray(expected))


def test_binary_masks_of_every_encoding_read_as_before(folder: Path) -> None:
    disk = _disk_mask(28, 28, 0) > 0
    Image.fromarray(disk.astype(np.uint8)).save(folder / "masks" / "ones.png")  # 0/1
    Image.fromarray(disk.astype(np.uint16) * 65535).save(folder / "masks" / "deep.tif")
    Image.fromarray(disk).save(folder / "masks" / "bits.png")  # mode "1"
    Image.fromarray(disk.astype(np.uint8) * 255).convert("RGB").save(folder / "masks" / "rgb.png")
    Image.fromarray(disk.astype(np.uint8) * 255).save(folder / "masks" / "lossy.jpg", quality=75)
    for row, name in enumerate(["ones.png", "deep.tif", "bits.png", "rgb.png", "lossy.jpg"]):
        _edit_csv(folder, row, path="images/train_000.png", mask=f"masks/{name}")
    masks = build_custom_dataset(_spec(folder), 28)["train_masks"]
    for row in range(4):
        np.testing.assert_array_equal(masks[row], disk, err_msg=str(row))
    # JPEG: binary as before levels existed (compression noise is not a level)
    jpeg = np.asarray(Image.open(folder / "masks" / "lossy.jpg").convert("L")).astype(float)
    before = np.rint((jpeg - jpeg.min()) / (jpeg.max() - jpeg.min()) * 255) > 0
    np.testing.assert_array_equal(masks[4], before)
    assert set(np.unique(masks[4])) == {0, 1} and len(np.unique(jpeg)) > 2


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        (np.array([0, 128, 255], np.uint8), "3 distinct values \\(0, 128, 255\\)"),
        (np.arange(0, 256, 8, dtype=np.uint8), "32 distinct values \\(0, 8, 16, .*, \\.\\.\\.\\)"),
        (np.array([0, 0.5, 1], np.float32), "3 distinct values \\(0, 0.5, 1\\)"),
    ],
)
def test_ambiguous_mask_names_the_row_the_file_and_the_fix(
    folder: Path, values: np.ndarray, shown: str
) -> None:
    ambiguous = values[np.arange(28 * 28) % len(values)].reshape(28, 28)
    suffix = ".tif" if values.dtype == np.float32 else ".png"
    Image.fromarray(ambiguous).save(folder / "masks" / f"odd{suffix}")
    _edit_csv(folder, 4, mask=f"masks/odd{suffix}")
    # needs decoding: the data rule's check
    assert custom_dataset_errors("mine", _spec(folder), 2) == []
    with pytest.raises(DataError) as error:
        build_custom_dataset(_spec(folder), 28)
    message = str(error.value)
    assert f"line 6 (path 'images/train_004.png'): mask odd{suffix} has " in message
    assert re.search(shown, message), message
    assert "neither binary (0 and one other value, e.g. 0/255) nor levels" in message
    assert "Save a binary mask with a single foreground value, or a layer map" in message


def test_ring_width_is_for_synthetic_sets(folder: Path) -> None:
    errors = custom_dataset_errors("mine", _spec(folder, ring_width=2), 2)
    assert errors == [
        "data.custom.mine.ring_width applies to the synthetic source only; for own data draw "
        "the layers into the mask files as levels (config/README.md) and remove ring_width."
    ]
    assert custom_dataset_errors("mine", _spec(folder, ring_width=0), 2) == []
    spec = {"source": "synthetic", "task": "binary-class", "ring_width": 2}
    spec["splits"] = {"train": 4, "val": 2, "test": 6}
    arrays = build_custom_dataset(spec, 28)
    plain = build_custom_dataset({**spec, "ring_width": 0}, 28)
    np.testing.assert_array_equal(arrays["test_images"], plain["test_images"])
    np.testing.assert_array_equal(arrays["test_masks"] == 1, plain["test_masks"] == 1)
    assert set(np.unique(arrays["test_masks"])) == {0, 1, 2} and arrays["test_has_mask"].all()
