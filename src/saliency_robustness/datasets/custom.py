"""Datasets that are not MedMNIST: your own image folder + CSV, or the synthetic lesion set.

Both become the same npz contract as a MedMNIST file (``{split}_images`` uint8 (N, H, W) or
(N, H, W, 3), ``{split}_labels`` uint8 (N, 1) or (N, L) 0/1 for multi-label, int8 with -1
for uncertain entries where a multi-label CSV has any: see ``labels``) plus, where the
dataset has lesion masks, ``{split}_masks`` uint8 levels (N, H, W; 0/1 for binary masks, see
``mask_levels``) and ``{split}_has_mask``
(bool, (N,): whether the row had a mask at all), and, where the CSV has a ``fold`` column,
``{split}_folds`` (int16, train and val rows). So every later stage reads custom data exactly
like MedMNIST data.

Folder source: a CSV (``csv``, relative to ``root`` unless absolute) with columns

* ``path``: image file relative to ``root`` (PNG, JPEG or TIFF; DICOM is not supported: export
  it to PNG/TIFF first, e.g. with pydicom or dcm2niix);
* ``label``: a name from ``labels``; for ``task: multi-label`` the names present, separated by
  ``;`` (empty: none), each optionally with a value: ``name:1``, ``name:0``, or ``name:-1`` for
  uncertain (CheXpert's -1; single-label tasks reject it);
* ``mask`` (optional): lesion mask file relative to ``root``, same size as the image: binary
  (0 and one other value, e.g. 0/255: nonzero = lesion) or a layer map of levels (0
  background, 1 lesion, 2 the layer around or below it, ...; see ``mask_levels``); empty cells
  mean "no mask for this image";
* ``split`` (optional): ``train``, ``val`` or ``test`` for every row; without it a seeded,
  stratified ``test_fraction`` of the rows becomes the test split and the rest train;
* ``fold`` (optional): 0..k-1 for train/val rows, used instead of the stratified folds.

Cheap checks (columns, labels, split/fold values, file existence, paths escaping ``root``) run
at config time (``custom_dataset_errors``); reading every image (unreadable files, mask/image size
mismatch) happens in the data rule. Every message names the CSV line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from saliency_robustness.datasets.info import SPLITS, DataError, label_names, resolve_spec
from saliency_robustness.datasets.info import custom_info as custom_info  # re-export
from saliency_robustness.datasets.labels import (
    ENTRY_SEPARATOR,
    label_array,
    parse_multi_label_cell,
    single_label_uncertain_error,
)

SOURCES = ("folder", "synthetic")
TASKS = ("binary-class", "multi-class", "multi-label")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Lossy files cannot keep levels exactly: their masks are binary (nonzero = lesion), as before.
LOSSY_SUFFIXES = (".jpg", ".jpeg")
# A mask whose values are all whole numbers 0..MAX_MASK_LEVEL holds the levels directly.
MAX_MASK_LEVEL = 15
MULTI_LABEL_SEPARATOR = ENTRY_SEPARATOR


def custom_specs(data_config: Mapping | None) -> dict[str, dict]:
    """All ``data.custom`` entries with defaults, keyed by dataset name."""
    return {k: resolve_spec(v) for k, v in ((data_config or {}).get("custom") or {}).items()}


def has_masks(spec: Mapping) -> bool:
    """Whether the dataset has lesion masks (synthetic: always; folder: a non-empty mask column)."""
    spec = resolve_spec(spec)
    if spec["source"] == "synthetic":
        return True
    table = _read_csv(spec)
    return "mask" in table.columns and table["mask"].fillna("").astype(str).str.strip().ne("").any()


# --- config-time checks ----------------------------------------------------------------------


def _csv_path(spec: Mapping) -> Path:
    csv = Path(str(spec["csv"]))
    return csv if csv.is_absolute() else Path(str(spec["root"])) / csv


def _read_csv(spec: Mapping) -> pd.DataFrame:
    path = _csv_path(spec)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist; fix 'csv' or 'root' in data.custom.")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{path} is not a readable CSV file: {error}") from error


def _inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` resolved, or None where it escapes ``root`` (``..``, absolute path,
    symlink pointing out)."""
    candidate = (root / relative).resolve()
    return candidate if candidate.is_relative_to(root.resolve()) else None


def _row_name(csv: Path, index: int, row: Mapping) -> str:
    # Line numbers as an editor shows them: the header is line 1.
    return f"{csv}, line {index + 2} (path '{row.get('path', '')}')"


def _parse_labels(cell: str, names: list[str], task: str) -> np.ndarray | str:
    """Label row of one CSV cell, or an error message. Multi-label rows are int8 with
    ``labels.UNCERTAIN`` (-1) for ``name:-1`` entries (see saliency_robustness.datasets.labels)."""
    if task == "multi-label":
        return parse_multi_label_cell(cell, names)
    uncertain = single_label_uncertain_error(cell, names, task)
    if uncertain:
        return uncertain
    if cell.strip() not in names:
        return f"unknown label '{cell}'; valid labels: {', '.join(names)}"
    return np.array([names.index(cell.strip())], dtype=np.uint8)


def manifest_errors(spec: Mapping, k: int | None = None) -> list[str]:
    """Problems of a folder dataset's CSV that need no image decoding, one per row/problem."""
    spec = resolve_spec(spec)
    try:
        table = _read_csv(spec)
    except DataError as error:
        return [str(error)]
    csv, root = _csv_path(spec), Path(str(spec["root"]))
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        return [f"{csv}: missing column(s) {missing}; the CSV needs 'path' and 'label'."]
    if table.empty:
        return [f"{csv} has no rows."]
    names = label_names(spec)
    errors: list[str] = []
    has_split = "split" in table.columns
    for index, row in table.iterrows():
        where = _row_name(csv, index, row)
        for column in ("path", "mask"):
            cell = str(row.get(column, "")).strip()
            if not cell:
                if column == "path":
                    errors.append(f"{where}: empty path.")
                continue
            resolved = _inside(root, cell)
            if resolved is None:
                errors.append(f"{where}: {column} '{cell}' escapes the data folder {root}.")
            elif not resolved.is_file():
                errors.append(f"{where}: {column} file {resolved} does not exist.")
            elif resolved.suffix.lower() not in IMAGE_SUFFIXES:
                errors.append(
                    f"{where}: {column} file {resolved.name} is not PNG/JPEG/TIFF "
                    "(DICOM is not supported; export it to PNG or TIFF)."
                )
        parsed = _parse_labels(str(row["label"]), names, spec["task"])
        if isinstance(parsed, str):
            errors.append(f"{where}: {parsed}.")
        split = str(row.get("split", "")).strip()
        if has_split and split not in SPLITS:
            errors.append(f"{where}: split '{split}' is not one of {', '.join(SPLITS)}.")
        fold = str(row.get("fold", "")).strip()
        bad_fold = not fold.isdigit() or (k is not None and int(fold) >= k)
        if "fold" in table.columns and split != "test" and bad_fold:
            valid = f"0..{k - 1} (folds.k = {k})" if k else "a fold number"
            errors.append(f"{where}: fold '{fold}' is not {valid}.")
        if len(errors) >= 20:  # a wrong root fails every row; the first lines say enough
            errors.append(f"{csv}: more problems not listed.")
            break
    if "fold" in table.columns and not has_split:
        errors.append(f"{csv}: a 'fold' column needs a 'split' column (which rows are test).")
    return errors


def custom_dataset_errors(name: str, spec: Mapping, k: int | None = None) -> list[str]:
    """Config-time problems of one ``data.custom`` entry (empty list: fine)."""
    spec = resolve_spec(spec)
    where = f"data.custom.{name}"
    if spec.get("source") not in SOURCES:
        return [f"{where}.source must be one of {', '.join(SOURCES)}."]
    if spec["task"] not in TASKS:
        return [f"{where}.task must be one of {', '.join(TASKS)}."]
    if spec["channels"] not in (1, 3):
        return [f"{where}.channels must be 1 (grayscale) or 3 (RGB)."]
    if spec["source"] == "folder" and spec.get("ring_width"):
        return [
            f"{where}.ring_width applies to the synthetic source only; for own data draw the "
            "layers into the mask files as levels (config/README.md) and remove ring_width."
        ]
    if spec["source"] == "synthetic":
        return []
    missing = [key for key in ("root", "csv", "labels") if not spec.get(key)]
    if missing:
        return [f"{where}: a folder dataset needs {', '.join(missing)} (see config/README.md)."]
    if not Path(str(spec["root"])).is_dir():
        return [f"{where}.root: folder {spec['root']} does not exist."]
    labels = label_names(spec)
    if len(set(labels)) != len(labels):
        return [f"{where}.labels has duplicates: {labels}."]
    if spec["task"] == "binary-class" and len(labels) != 2:
        return [f"{where}: task binary-class needs exactly 2 labels, got {len(labels)}."]
    return [f"{where}: {error}" for error in manifest_errors(spec, k)]


# --- building the npz --------------------------------------------------------------------------


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit as is; other depths (16-bit TIFF, float) min-max scaled per image to 0..255."""
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float64)
    low, high = np.nanmin(array), np.nanmax(array)
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return np.rint(scaled * 255).astype(np.uint8)


def _open(path: Path, where: str, column: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(
            f"{where}: {column} file {path} is not a readable image ({error})."
        ) from error
    return image


def _load_image(path: Path, size: int, channels: int, where: str) -> tuple[np.ndarray, tuple]:
    """Image resized to ``size`` x ``size`` (bicubic, as MedMNIST+), 1 or 3 channels."""
    image = _open(path, where, "image")
    original = image.size
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image)))
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8), original


def _mask_values(mask: Image.Image) -> np.ndarray:
    """One number per pixel: a palette image's palette index (label-map PNGs store the
    level there), the stored value of grayscale and 16-bit/float images, and the luminance
    of colour images (as before multi-level masks)."""
    if mask.mode in ("P", "1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        return np.asarray(mask)
    return np.asarray(mask.convert("I"))


def mask_levels(values: np.ndarray, name: str) -> np.ndarray:
    """uint8 mask levels (0 background, 1 lesion, 2, ... outer layers) of a lossless mask
    image's values (``_mask_values``). The rule, per mask:

    * every value a whole number 0..``MAX_MASK_LEVEL``: the values are the levels (a 0/1
      mask is binary; 0/2 marks layer 2 only);
    * otherwise 0 and exactly one other value (0/255, 0/65535, ...): binary, that value is
      level 1 (a mask without 0 is lesion everywhere);
    * anything else (several values above ``MAX_MASK_LEVEL``, fractions, negative values) is
      ambiguous and raises ``ValueError`` naming ``name`` and the fix.
    """
    values = np.asarray(values)
    distinct = np.unique(values)
    whole = bool(np.all(np.isfinite(distinct))) and np.array_equal(distinct, np.round(distinct))
    if whole and distinct.min(initial=0) >= 0 and distinct.max(initial=0) <= MAX_MASK_LEVEL:
        return values.astype(np.uint8)
    if len(distinct[distinct != 0]) == 1:
        return (values != 0).astype(np.uint8)
    shown = ", ".join(f"{v:g}" for v in distinct[:6]) + (", ..." if len(distinct) > 6 else "")
    raise ValueError(
        f"mask {name} has {len(distinct)} distinct values ({shown}): neither binary (0 and one "
        f"other value, e.g. 0/255) nor levels (whole numbers 0..{MAX_MASK_LEVEL}: 0 background, "
        "1 lesion, 2 the layer around it, ...). Save a binary mask with a single foreground "
        "value, or a layer map with each pixel's level as its value (8-bit grayscale or "
        "palette PNG, no anti-aliasing)."
    )


def _load_mask(path: Path, size: int, image_size: tuple, where: str) -> np.ndarray:
    """Mask levels (``mask_levels``; JPEG masks binary, nonzero = lesion) resized with
    nearest neighbour so that every pixel keeps a level."""
    mask = _open(path, where, "mask")
    if mask.size != image_size:
        raise DataError(
            f"{where}: mask {path.name} is {mask.size[0]}x{mask.size[1]} px but the image is "
            f"{image_size[0]}x{image_size[1]} px; masks must have the image's size."
        )
    if path.suffix.lower() in LOSSY_SUFFIXES:  # compression noise: binary, as before levels
        levels = (_to_uint8(np.asarray(mask.convert("I"))) > 0).astype(np.uint8)
    else:
        try:
            levels = mask_levels(_mask_values(mask), path.name)
        except ValueError as error:
            raise DataError(f"{where}: {error}") from None
    image = Image.fromarray(levels)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(image, dtype=np.uint8)


def _assign_splits(table: pd.DataFrame, labels: np.ndarray, fraction: float, seed: int) -> list:
    """The CSV's split column, or a seeded stratified test split (rest train)."""
    if "split" in table.columns:
        return [s.strip() for s in table["split"]]
    # lazy: the Snakemake process imports this module for its config checks, not sklearn
    from sklearn.model_selection import train_test_split

    strata = labels[:, 0] if labels.shape[1] == 1 else None
    index = np.arange(len(table))
    try:
        _, test = train_test_split(index, test_size=fraction, random_state=seed, stratify=strata)
    except ValueError:  # a class too small to stratify: plain seeded split
        _, test = train_test_split(index, test_size=fraction, random_state=seed)
    split = np.array(["train"] * len(table), dtype=object)
    split[test] = "test"
    return split.tolist()


def build_folder_dataset(spec: Mapping, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Read a folder dataset into the npz contract (see module doc); errors name the row."""
    spec = resolve_spec(spec)
    errors = manifest_errors(spec)
    if errors:
        raise DataError("Invalid custom dataset:\n  " + "\n  ".join(errors))
    table = _read_csv(spec)
    csv, root = _csv_path(spec), Path(str(spec["root"]))
    names, channels = label_names(spec), spec["channels"]
    with_masks = "mask" in table.columns and table["mask"].str.strip().ne("").any()
    images, labels, masks, has_mask = [], [], [], []
    for index, row in table.iterrows():
        where = _row_name(csv, index, row)
        image, original = _load_image(_inside(root, row["path"].strip()), size, channels, where)
        images.append(image)
        labels.append(_parse_labels(row["label"], names, spec["task"]))
        cell = str(row.get("mask", "")).strip()
        has_mask.append(bool(cell))
        if with_masks:
            masks.append(
                _load_mask(_inside(root, cell), size, original, where)
                if cell
                else np.zeros((size, size), np.uint8)
            )
    labels_array = label_array(labels)  # int8 with -1 only where a label is uncertain
    splits = np.array(_assign_splits(table, labels_array, spec["test_fraction"], seed))
    image_shape = (size, size) if channels == 1 else (size, size, 3)
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        chosen = np.flatnonzero(splits == split)
        out[f"{split}_images"] = (
            np.stack([images[i] for i in chosen])
            if len(chosen)
            else np.zeros((0, *image_shape), np.uint8)
        )
        out[f"{split}_labels"] = labels_array[chosen]
        if with_masks:
            out[f"{split}_masks"] = (
                np.stack([masks[i] for i in chosen])
                if len(chosen)
                else np.zeros((0, size, size), np.uint8)
            )
            out[f"{split}_has_mask"] = np.asarray(has_mask, dtype=bool)[chosen]
        if "fold" in table.columns and split != "test":
            out[f"{split}_folds"] = table["fold"].to_numpy()[chosen].astype(np.int16)
    if not len(out["test_images"]) or not len(out["train_images"]):
        raise DataError(f"{csv}: the train and test splits must each hold at least one image.")
    return out


def build_custom_dataset(spec: Mapping, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays of a ``data.custom`` entry: a folder dataset or the synthetic generator."""
    spec = resolve_spec(spec)
    if spec["source"] == "synthetic":
        # lazy: synthetic imports scipy and scikit-image, which the config checks do not need
        from saliency_robustness.datasets.synthetic import make_synthetic

        arrays = make_synthetic(
            spec["splits"],
            size,
            spec["channels"],
            seed,
            spec["task"],
            ring_width=int(spec.get("ring_width") or 0),
        )
        for split in SPLITS:  # every synthetic image has a (possibly empty) mask
            arrays[f"{split}_has_mask"] = np.ones(len(arrays[f"{split}_images"]), dtype=bool)
        return arrays
    return build_folder_dataset(spec, size, seed)


def write_npz(arrays: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write the arrays as an (uncompressed, like MedMNIST) npz, atomically."""
    # lazy: tables imports pyarrow, which the config checks do not need
    from saliency_robustness.tables import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
