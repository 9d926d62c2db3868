"""Localisation scores of every model and method of one dataset: mean and SD over folds,
with hierarchical-bootstrap intervals."""

from saliency_robustness.analysis.localisation import summarise_localisation
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import read_parquet, write_parquet

log_to_file(snakemake.log[0])
write_parquet(
    summarise_localisation(read_parquet(list(snakemake.input)), **snakemake.params.bootstrap),
    snakemake.output[0],
)
