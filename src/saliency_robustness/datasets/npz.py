"""Reading the npz files the workflow writes and downloads: a dataset's splits (with a clear
error for a corrupt or truncated file) and perturbed test images by severity."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from saliency_robustness.datasets.info import SPLITS, DataError


def load_npz(path: str | os.PathLike, flag: str = "") -> dict[str, np.ndarray]:
    """Load a MedMNIST npz without pickle; checks the expected keys and dtypes."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise DataError(
            f"{path} is not a readable MedMNIST npz file ({error}). Delete it and download again."
        ) from error
    for split in SPLITS:
        for kind in ("images", "labels"):
            key = f"{split}_{kind}"
            if key not in arrays:
                raise DataError(
                    f"{path} lacks the array '{key}'; it is not a MedMNIST {flag} file."
                )
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DataError(f"{path}: {split} images and labels differ in length.")
        if arrays[f"{split}_images"].dtype != np.uint8:
            raise DataError(f"{path}: {split}_images must be uint8.")
    return arrays


def load_perturbed(paths: list[str]) -> dict[str, tuple[list[int], np.ndarray]]:
    """Perturbed test sets written by the perturb stage, keyed by perturbation name.

    Each value is (severities, images of shape (S, N, H, W[, C])).
    """
    out = {}
    for path in paths:
        with np.load(path, allow_pickle=False) as npz:
            out[Path(path).stem] = (npz["severities"].tolist(), npz["images"])
    return out
