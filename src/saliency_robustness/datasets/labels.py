"""Uncertain labels of multi-label own data (CheXpert's -1) and the soft targets they train on.

CSV cell (``label`` column of a ``task: multi-label`` folder dataset): entries separated by
``;``, each ``name`` (present), ``name:1`` (present), ``name:0`` (absent, the same as leaving
the name out) or ``name:-1`` (uncertain). Single-label tasks have no uncertain value: a -1
there is an error naming the CSV line.

Storage: ``{split}_labels`` keeps MedMNIST's layout, (N, L) 0/1. A dataset with at least one
uncertain entry stores it as int8 with ``UNCERTAIN`` (-1) in those entries; every other dataset
stays uint8, byte for byte as before. Readers take -1 as "no certain value": training turns it
into a soft target (``soft_targets``), the metrics leave it out per label
(``evaluation.per_label_metrics``), folds stratify it with the negatives.

Light module (NumPy and the standard library): the Snakefile's main process imports it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import numpy as np

UNCERTAIN = -1  # CheXpert's value for "uncertain", in the CSV and in the label arrays
ENTRY_SEPARATOR = ";"  # between the entries of a multi-label cell
VALUE_SEPARATOR = ":"  # between a label name and its value: "edema:-1"
VALUES = {"1": 1, "0": 0, "-1": UNCERTAIN}
# train.uncertain_labels: uniform soft-target range of the uncertain labels (Pham et al. 2021,
# "label smoothing" of CheXpert's U-Ones policy)
DEFAULT_RANGE = {"low": 0.55, "high": 0.85}
# Mixed into the training seed so the soft-target draws are a random stream of their own:
# they neither move nor depend on the weight initialisation and the batch order.
_SOFT_TARGET_STREAM = 0x5AFE_1ABE


def _entry(part: str, names: Sequence[str]) -> tuple[str, int] | str:
    """(name, value) of one entry of a multi-label cell, or an error message."""
    if part in names:  # a name that itself contains ':' stays a plain name
        return part, 1
    name, separator, value = (s.strip() for s in part.rpartition(VALUE_SEPARATOR))
    if not separator:
        if part in VALUES:
            return (
                f"value '{part}' without a label name; write 'name{VALUE_SEPARATOR}{part}' "
                f"(e.g. '{names[0] if names else 'edema'}{VALUE_SEPARATOR}{part}')"
            )
        return f"unknown label '{part}'; valid labels: {', '.join(names)}"
    if name not in names:
        return f"unknown label '{name}' in '{part}'; valid labels: {', '.join(names)}"
    if value not in VALUES:
        return (
            f"'{part}': the value after '{VALUE_SEPARATOR}' must be 1 (present), 0 (absent) "
            f"or -1 (uncertain), not '{value}'"
        )
    return name, VALUES[value]


def parse_multi_label_cell(cell: str, names: Sequence[str]) -> np.ndarray | str:
    """The (L,) int8 label row of one multi-label CSV cell (1, 0, or ``UNCERTAIN``), or an
    error message. A name given twice with different values is an error."""
    values: dict[str, int] = {}
    for part in (p.strip() for p in str(cell).split(ENTRY_SEPARATOR)):
        if not part:
            continue
        parsed = _entry(part, names)
        if isinstance(parsed, str):
            return parsed
        name, value = parsed
        if values.setdefault(name, value) != value:
            return f"label '{name}' is given twice with different values in '{cell}'"
    return np.array([values.get(name, 0) for name in names], dtype=np.int8)


def single_label_uncertain_error(cell: str, names: Sequence[str], task: str) -> str | None:
    """The error message for an uncertain value in a single-label cell, None for other cells."""
    text = str(cell).strip()
    if text in names:
        return None
    if text != str(UNCERTAIN) and not text.endswith(f"{VALUE_SEPARATOR}{UNCERTAIN}"):
        return None
    return (
        f"label '{text}' marks an uncertain label (-1), which only task multi-label supports; "
        f"task {task} needs one certain class per row: give the row one of "
        f"{', '.join(names)}, or drop the row"
    )


def label_array(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Label rows stacked into the npz's ``{split}_labels`` dtype: int8 where any entry is
    ``UNCERTAIN``, else uint8 (as MedMNIST and as before uncertain labels existed)."""
    stacked = np.stack(rows)
    return stacked.astype(np.int8 if (stacked == UNCERTAIN).any() else np.uint8)


def certain(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the entries with a certain value (not ``UNCERTAIN``)."""
    return np.asarray(labels) != UNCERTAIN


def soft_targets(labels: np.ndarray, low: float, high: float, seed: int) -> np.ndarray:
    """BCE targets of an (N, L) label matrix, float32: certain labels as they are (0 or 1),
    each uncertain one a draw from the uniform distribution on [``low``, ``high``).

    Drawn once per training run, from a generator seeded by ``seed`` (the training seed)
    alone, in row-major order of the uncertain entries: the same labels and seed give the
    same targets, in every epoch and after resuming from a checkpoint. Without uncertain
    entries no number is drawn and the result is the labels as float32.
    """
    labels = np.asarray(labels)
    targets = labels.astype(np.float32)
    uncertain = ~certain(labels)
    if uncertain.any():
        rng = np.random.default_rng([_SOFT_TARGET_STREAM, int(seed)])
        targets[uncertain] = rng.uniform(low, high, size=int(uncertain.sum()))
    return targets


def uncertain_range(train: Mapping | None) -> tuple[float, float]:
    """(low, high) of ``train.uncertain_labels``; the default where the key is absent (the
    train rule's params leave it out for datasets without uncertain labels)."""
    spec = {**DEFAULT_RANGE, **((train or {}).get("uncertain_labels") or {})}
    return float(spec["low"]), float(spec["high"])


def uncertain_range_errors(config: Mapping) -> list[str]:
    """Config-time problems of ``train.uncertain_labels`` the schema cannot express."""
    low, high = uncertain_range(config.get("train"))
    if low > high:
        return [
            f"train.uncertain_labels: low ({low}) is above high ({high}); soft targets are "
            "drawn from [low, high], so set low <= high (the default is 0.55 to 0.85)."
        ]
    return []


def csv_has_uncertain_labels(path: str | os.PathLike) -> bool:
    """Whether a folder dataset's CSV has an uncertain (-1) entry in its ``label`` column
    (standard-library CSV: cheap enough for a Snakemake input function)."""
    suffix = f"{VALUE_SEPARATOR}{UNCERTAIN}"
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            entries = (p.strip() for p in (row.get("label") or "").split(ENTRY_SEPARATOR))
            if any(entry.endswith(suffix) for entry in entries):
                return True
    return False
