"""Figure: localisation scores against the lesion masks vs severity, per method."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import localisation_vs_severity
from saliency_robustness.tables import read_parquet

log_to_file(snakemake.log[0])
localisation_vs_severity(
    read_parquet(snakemake.input[0]), snakemake.output[0], dpi=snakemake.params.dpi
)
