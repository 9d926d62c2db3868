"""Figure: misclassification detection."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import misclassification_detection
from saliency_robustness.tables import read_parquet

log_to_file(snakemake.log[0])
misclassification_detection(
    read_parquet(snakemake.input[0]), snakemake.output[0], dpi=snakemake.params.dpi
)
