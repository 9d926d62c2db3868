"""Figure: misclassification detection per perturbation family and beyond the baseline."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import detection_by_family
from saliency_robustness.tables import read_parquet

log_to_file(snakemake.log[0])
detection_by_family(read_parquet(snakemake.input[0]), snakemake.output[0], dpi=snakemake.params.dpi)
