"""Classification metrics per perturbation and severity, mean over folds with hierarchical-
bootstrap intervals, from every model's per-image predictions."""

from saliency_robustness.analysis.classification_summary import summarise_classification
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import read_parquet, write_parquet

log_to_file(snakemake.log[0])
write_parquet(
    summarise_classification(read_parquet(list(snakemake.input)), **snakemake.params.bootstrap),
    snakemake.output[0],
)
