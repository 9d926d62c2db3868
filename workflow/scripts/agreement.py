"""Agreement of saliency maps between every pair of models (architectures, folds)."""

from saliency_robustness.analysis.agreement import agreement
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import read_saliency, write_parquet

log_to_file(snakemake.log[0])
write_parquet(
    agreement(
        read_saliency(list(snakemake.input)),
        snakemake.params.top_k_percent,
        snakemake.params.same_target_only,
        **snakemake.params.bootstrap,
    ),
    snakemake.output[0],
)
