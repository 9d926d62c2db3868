"""MedMNIST-C robustness scores (BE, normalised and relative BE, mCE-style summary)."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.robustness import robustness_scores, robustness_summary
from saliency_robustness.tables import read_parquet, write_parquet

log_to_file(snakemake.log[0])
scores = robustness_scores(read_parquet(snakemake.input), snakemake.params.baseline)
write_parquet(scores, snakemake.output.scores)
write_parquet(robustness_summary(scores), snakemake.output.summary)
