"""Saliency tables: one model's maps of the clean test images and of their perturbed
versions as Arrow tables in ``saliency_schema``, and the loading of one fold's trained
model at a time for the attribution jobs.

``attribute_clean`` fixes each image's targets (the clean prediction or the true label;
multi-label: the top-k labels) and stores the clean maps once; ``attribute_perturbed``
attributes the perturbed versions for the same targets. The workflow writes the two apart
(``tables.with_clean_rows`` joins them into the comparison form the metrics read). Each row
carries the model's keys, the target's probabilities, the map at the storage precision,
whether it is constant or signed, and, for methods with a completeness property, its
convergence delta and relative completeness error.

Memory is bounded by the attribution batch size and each method's parameters
(``internal_batch_size``, ``perturbations_per_eval``, ``batch_size``), never by the number
of steps, samples or perturbations. Stochastic methods draw their randomness per image from
a seed derived from the run's seed and the image's pixels, so a map depends neither on the
batch size nor on the image's neighbours, and the same configuration gives identical maps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn
from tqdm import tqdm

from saliency_robustness.analysis.map_similarity import constant_maps
from saliency_robustness.attribution.completeness import Completeness
from saliency_robustness.attribution.maps import compute_maps_and_completeness, top_k_targets
from saliency_robustness.attribution.registry import is_signed
from saliency_robustness.evaluation import (
    MULTI_LABEL_THRESHOLD,
    multi_label_array,
    predict_proba,
)
from saliency_robustness.models.loading import load_trained_model
from saliency_robustness.tables import CLEAN, MAP_KEYS, MODEL_KEYS

log = logging.getLogger(__name__)


# attribute_clean and attribute_perturbed warn when the median relative completeness error
# of one table (one model and method) is above this: a study's target is 5 %, but one
# model's median scatters around it (default study at 64 steps: 1.6, 7.9 and 6.3 % by fold;
# at 16 steps 6.2, 26 and 24 %).
COMPLETENESS_WARNING = 0.10
# Columns of the saliency table that tables written before them lack (readers must treat
# them as optional): float32, null for methods without a completeness property.
COMPLETENESS_COLUMNS = ("convergence_delta", "completeness_error")
# Storage types of the saliency column (attribute.precision). float16 keeps 11 significant
# bits: on the default study's maps RMSE and SSIM move by at most 2.4e-4, Spearman by
# 2.2e-3 and the top-k IoU by 1.3e-2 (new ties at the cut-off); config/README.md
# "Saliency tables", bench/saliency_storage.py.
PRECISIONS = {"float16": pa.float16(), "float32": pa.float32()}


def _map_type(precision: str) -> pa.DataType:
    if precision not in PRECISIONS:
        raise ValueError(
            f"attribute.precision: unknown value {precision!r}; allowed: {', '.join(PRECISIONS)}."
        )
    return PRECISIONS[precision]


def saliency_schema(
    height: int,
    width: int,
    n_classes: int,
    completeness: bool = False,
    precision: str = "float32",
) -> pa.Schema:
    """Schema of the saliency Parquet files (documented in config/README.md).

    ``completeness=True``: the schema ``attribute_clean``/``attribute_perturbed`` (and so
    the workflow) write, ending in ``COMPLETENESS_COLUMNS``; False: the columns every
    saliency table has, including those written before the completeness columns existed.
    ``precision`` is the saliency column's float type (``PRECISIONS``).
    """
    extra = [(name, pa.float32()) for name in COMPLETENESS_COLUMNS] if completeness else []
    return pa.schema(
        [
            ("dataset", pa.string()),
            ("arch", pa.string()),
            ("fold", pa.int16()),
            ("method", pa.string()),
            ("perturbation", pa.string()),
            ("severity", pa.int8()),
            ("image_index", pa.int32()),
            ("label", pa.int16()),
            ("target", pa.int16()),
            ("predicted", pa.int16()),
            ("target_probability", pa.float32()),
            ("probabilities", pa.list_(pa.float32(), n_classes)),
            ("height", pa.int16()),
            ("width", pa.int16()),
            ("signed", pa.bool_()),
            ("is_constant", pa.bool_()),
            ("saliency", pa.list_(_map_type(precision), height * width)),
            *extra,
        ]
    )


def models_by_fold(
    paths: Sequence[str], folds: Sequence[int], members: Sequence[str] = ()
) -> list[tuple[int, list[str]]]:
    """A fold-major list of model files (every member's of a fold for an ensemble, else
    one per fold), as (fold, that fold's files): the models one attribution job loads."""
    per_fold = max(len(members), 1)
    if len(paths) != per_fold * len(folds):
        raise ValueError(
            f"{len(paths)} model files for {len(folds)} folds of {per_fold} member(s) each."
        )
    return [
        (int(fold), list(paths[i * per_fold : (i + 1) * per_fold])) for i, fold in enumerate(folds)
    ]


def trained_models_by_fold(
    paths: Sequence[str],
    folds: Sequence[int],
    arch: str,
    members: Sequence[str],
    info,
    image_size: int,
    device: torch.device | str,
    weights: str | None = None,
    train: dict | None = None,
) -> Iterator[tuple[int, nn.Module]]:
    """(fold, trained model) one fold at a time, so a fold's work is done before the next
    model loads; an ensemble (``members``, from train.ensembles) loads every member's file.
    ``train``: the config's train section, from which each model's resolved settings (a
    variant's base architecture, weights and head) are taken
    (``models.loading.load_trained_model``).
    """
    ensembles = {arch: list(members)} if members else {}
    for fold, fold_paths in models_by_fold(paths, folds, members):
        model_paths = fold_paths if members else fold_paths[0]
        model = load_trained_model(
            model_paths, arch, info, image_size, device, ensembles, weights, train
        )
        yield fold, model


def attribute_clean(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    method: str,
    params: dict,
    keys: dict,
    target: str = "predicted",
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    multi_label: bool = False,
    top_k: int = 1,
    precision: str = "float32",
) -> pa.Table:
    """Maps of the clean ``images`` (perturbation ``tables.CLEAN``, 'none'; severity 0), one table
    in ``saliency_schema(..., completeness=True, precision=precision)``.

    The target class of each image is fixed here, from the clean image (the model's
    prediction, or the true label with ``target='label'``); ``attribute_perturbed`` keeps
    it for the image's perturbed versions. ``keys`` holds dataset/arch/fold.

    Multi-label (``multi_label``; labels (N, L) 0/1, sigmoid outputs): each image gets
    ``top_k`` targets, its ``top_k`` highest-scoring labels on the clean image
    (``top_k_targets``; with ``target='label'`` the image's present labels rank first), one
    row per (image, target). ``label`` is then the true presence of the target label and
    ``predicted`` its predicted presence (sigmoid probability above
    ``MULTI_LABEL_THRESHOLD``). ``top_k`` is ignored for single-label tasks.

    Methods with a completeness property (``has_completeness``) fill ``convergence_delta``
    and ``completeness_error`` per map (``Completeness``); the rest leave them null. A
    table whose median ``completeness_error`` exceeds ``COMPLETENESS_WARNING`` is logged as
    a warning (raise the method's ``n_steps``).
    """
    _map_type(precision)
    clean_probs = predict_proba(model, images, batch_size, device, multi_label)
    if multi_label:
        label_matrix = multi_label_array(labels, clean_probs.shape[1])
        if not 1 <= top_k <= clean_probs.shape[1]:
            raise ValueError(
                f"attribute.top_k_targets is {top_k} but the dataset has "
                f"{clean_probs.shape[1]} labels; set it between 1 and {clean_probs.shape[1]}."
            )
        # label: present labels (2 + p) outrank absent ones (p in [0, 1]), then by score
        ranking = clean_probs if target == "predicted" else 2.0 * label_matrix + clean_probs
        image_index, targets = top_k_targets(ranking, top_k)
        row_labels = label_matrix[image_index, targets]
    else:
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        image_index = np.arange(len(images))
        targets = clean_probs.argmax(axis=1) if target == "predicted" else labels
        row_labels = labels
    rows = _Rows(keys, method, params, image_index, targets, row_labels, multi_label, precision)
    table = rows.level(model, images, clean_probs[image_index], CLEAN, 0, batch_size, seed, device)
    _warn_if_not_converged(method, params, table.column("completeness_error"))
    return table


def attribute_perturbed(
    model: nn.Module,
    clean: pa.Table | pd.DataFrame,
    perturbed: dict[str, tuple[list[int], np.ndarray]],
    method: str,
    params: dict,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    multi_label: bool = False,
    precision: str = "float32",
) -> pa.Table:
    """Maps of the perturbed versions of one model's attributed images, for the targets of
    its ``clean`` table (``attribute_clean``'s output for this model and method).

    ``perturbed`` maps a perturbation name to (severities, images (S, N, H, W[, C])), the
    test images in their original order (row ``image_index`` of the clean table is image
    ``image_index`` here). Rows: per perturbation and severity, the clean table's (image,
    target) rows in its order, with the keys, ``label`` and ``target`` of the clean rows.
    A stochastic method's maps do not depend on which job computes them (``image_seeds``).
    """
    _map_type(precision)
    if isinstance(clean, pa.Table):
        columns = [*MAP_KEYS, "perturbation", "image_index", "label", "target"]
        clean = clean.select(columns).to_pandas()
    if clean.empty or set(clean["perturbation"]) != {CLEAN}:
        raise ValueError(f"attribute_perturbed needs the model's clean saliency rows ({CLEAN!r}).")
    models = clean[MAP_KEYS].drop_duplicates()
    if len(models) != 1 or models["method"].iloc[0] != method:
        raise ValueError(
            f"attribute_perturbed takes the clean rows of one model and method ({method}); "
            f"got {models.to_dict('records')}."
        )
    keys = models.iloc[0][MODEL_KEYS].to_dict()
    image_index = clean["image_index"].to_numpy(np.int64)
    rows = _Rows(
        keys, method, params, image_index, clean["target"].to_numpy(np.int64),
        clean["label"].to_numpy(np.int64), multi_label, precision,
    )  # fmt: skip
    attributed = np.unique(image_index)  # predictions once per image, not per target
    to_rows = np.searchsorted(attributed, image_index)
    levels = [
        (name, int(severity), stack[i])
        for name, (severities, stack) in perturbed.items()
        for i, severity in enumerate(severities)
    ]
    if not levels:
        raise ValueError("attribute_perturbed: no perturbed image sets given.")
    tables = []
    for name, severity, images in tqdm(levels, desc=method, unit="set", disable=not progress):
        if images.shape[0] <= attributed[-1]:
            raise ValueError(
                f"{name} severity {severity} holds {images.shape[0]} images, but the clean "
                f"table attributes test image {attributed[-1]}; rebuild the perturbed set."
            )
        probs = predict_proba(model, images[attributed], batch_size, device, multi_label)
        tables.append(
            rows.level(model, images, probs[to_rows], name, severity, batch_size, seed, device)
        )
        log.info("%s %s severity %d: %d maps", method, name, severity, len(image_index))
    table = pa.concat_tables(tables)
    _warn_if_not_converged(method, params, table.column("completeness_error"))
    return table


class _Rows:
    """Builds saliency tables of one model and method for fixed (image, target) rows."""

    def __init__(
        self,
        keys: dict,
        method: str,
        params: dict,
        image_index: np.ndarray,
        targets: np.ndarray,
        labels: np.ndarray,
        multi_label: bool,
        precision: str,
    ) -> None:
        self.keys, self.method, self.params = keys, method, params
        self.image_index, self.targets, self.labels = image_index, targets, labels
        self.multi_label, self.precision = multi_label, precision

    def level(
        self,
        model: nn.Module,
        images: np.ndarray,
        probs: np.ndarray,
        perturbation: str,
        severity: int,
        batch_size: int,
        seed: int,
        device,
    ) -> pa.Table:
        """Rows of one image set (clean, or one perturbation at one severity); ``probs``
        are the model's probabilities of each row's image."""
        torch.manual_seed(seed)  # stochastic methods give the same maps for the same config
        maps, check = compute_maps_and_completeness(
            model, images[self.image_index], self.targets, self.method, self.params,
            batch_size, device, seed,
        )  # fmt: skip
        return self.table(images.shape[1:3], probs, maps, check, perturbation, severity)

    def table(
        self,
        size: tuple[int, int],
        probs: np.ndarray,
        maps: np.ndarray,
        check: Completeness | None,
        perturbation: str,
        severity: int,
    ) -> pa.Table:
        """One Arrow table in ``saliency_schema``; the maps rounded to the storage
        precision first, so that ``is_constant`` describes the stored maps."""
        n, (height, width) = len(maps), size
        schema = saliency_schema(height, width, probs.shape[1], True, self.precision)
        stored = maps.reshape(n, -1).astype(
            schema.field("saliency").type.value_type.to_pandas_dtype()
        )
        delta = check.delta if check is not None else np.full(n, np.nan)
        error = check.error if check is not None else np.full(n, np.nan)
        target_probability = probs[np.arange(n), self.targets]
        predicted = (
            (target_probability > MULTI_LABEL_THRESHOLD).astype(np.int64)
            if self.multi_label
            else probs.argmax(axis=1)
        )

        def repeat(value) -> np.ndarray:
            return np.full(n, value)

        def fixed_lists(values: np.ndarray, size: int) -> pa.Array:
            return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), size)

        columns = {
            "dataset": repeat(self.keys["dataset"]),
            "arch": repeat(self.keys["arch"]),
            "fold": repeat(int(self.keys["fold"])),
            "method": repeat(self.method),
            "perturbation": repeat(perturbation),
            "severity": repeat(severity),
            "image_index": self.image_index,
            "label": self.labels,
            "target": self.targets,
            "predicted": predicted,
            "target_probability": target_probability,
            "probabilities": fixed_lists(probs.astype(np.float32), probs.shape[1]),
            "height": repeat(height),
            "width": repeat(width),
            "signed": repeat(is_signed(self.method, self.params)),
            "is_constant": constant_maps(stored.astype(np.float32).reshape(maps.shape)),
            "saliency": fixed_lists(stored, height * width),
            "convergence_delta": delta,
            "completeness_error": error,
        }
        arrays = [
            column
            if isinstance(column := columns[field.name], pa.Array)
            # from_pandas: NaN (no completeness value) becomes null
            else pa.array(column, field.type, from_pandas=True)
            for field in schema
        ]
        return pa.Table.from_arrays(arrays, schema=schema)


def _warn_if_not_converged(method: str, params: dict, errors: pa.ChunkedArray) -> None:
    errors = errors.to_numpy(zero_copy_only=False).astype(np.float64)
    errors = errors[np.isfinite(errors)]
    if len(errors) and np.median(errors) > COMPLETENESS_WARNING:
        steps = f" (n_steps {params['n_steps']})" if "n_steps" in params else ""
        log.warning(
            "%s%s: median relative completeness error %.1f %% (max %.1f %%) over %d maps, "
            "above %.0f %%: the path integral is not converged; raise "
            "attribute.params.%s.n_steps.",
            method, steps, 100 * np.median(errors), 100 * errors.max(), len(errors),
            100 * COMPLETENESS_WARNING, method,
        )  # fmt: skip
