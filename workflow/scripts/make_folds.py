"""Stratified k-fold assignment over train+val; the official test split stays held out."""

from saliency_robustness.data import load_npz, make_folds, pooled_train_val
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import write_parquet

log_to_file(snakemake.log[0])
_, labels, sources = pooled_train_val(load_npz(snakemake.input[0]))
folds = make_folds(labels, sources, k=snakemake.params.k, seed=snakemake.params.seed)
write_parquet(folds, snakemake.output[0])
