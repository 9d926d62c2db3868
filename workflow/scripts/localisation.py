"""Localisation scores of one architecture's (every fold's) and method's saliency maps
against the lesion masks."""

import numpy as np
import pandas as pd

from saliency_robustness.analysis.localisation import localisation
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import read_saliency, saliency_folds, write_parquet

log_to_file(snakemake.log[0])
with np.load(snakemake.input.data, allow_pickle=False) as npz:
    if "test_masks" not in npz.files:
        raise ValueError(f"{snakemake.input.data} has no lesion masks (test_masks).")
    masks = npz["test_masks"]
    has_mask = npz["test_has_mask"] if "test_has_mask" in npz.files else None
paths = list(snakemake.input.saliency)
graded = snakemake.params.graded_hit
table = pd.concat(
    [
        localisation(
            read_saliency(paths, fold=fold),
            masks,
            snakemake.params.top_k_percent,
            has_mask,
            graded_scores=graded["graded_hit_scores"],
            graded_background=graded["graded_hit_background"],
        )
        for fold in saliency_folds(paths)
    ],
    ignore_index=True,
)
write_parquet(table, snakemake.output[0])
