"""MedMNIST-C robustness scores (BE, normalised and relative BE, mCE-style summary), with
bootstrap intervals from the per-image predictions."""

from saliency_robustness.analysis.robustness import (
    attach_intervals,
    robustness_bootstrap,
    robustness_scores,
    robustness_summary,
)
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import read_parquet, write_parquet

log_to_file(snakemake.log[0])
baseline = snakemake.params.baseline
scores = robustness_scores(read_parquet(list(snakemake.input.metrics)), baseline)
summary = robustness_summary(scores)
score_intervals, summary_intervals, over_folds = robustness_bootstrap(
    read_parquet(list(snakemake.input.predictions)), baseline, **snakemake.params.bootstrap
)
write_parquet(attach_intervals(scores, score_intervals), snakemake.output.scores)
write_parquet(attach_intervals(summary, summary_intervals), snakemake.output.summary)
write_parquet(over_folds, snakemake.output.over_folds)
