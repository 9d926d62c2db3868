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


def read_parquet(paths: str | os.PathLike | list) -> pd.DataFrame:
    """Read one Parquet file or concatenate several (same schema)."""
    if isinstance(paths, (str, os.PathLike)):
        return pd.read_parquet(paths)
    frames = [pd.read_parquet(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def maps_from_table(table: pd.DataFrame) -> np.ndarray:
    """Saliency column of a saliency table as an array (N, H, W)."""
    if table.empty:
        return np.zeros((0, 0, 0), np.float32)
    height, width = int(table["height"].iloc[0]), int(table["width"].iloc[0])
    return np.stack(table["saliency"].to_numpy()).astype(np.float32).reshape(-1, height, width)
