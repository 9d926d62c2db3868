"""Bytes per map pixel of a run's saliency tables, and what float16 does to the change metrics.

    PYTHONPATH=src .venv/bin/python bench/saliency_storage.py RUN_DIR [--top-k-percent 10]

RUN_DIR is a workflow run (its results/saliency/). It reads every saliency table, in either
layout: this one (clean maps once per (model, method) under perturbation 'none') or the
layout before it (one file per model and method, the clean maps repeated under each
perturbation as severity 0). It prints:

- as stored: file bytes / stored map pixels (rows x height x width), and file bytes /
  distinct map pixels (each clean map counted once);
- the same maps re-encoded in memory, float16 and float32, with pyarrow's defaults, with
  zstd, with zstd and no dictionary for the map column, and with
  ``tables.map_column_options`` (what the workflow writes: zstd, no dictionary for the map
  column, byte-stream split on its leaf);
- float16 error: the change metrics (``metrics.saliency_change``) on the maps as stored and
  on their float16 rounding, per model and method; the largest absolute difference per
  metric, and how many rows change their ``collapsed`` flag. Meaningful when the run stored
  float32 maps (with float16 tables both sides are equal).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from saliency_robustness.analysis.saliency_change import saliency_change
from saliency_robustness.tables import CLEAN, map_column_options, with_clean_rows

MAP_METRICS = ["rmse", "ssim", "spearman", "topk_iou", "map_entropy", "map_gini"]


def map_pixels(table: pa.Table) -> int:
    return int(table.num_rows * table.schema.field("saliency").type.list_size)


def distinct_rows(frame: pd.DataFrame) -> int:
    """Rows with each clean map counted once (the old layout repeats them)."""
    clean = frame["severity"] == 0
    keys = ["dataset", "arch", "fold", "method", "image_index", "target"]
    return int((~clean).sum() + len(frame.loc[clean, keys].drop_duplicates()))


def with_maps(table: pa.Table, dtype: np.dtype) -> pa.Table:
    field = table.schema.field("saliency")
    flat = table.column("saliency").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    column = pa.FixedSizeListArray.from_arrays(pa.array(flat.astype(dtype)), field.type.list_size)
    index = table.schema.get_field_index("saliency")
    return table.set_column(index, pa.field("saliency", column.type), column)


def encoded_bytes(table: pa.Table, **options) -> int:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
    return buffer.getbuffer().nbytes


def comparison_form(frame: pd.DataFrame) -> pd.DataFrame:
    return with_clean_rows(frame) if (frame["perturbation"] == CLEAN).any() else frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--top-k-percent", type=float, default=10)
    args = parser.parse_args()
    paths = sorted((args.run_dir / "results" / "saliency").rglob("*.parquet"))
    if not paths:
        raise SystemExit(f"No saliency tables under {args.run_dir}/results/saliency.")
    tables = [pq.read_table(path) for path in paths]
    stored_bytes = sum(path.stat().st_size for path in paths)
    pixels = sum(map_pixels(table) for table in tables)
    frames = [table.to_pandas() for table in tables]
    per_row = pixels / sum(len(frame) for frame in frames)
    distinct = sum(distinct_rows(frame) for frame in frames) * per_row
    value_type = tables[0].schema.field("saliency").type.value_type
    print(f"{len(paths)} tables, {sum(len(f) for f in frames)} rows, maps stored as {value_type}")
    print(f"as stored: {stored_bytes} bytes, {stored_bytes / pixels:.3f} B per stored map pixel, "
          f"{stored_bytes / distinct:.3f} B per distinct map pixel")  # fmt: skip

    print("\nre-encoded (B per stored map pixel):")
    for name, dtype in (("float16", np.float16), ("float32", np.float32)):
        converted = [with_maps(table, dtype) for table in tables]
        compact = [map_column_options(t.schema, ["saliency"]) for t in converted]
        plain = [{**options, "use_byte_stream_split": []} for options in compact]
        rows = {
            "pyarrow defaults": [encoded_bytes(t) for t in converted],
            "zstd": [encoded_bytes(t, compression="zstd") for t in converted],
            "zstd, no dictionary": [
                encoded_bytes(t, **o) for t, o in zip(converted, plain, strict=True)
            ],
            "map_column_options (+ byte-stream split)": [
                encoded_bytes(t, **o) for t, o in zip(converted, compact, strict=True)
            ],
        }
        for label, sizes in rows.items():
            print(f"  {name} {label:<40} {sum(sizes) / pixels:.3f}")

    print(f"\nfloat16 error of the change metrics (top-k {args.top_k_percent} %), max |diff|:")
    if value_type == pa.float16():
        print("  (the run stored float16 maps: rerun with attribute.precision float32)")
    models = pd.concat(frames, ignore_index=True)
    errors = {metric: 0.0 for metric in MAP_METRICS}
    collapsed, n_rows = 0, 0
    for _, frame in models.groupby(["dataset", "arch", "fold", "method"], sort=False):
        frame = comparison_form(frame.reset_index(drop=True))
        rounded = frame.assign(saliency=[m.astype(np.float16) for m in frame["saliency"]])
        full = saliency_change(frame, args.top_k_percent)
        half = saliency_change(rounded, args.top_k_percent)
        for metric in MAP_METRICS:
            diff = np.abs(full[metric].to_numpy() - half[metric].to_numpy())
            errors[metric] = max(errors[metric], float(np.nanmax(diff)) if len(diff) else 0.0)
        collapsed += int((full["collapsed"] != half["collapsed"]).sum())
        n_rows += len(full)
    for metric, error in errors.items():
        print(f"  {metric:<12} {error:.2e}")
    print(f"  collapsed flag changed on {collapsed} of {n_rows} rows")


if __name__ == "__main__":
    main()
