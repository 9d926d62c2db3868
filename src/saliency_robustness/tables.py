"""Atomic file writes and Parquet I/O shared by every stage."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
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


def write_parquet(table: pd.DataFrame | pa.Table, path: str | os.PathLike) -> None:
    """Write a table atomically, keeping explicit column types."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class UnreadableTableError(ValueError):
    """A Parquet file that exists but cannot be read (truncated, overwritten, not Parquet)."""


def _read_one(path: str | os.PathLike, columns: list[str] | None) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, columns=columns)
    except (pa.ArrowException, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnreadableTableError(
            f"{path} is not a readable Parquet file ({cause}); it is probably left over from an "
            "interrupted run or was overwritten. Delete it so that Snakemake rebuilds it, or "
            f"rerun the job that writes it: snakemake --forcerun {path}"
        ) from error


def read_parquet(paths: str | os.PathLike | list, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one Parquet file or concatenate several (same schema); an unreadable file is
    named with the way to rebuild it."""
    if isinstance(paths, (str, os.PathLike)):
        return _read_one(paths, columns)
    frames = [_read_one(p, columns) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def maps_from_table(table: pd.DataFrame) -> np.ndarray:
    """Saliency column of a saliency table as an array (N, H, W)."""
    if table.empty:
        return np.zeros((0, 0, 0), np.float32)
    height, width = int(table["height"].iloc[0]), int(table["width"].iloc[0])
    return np.stack(table["saliency"].to_numpy()).astype(np.float32).reshape(-1, height, width)
