"""Figure: saliency change vs severity."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import saliency_change_vs_severity
from saliency_robustness.tables import read_parquet

log_to_file(snakemake.log[0])
saliency_change_vs_severity(
    read_parquet(snakemake.input[0]), snakemake.output[0], dpi=snakemake.params.dpi
)
