"""Stratified k folds over a dataset's pooled train and val images (labels or multi-label
label sets as strata), a fold's train/val/test split, and the folds named in model paths."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from saliency_robustness.datasets.info import DataError


def _fold_strata(labels: np.ndarray) -> np.ndarray:
    """The class each image is stratified by: its label, or a multi-label set's first label
    (an uncertain first label, -1 in own data, counts with the absent ones)."""
    labels = np.asarray(labels)
    strata = labels[:, 0] if labels.ndim == 2 else labels
    return np.maximum(strata.astype(int), 0)


def rarest_class_count(path: str | os.PathLike) -> int:
    """Images of the rarest stratification class over train + val (reads only the labels)."""
    with np.load(path, allow_pickle=False) as npz:
        labels = np.concatenate([npz["train_labels"], npz["val_labels"]])
    counts = np.bincount(_fold_strata(labels))
    return int(counts[counts > 0].min())


def make_folds(labels: np.ndarray, sources: np.ndarray, k: int, seed: int) -> pd.DataFrame:
    """Stratified k-fold assignment over the pooled train+val images.

    Returns one row per pooled image: ``pool_index``, ``source_split`` (train/val),
    ``source_index`` (index within that split), ``label``, and ``fold`` (0..k-1, the fold
    in which the image is used for validation).
    """
    # lazy: the Snakemake process imports this module for its config checks, not sklearn
    from sklearn.model_selection import StratifiedKFold

    strata = _fold_strata(labels)  # multi-label: stratified on the first label column only
    counts = np.bincount(strata)
    smallest = counts[counts > 0].min()
    if k < 2 or smallest < k:
        raise DataError(
            f"Cannot make {k} stratified folds: the rarest class has {smallest} images. "
            "Set folds.k between 2 and that number."
        )
    fold = np.empty(len(strata), dtype=np.int16)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold_id, (_, val_idx) in enumerate(splitter.split(np.zeros(len(strata)), strata)):
        fold[val_idx] = fold_id
    source_index = np.concatenate(
        [np.arange((sources == s).sum()) for s in ("train", "val")]
    ).astype(np.int32)
    return pd.DataFrame(
        {
            "pool_index": np.arange(len(strata), dtype=np.int32),
            "source_split": sources,
            "source_index": source_index,
            "label": strata.astype(np.int16),
            "fold": fold,
        }
    )


def folds_from_column(
    fold_column: np.ndarray, labels: np.ndarray, sources: np.ndarray, k: int
) -> pd.DataFrame:
    """The fold table (as ``make_folds``) from a dataset's own fold column (custom CSV)."""
    fold = np.asarray(fold_column).astype(np.int16)
    used = sorted(set(fold.tolist()))
    if used != list(range(k)):
        raise DataError(
            f"The dataset's fold column uses folds {used}, but folds.k = {k} needs each of "
            f"0..{k - 1}; set folds.k to match the CSV's fold column."
        )
    labels = np.asarray(labels)
    source_index = np.concatenate(
        [np.arange((sources == s).sum()) for s in ("train", "val")]
    ).astype(np.int32)
    return pd.DataFrame(
        {
            "pool_index": np.arange(len(fold), dtype=np.int32),
            "source_split": sources,
            "source_index": source_index,
            "label": labels[:, 0].astype(np.int16),
            "fold": fold,
        }
    )


def pooled_train_val(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels and source-split names of train+val concatenated (train first)."""
    images = np.concatenate([arrays["train_images"], arrays["val_images"]])
    labels = np.concatenate([arrays["train_labels"], arrays["val_labels"]])
    sources = np.array(
        ["train"] * len(arrays["train_images"]) + ["val"] * len(arrays["val_images"])
    )
    return images, labels, sources


def fold_split(
    arrays: dict[str, np.ndarray], folds: pd.DataFrame, fold: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Training and validation arrays for one fold, plus the held-out official test split."""
    images, labels, _ = pooled_train_val(arrays)
    if len(folds) != len(images):
        raise DataError(
            f"Fold table has {len(folds)} rows but the dataset has {len(images)} train+val "
            "images; rerun the folds rule (snakemake --forcerun folds)."
        )
    is_val = folds["fold"].to_numpy() == fold
    if not is_val.any() or is_val.all():
        raise DataError(
            f"Fold {fold} is empty or holds every image; check folds.k and folds.run in the config."
        )
    return {
        "train": (images[~is_val], labels[~is_val]),
        "val": (images[is_val], labels[is_val]),
        "test": (arrays["test_images"], arrays["test_labels"]),
    }


def folds_in_paths(paths: Sequence[str]) -> list[int]:
    """The folds of per-fold files (``.../fold<k>/...``), ascending and without repeats: an
    attribution job's folds are those of its model files, so they need no params."""
    folds = set()
    for path in paths:
        match = re.search(r"(?:^|/)fold(\d+)/", str(path))
        if match is None:
            raise ValueError(f"{path} is not a per-fold file (no fold<k>/ folder in its path).")
        folds.add(int(match[1]))
    return sorted(folds)
