"""Gather one dataset's per-model tables into summary tables across folds."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.metrics import misclassification_detection, summarise_change
from saliency_robustness.tables import read_parquet, write_parquet

log_to_file(snakemake.log[0])
write_parquet(read_parquet(snakemake.input.classification), snakemake.output.classification)
write_parquet(read_parquet(snakemake.input.history), snakemake.output.training_history)
change = read_parquet(snakemake.input.saliency_change)
write_parquet(summarise_change(change), snakemake.output.saliency_change)
write_parquet(misclassification_detection(change), snakemake.output.detection)
