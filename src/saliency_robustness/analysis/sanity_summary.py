"""Randomisation sanity checks summarised per stage, with whether the maps of the fully
randomised model fall below the pass threshold. Pandas only, so the summary job needs no
torch."""

from __future__ import annotations

import numpy as np
import pandas as pd

SIMILARITIES = ("ssim", "spearman", "hog")


def summarise_randomisation(table: pd.DataFrame, pass_threshold: float) -> pd.DataFrame:
    """Long table: mean, std and n of each similarity per stage, with ``passed``: whether
    the mean similarity after the last stage (the whole model randomised) is below
    ``pass_threshold``. Keeps the key columns of ``table`` (dataset, arch, fold, method,
    variant) that are present."""
    keys = [c for c in ("dataset", "arch", "fold", "method", "variant") if c in table]
    rows = []
    for key, group in table.groupby(keys, sort=True):
        key = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        last = group["stage_index"].max()
        for metric in SIMILARITIES:
            final = group.loc[group["stage_index"] == last, metric].mean()
            passed = bool(np.isfinite(final) and final < pass_threshold)
            for (index, stage), per_stage in group.groupby(["stage_index", "stage"], sort=True):
                values = per_stage[metric].to_numpy(dtype=float)
                finite = np.isfinite(values)
                rows.append(
                    {
                        **key,
                        "stage_index": int(index),
                        "stage": stage,
                        "metric": metric,
                        "mean": float(values[finite].mean()) if finite.any() else np.nan,
                        "std": float(values[finite].std()) if finite.any() else np.nan,
                        "n_images": int(finite.sum()),
                        "passed": passed,
                    }
                )
    return pd.DataFrame(rows)
