"""Synthetic images with known lesions: the benchmark on which saliency correctness is measured.

Each image is a textured background (smoothed noise, a slow intensity gradient and a sharp
step edge of random position and sign, a class-independent distractor) with
zero, one or several lesions of three kinds: a filled ``blob``, a ``ring`` (annulus) and a
rotated ``bar``, at random position and size. The lesion's pixels are saved as a 0/1 mask
beside each image, so the ground truth of "where the evidence is" is exact. With
``ring_width`` > 0 the mask has levels instead: 1 the lesion, 2 the band of background pixels
within ``ring_width`` pixels (Euclidean distance) of it, 0 the rest; the images are the same
for every ``ring_width`` (the band is a layer of the mask only, for the graded hit rate).

The label depends on the task, in the same encoding MedMNIST uses:

* ``multi-class``: one lesion per image, the label is its kind (0 blob, 1 ring, 2 bar);
* ``binary-class``: the label is whether a lesion is present (0 none, 1 one lesion of any kind);
* ``multi-label``: each kind is present independently with probability 1/2, the label row
  is the 0/1 presence vector (several lesions per image, never overlapping).

The generator is written here (not taken from a library) because no maintained package makes
MedMNIST-shaped arrays with exact lesion masks; the shapes are drawn with scikit-image.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter
from skimage.draw import disk, polygon

from saliency_robustness.datasets.info import CUSTOM_DEFAULTS, SPLITS, SYNTHETIC_KINDS, DataError
from saliency_robustness.datasets.info import synthetic_labels as synthetic_labels  # re-export

KINDS = SYNTHETIC_KINDS
TASKS = ("binary-class", "multi-class", "multi-label")
DEFAULT_SPLIT_SIZES = CUSTOM_DEFAULTS["splits"]

# Intensities on the 0..255 scale. The lesion is brighter than the background by about five
# standard deviations of the fine texture, so its shape is clear at 28 px and a classifier
# learns it from a few hundred images instead of memorising texture. A sharp step edge of
# random position, direction and sign (a tissue boundary) is a class-independent distractor
# with stronger edges than the lesion, so an edge detector (the Sobel control) is drawn away
# from the lesion while a classifier has no reason to look at it.
_BACKGROUND_MEAN = 100.0
_TEXTURE_STD = 12.0
_GRADIENT_SPAN = 30.0
_STEP_RANGE = (55.0, 80.0)
_LESION_CONTRAST = 60.0
_MAX_PLACEMENT_TRIES = 50


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise DataError(f"Unknown synthetic task '{task}'. Valid tasks: {', '.join(TASKS)}.")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smoothed noise (texture at a scale of ~1/28 of the image) plus a random linear ramp."""
    sigma = max(size / 28.0, 0.6)
    texture = gaussian_filter(rng.standard_normal((size, size)), sigma)
    texture *= _TEXTURE_STD / max(texture.std(), 1e-8)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy - 0.5) * _GRADIENT_SPAN
    # Step edge: a line through a random point at a random angle; one side raised or lowered.
    normal = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(0.25, 0.75, size=2)
    side = np.cos(normal) * (xx - offset[0]) + np.sin(normal) * (yy - offset[1]) > 0
    step = side * rng.uniform(*_STEP_RANGE) * rng.choice([-1.0, 1.0])
    return _BACKGROUND_MEAN + texture + ramp + step


def _lesion_mask(rng: np.random.Generator, kind: str, size: int, scale: float = 1.0) -> np.ndarray:
    """Boolean mask of one lesion of ``kind`` at a random position and size, inside the image.

    ``scale`` shrinks the lesion (several lesions must fit into one image)."""
    mask = np.zeros((size, size), dtype=bool)
    size_scaled = size * scale
    if kind in ("blob", "ring"):
        radius = (
            rng.uniform(0.13, 0.22) * size_scaled
            if kind == "blob"
            else rng.uniform(0.17, 0.26) * size_scaled
        )
        margin = radius + 1
        centre = rng.uniform(margin, size - margin, size=2)
        rr, cc = disk(tuple(centre), radius, shape=mask.shape)
        mask[rr, cc] = True
        if kind == "ring":
            # Thickness at least 1.5 px so the ring survives 28 px rasterisation.
            inner = radius - max(0.35 * radius, 1.5)
            rr, cc = disk(tuple(centre), inner, shape=mask.shape)
            mask[rr, cc] = False
        return mask
    length = rng.uniform(0.40, 0.60) * size_scaled
    width = max(rng.uniform(0.09, 0.13) * size_scaled, 2.0)
    angle = rng.uniform(0, np.pi)
    half = np.hypot(length, width) / 2 + 1
    centre = rng.uniform(half, size - half, size=2)
    along = np.array([np.sin(angle), np.cos(angle)]) * length / 2
    across = np.array([np.cos(angle), -np.sin(angle)]) * width / 2
    corners = np.array(
        [
            centre + along + across,
            centre + along - across,
            centre - along - across,
            centre - along + across,
        ]
    )
    rr, cc = polygon(corners[:, 0], corners[:, 1], shape=mask.shape)
    mask[rr, cc] = True
    return mask


def _place(rng: np.random.Generator, kinds: list[str], size: int) -> np.ndarray:
    """Union of non-overlapping (one-pixel gap) lesion masks, one per kind in ``kinds``."""
    scale = 1.0 if len(kinds) <= 1 else 0.7  # several lesions: smaller, so they fit
    for _ in range(_MAX_PLACEMENT_TRIES):  # restart from scratch when a layout gets stuck
        union = np.zeros((size, size), dtype=bool)
        for kind in kinds:
            for _ in range(_MAX_PLACEMENT_TRIES):
                candidate = _lesion_mask(rng, kind, size, scale)
                grown = gaussian_filter(candidate.astype(float), 1.0) > 0.01
                if not (grown & union).any():
                    union |= candidate
                    break
            else:
                break
        else:
            return union
    raise DataError(
        f"Could not place {len(kinds)} non-overlapping lesions in a {size} px image; "
        "use a larger data.size for multi-label synthetic data."
    )


def _render(rng: np.random.Generator, mask: np.ndarray, channels: int) -> np.ndarray:
    """Background plus a softly edged lesion; uint8 (H, W) or (H, W, 3)."""
    size = mask.shape[0]
    background = _background(rng, size)
    # Soft edge (sub-pixel blur) so the lesion is not a perfect step that only edges reveal.
    lesion = gaussian_filter(mask.astype(float), 0.5) * _LESION_CONTRAST * rng.uniform(0.8, 1.2)
    image = background + lesion
    if channels == 3:
        # Per-channel gain keeps colour variation without making colour carry the label.
        image = image[..., None] * rng.uniform(0.85, 1.15, size=3)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _levels(mask: np.ndarray, ring_width: int) -> np.ndarray:
    """uint8 mask levels: 1 on the lesion, 2 on background pixels within ``ring_width`` px
    (Euclidean distance between pixel centres) of it, 0 elsewhere."""
    levels = mask.astype(np.uint8)
    if ring_width > 0 and mask.any():
        distance = distance_transform_edt(~mask)  # to the nearest lesion pixel
        levels[(distance > 0) & (distance <= ring_width)] = 2
    return levels


def _split_kinds(rng: np.random.Generator, task: str, n: int) -> tuple[np.ndarray, list[list[str]]]:
    """Labels of one split (exactly balanced for single-label tasks) and the kinds to draw."""
    if task == "multi-label":
        labels = (rng.random((n, len(KINDS))) < 0.5).astype(np.uint8)
        return labels, [[k for k, on in zip(KINDS, row, strict=True) if on] for row in labels]
    n_classes = 2 if task == "binary-class" else len(KINDS)
    labels = rng.permutation(np.arange(n) % n_classes).astype(np.uint8)[:, None]
    if task == "binary-class":
        kinds = [[KINDS[rng.integers(len(KINDS))]] if y else [] for y in labels[:, 0]]
    else:
        kinds = [[KINDS[y]] for y in labels[:, 0]]
    return labels, kinds


def make_synthetic(
    n_per_split: Mapping[str, int] | int = DEFAULT_SPLIT_SIZES,
    size: int = 28,
    channels: int = 1,
    seed: int = 0,
    task: str = "multi-class",
    ring_width: int = 0,
) -> dict[str, np.ndarray]:
    """A seeded synthetic dataset in MedMNIST's npz layout plus lesion masks.

    Returns ``{split}_images`` (uint8, (N, H, W) or (N, H, W, 3)), ``{split}_labels``
    (uint8, (N, 1), or (N, 3) 0/1 for multi-label) and ``{split}_masks`` (uint8 0/1,
    (N, H, W), the union of the image's lesions; all zero for lesion-free images) for the
    splits train, val and test. With ``ring_width`` > 0 the masks are levels (1 lesion, 2 the
    band within ``ring_width`` px around it, 0 background); images and labels do not depend
    on it. An int ``n_per_split`` gives every split that many images. Each split draws from
    its own stream of ``seed``, so changing one split's size leaves the others unchanged.
    """
    _check_task(task)
    if isinstance(ring_width, bool) or not isinstance(ring_width, int | np.integer):
        raise DataError(f"Synthetic ring_width must be an integer >= 0, got {ring_width!r}.")
    if ring_width < 0:
        raise DataError(f"Synthetic ring_width must be >= 0 pixels, got {ring_width}.")
    if channels not in (1, 3):
        raise DataError(f"Synthetic data needs channels 1 or 3, got {channels}.")
    if size < 16:
        raise DataError(f"Synthetic images need size >= 16 px to hold a lesion, got {size}.")
    counts = dict.fromkeys(SPLITS, n_per_split) if isinstance(n_per_split, int) else n_per_split
    if set(counts) != set(SPLITS) or any(int(n) < 1 for n in counts.values()):
        raise DataError(
            f"Synthetic split sizes must give a positive count for each of {SPLITS}, "
            f"got {dict(counts)}."
        )
    out: dict[str, np.ndarray] = {}
    for split_id, split in enumerate(SPLITS):
        n = int(counts[split])
        rng = np.random.default_rng([seed, split_id])
        labels, kinds = _split_kinds(rng, task, n)
        shape = (n, size, size) if channels == 1 else (n, size, size, 3)
        images = np.empty(shape, dtype=np.uint8)
        masks = np.zeros((n, size, size), dtype=np.uint8)
        for i in range(n):
            image_rng = np.random.default_rng([seed, split_id, i])
            mask = _place(image_rng, kinds[i], size)
            images[i] = _render(image_rng, mask, channels)
            masks[i] = _levels(mask, ring_width)
        out[f"{split}_images"] = images
        out[f"{split}_labels"] = labels
        out[f"{split}_masks"] = masks
    return out
