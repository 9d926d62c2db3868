"""Atomic file writes and Parquet I/O shared by every stage."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or exception leaves neither a half-written ``path`` nor the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the permissions of an ordinary file
        # so that group members of a shared project folder can read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def map_column_options(schema: pa.Schema, map_columns: Sequence[str]) -> dict:
    """``pq.write_table`` options for columns that hold float maps (lists of near-unique
    floats): zstd (level 9), byte-stream split on their leaf column and no dictionary for it.

    Dictionary encoding of near-unique floats inflates them (saliency maps cost ~5 bytes
    per float32 pixel with pyarrow's defaults), so it stays on only for the other columns,
    named. pyarrow 25 applies byte-stream split only to a leaf column named in full
    (``saliency.list.element``; naming ``saliency`` is silently ignored) whose dictionary
    encoding is off. DuckDB (2.0) decodes byte-stream split for 4- and 8-byte floats but
    not for float16: it reads every other column of a float16 table (config/README.md
    "Saliency tables"). Sizes: bench/saliency_storage.py.
    """
    missing = set(map_columns) - set(schema.names)
    if missing:
        raise KeyError(f"Map columns {sorted(missing)} are not in the table.")
    return {
        "compression": "zstd",
        # level 9: the default study's float16 tables (one row group per fold) take 1.46
        # bytes per pixel against 1.50 at zstd's default level, at a cost that is small
        # next to attribution's (level 19: 1.41, several times slower again)
        "compression_level": 9,
        "use_dictionary": [name for name in schema.names if name not in map_columns],
        "use_byte_stream_split": [f"{name}.list.element" for name in map_columns],
    }


def write_parquet(
    table: pd.DataFrame | pa.Table, path: str | os.PathLike, map_columns: Sequence[str] = ()
) -> None:
    """Write a table atomically, keeping explicit column types; ``map_columns`` are stored
    compactly (``map_column_options``)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    options = map_column_options(table.schema, map_columns) if map_columns else {}
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **options)


def write_parquet_parts(
    parts: Iterable[pa.Table],
    path: str | os.PathLike,
    schema: pa.Schema,
    map_columns: Sequence[str] = (),
) -> int:
    """Write tables of one ``schema`` one after another into one Parquet file, atomically,
    holding one part in memory at a time (a job's folds); returns the number of rows."""
    options = map_column_options(schema, map_columns) if map_columns else {}
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, **options) as writer:
        for part in parts:
            writer.write_table(part)
            rows += part.num_rows
    return rows


class UnreadableTableError(ValueError):
    """A Parquet file that exists but cannot be read (truncated, overwritten, not Parquet)."""


def _read_one(
    path: str | os.PathLike, columns: list[str] | None, filters: list | None = None
) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, columns=columns, filters=filters)
    except (pa.ArrowException, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnreadableTableError(
            f"{path} is not a readable Parquet file ({cause}); it is probably left over from an "
            "interrupted run or was overwritten. Delete it so that Snakemake rebuilds it, or "
            f"rerun the job that writes it: snakemake --forcerun {path}"
        ) from error


def read_parquet(
    paths: str | os.PathLike | list,
    columns: list[str] | None = None,
    filters: list | None = None,
) -> pd.DataFrame:
    """Read one Parquet file or concatenate several (same schema); an unreadable file is
    named with the way to rebuild it. ``filters``: pyarrow's row filters, e.g.
    ``[("fold", "==", 0)]`` (row groups of other values are skipped)."""
    if isinstance(paths, (str, os.PathLike)):
        return _read_one(paths, columns, filters)
    frames = [_read_one(p, columns, filters) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# The perturbation name of clean rows in saliency tables: each clean map is stored once
# per (model, method), at severity 0.
CLEAN = "none"
# Key columns of the result tables, each written once here and composed elsewhere.
MODEL_KEYS = ["dataset", "arch", "fold"]  # one trained model
MAP_KEYS = [*MODEL_KEYS, "method"]  # one model's maps by one method (a saliency table)
CONDITION_KEYS = ["perturbation", "severity"]  # one test condition (clean: severity 0)


def over_folds(keys: Sequence[str]) -> list[str]:
    """``keys`` without ``fold``: the keys of a summary over the folds of a model."""
    return [key for key in keys if key != "fold"]


def read_saliency(
    paths: str | os.PathLike | Sequence[str | os.PathLike], fold: int | None = None
) -> pd.DataFrame:
    """Saliency tables as stored (clean rows once, under perturbation ``CLEAN``), in the
    comparison form that the metrics take (``with_clean_rows``); only ``fold``'s rows when
    it is given (each fold is its own row group, so the others are not read)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("No saliency tables to read.")
    filters = [("fold", "==", int(fold))] if fold is not None else None
    return with_clean_rows(read_parquet(paths, filters=filters))


def saliency_folds(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[int]:
    """The folds that saliency tables hold, in increasing order."""
    folds = read_parquet(paths, columns=["fold"])["fold"]
    return sorted(int(fold) for fold in folds.unique())


def with_clean_rows(saliency: pd.DataFrame) -> pd.DataFrame:
    """The comparison form of saliency tables: each model's clean rows (perturbation
    ``CLEAN``) repeated as severity 0 under each of its perturbations, ahead of that
    perturbation's rows, so that every perturbation holds its own reference.

    The metric functions (saliency change, agreement, localisation, faithfulness, the
    example figure) compare within a perturbation; the files store each clean map once. A
    model with clean rows only keeps them under ``CLEAN``. Perturbed rows of a model
    without clean rows are an error (its clean table is missing).
    """
    if saliency.empty:
        return saliency.reset_index(drop=True)
    parts = []
    for model, rows in saliency.groupby(MAP_KEYS, sort=False):
        is_clean = (rows["perturbation"] == CLEAN).to_numpy()
        clean, perturbed = rows[is_clean], rows[~is_clean]
        if perturbed.empty:
            parts.append(clean)
            continue
        if clean.empty:
            raise ValueError(
                f"Saliency rows of {dict(zip(MAP_KEYS, model, strict=True))} have no clean "
                f"rows (perturbation {CLEAN!r}): its clean table is missing; rerun the "
                "attribute_clean rule."
            )
        for name, group in perturbed.groupby("perturbation", sort=False):
            parts += [clean.assign(perturbation=name), group]
    return pd.concat(parts, ignore_index=True)


def maps_from_table(table: pd.DataFrame) -> np.ndarray:
    """Saliency column of a saliency table as an array (N, H, W)."""
    if table.empty:
        return np.zeros((0, 0, 0), np.float32)
    height, width = int(table["height"].iloc[0]), int(table["width"].iloc[0])
    return np.stack(table["saliency"].to_numpy()).astype(np.float32).reshape(-1, height, width)
