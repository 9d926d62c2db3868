"""Synthetic lesion data: MedMNIST layout, seeding, and masks that line up with the lesions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion
from skimage.measure import euler_number, label

from saliency_robustness.datasets.info import SPLITS, DataError
from saliency_robustness.datasets.synthetic import KINDS, make_synthetic, synthetic_labels


@pytest.mark.parametrize("task", ["binary-class", "multi-class", "multi-label"])
@pytest.mark.parametrize("channels", [1, 3])
def test_layout_matches_medmnist(task: str, channels: int) -> None:
    data = make_synthetic({"train": 12, "val": 6, "test": 5}, 32, channels, 3, task)
    n_labels = len(KINDS) if task == "multi-label" else 1
    for split, n in zip(SPLITS, (12, 6, 5), strict=True):
        images, labels, masks = (data[f"{split}_{k}"] for k in ("images", "labels", "masks"))
        assert images.dtype == labels.dtype == masks.dtype == np.uint8
        assert images.shape == ((n, 32, 32) if channels == 1 else (n, 32, 32, 3))
        assert labels.shape == (n, n_labels)
        assert masks.shape == (n, 32, 32)
        assert set(np.unique(masks)) <= {0, 1}
    assert len(synthetic_labels(task)) == (2 if task == "binary-class" else 3)


def test_seeded_and_splits_independent() -> None:
    a = make_synthetic({"train": 8, "val": 4, "test": 4}, 28, 1, 7, "multi-class")
    b = make_synthetic({"train": 20, "val": 4, "test": 4}, 28, 1, 7, "multi-class")
    c = make_synthetic({"train": 8, "val": 4, "test": 4}, 28, 1, 8, "multi-class")
    np.testing.assert_array_equal(a["test_images"], b["test_images"])
    np.testing.assert_array_equal(a["test_masks"], b["test_masks"])
    assert not np.array_equal(a["test_images"], c["test_images"])


def test_single_label_classes_are_balanced() -> None:
    data = make_synthetic(30, 28, 1, 0, "multi-class")
    assert np.bincount(data["train_labels"][:, 0]).tolist() == [10, 10, 10]


@pytest.mark.parametrize("size", [28, 64])
def test_masks_line_up_with_lesions(size: int) -> None:
    """Pixel check: masked pixels are the bright lesion; the lesion kind matches the label."""
    data = make_synthetic(30, size, 1, 1, "multi-class")
    images = data["test_images"].astype(float)
    masks = data["test_masks"].astype(bool)
    contrast, edge, shifted = [], [], []
    for image, mask, y in zip(images, masks, data["test_labels"][:, 0], strict=True):
        assert mask.sum() >= 8
        # Local contrast (the background has a step edge elsewhere): masked pixels against
        # the 3-pixel band around them.
        contrast.append(_local_contrast(image, mask))
        # The step sits on the mask's boundary: the pixels just inside are brighter than
        # those just outside.
        ring_out = binary_dilation(mask, iterations=2) & ~mask
        ring_in = mask & ~binary_erosion(mask)
        edge.append(image[ring_in].mean() - image[ring_out].mean())
        moved = np.roll(mask, (size // 3, size // 3), axis=(0, 1))  # a misplaced mask
        shifted.append(_local_contrast(image, moved))
        assert label(mask).max() == 1  # one lesion
        has_hole = euler_number(mask, connectivity=2) == 0
        assert has_hole == (KINDS[y] == "ring")
    contrast, edge, shifted = map(np.asarray, (contrast, edge, shifted))
    assert contrast.min() > 10 and contrast.mean() > 40, contrast
    assert edge.min() > 10 and edge.mean() > 35, edge
    # A mask moved off the lesion (it may still overlap it a little) loses the contrast.
    assert (contrast > shifted).all() and (contrast - shifted).mean() > 40


def _local_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    band = binary_dilation(mask, iterations=3) & ~mask
    return image[mask].mean() - image[band].mean()


def test_binary_and_multilabel_masks_follow_labels() -> None:
    binary = make_synthetic(20, 28, 1, 2, "binary-class")
    has_mask = binary["test_masks"].reshape(20, -1).any(axis=1)
    np.testing.assert_array_equal(has_mask, binary["test_labels"][:, 0] == 1)
    multi = make_synthetic(20, 48, 1, 2, "multi-label")
    for mask, row in zip(multi["test_masks"], multi["test_labels"], strict=True):
        assert label(mask, connectivity=2).max() == row.sum()  # separate, non-touching lesions


def test_bad_arguments_are_named() -> None:
    with pytest.raises(DataError, match="Unknown synthetic task 'segmentation'"):
        make_synthetic(4, 28, 1, 0, "segmentation")
    with pytest.raises(DataError, match="channels 1 or 3"):
        make_synthetic(4, 28, 2, 0, "multi-class")
    with pytest.raises(DataError, match="positive count"):
        make_synthetic({"train": 4, "val": 0, "test": 4}, 28, 1, 0, "multi-class")


@pytest.mark.parametrize("task", ["binary-class", "multi-class", "multi-label"])
def test_ring_width_adds_level_2_around_each_lesion_and_keeps_the_images(task: str) -> None:
    from skimage.morphology import disk

    plain = make_synthetic(12, 48, 1, 4, task)
    default = make_synthetic(12, 48, 1, 4, task, ring_width=0)
    ringed = make_synthetic(12, 48, 1, 4, task, ring_width=2)
    for split in SPLITS:
        for key in ("images", "labels", "masks"):  # ring_width 0: today's arrays, bit for bit
            np.testing.assert_array_equal(default[f"{split}_{key}"], plain[f"{split}_{key}"])
        for key in ("images", "labels"):  # the ring is a layer of the mask only
            np.testing.assert_array_equal(ringed[f"{split}_{key}"], plain[f"{split}_{key}"])
        masks, levels = plain[f"{split}_masks"].astype(bool), ringed[f"{split}_masks"]
        assert levels.dtype == np.uint8 and set(np.unique(levels)) <= {0, 1, 2}
        np.testing.assert_array_equal(levels == 1, masks)
        for mask, level in zip(masks, levels, strict=True):
            # by hand: pixels within Euclidean distance 2 of the lesion (a radius-2 disk
            # dilation), the lesion itself excluded; lesion-free images stay all background
            band = binary_dilation(mask, structure=disk(2).astype(bool)) & ~mask
            np.testing.assert_array_equal(level == 2, band)
    with pytest.raises(DataError, match="ring_width must be >= 0"):
        make_synthetic(4, 28, 1, 0, "multi-class", ring_width=-1)
    with pytest.raises(DataError, match="ring_width must be an integer"):
        make_synthetic(4, 28, 1, 0, "multi-class", ring_width=1.5)
