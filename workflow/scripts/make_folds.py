"""Stratified k-fold assignment over train+val (or the custom CSV's own fold column); the
official test split stays held out."""

import numpy as np

from saliency_robustness.datasets.folds import folds_from_column, make_folds, pooled_train_val
from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import write_parquet

log_to_file(snakemake.log[0])
arrays = load_npz(snakemake.input[0])
_, labels, sources = pooled_train_val(arrays)
if "train_folds" in arrays:  # folds given by the dataset (custom CSV 'fold' column)
    column = np.concatenate([arrays["train_folds"], arrays["val_folds"]])
    folds = folds_from_column(column, labels, sources, k=snakemake.params.k)
else:
    folds = make_folds(labels, sources, k=snakemake.params.k, seed=snakemake.params.seed)
write_parquet(folds, snakemake.output[0])
