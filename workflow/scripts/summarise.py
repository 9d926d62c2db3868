"""Gather one dataset's per-model tables into summary tables across folds, with intervals."""

from saliency_robustness.analysis.detection import misclassification_detection
from saliency_robustness.analysis.saliency_change import (
    severity_trends,
    summarise_change,
    variance_decomposition,
)
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import read_parquet, write_parquet

log_to_file(snakemake.log[0])
bootstrap = snakemake.params.bootstrap
write_parquet(read_parquet(snakemake.input.classification), snakemake.output.classification)
write_parquet(read_parquet(snakemake.input.history), snakemake.output.training_history)
change = read_parquet(snakemake.input.saliency_change)
write_parquet(summarise_change(change, **bootstrap), snakemake.output.saliency_change)
write_parquet(misclassification_detection(change), snakemake.output.detection)
write_parquet(severity_trends(change, **bootstrap), snakemake.output.severity_trends)
write_parquet(variance_decomposition(change), snakemake.output.variance_decomposition)
