"""Figure: misclassification detection per perturbation family and beyond the baseline."""

import pandas as pd

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import detection_by_family

log_to_file(snakemake.log[0])
detection_by_family(
    pd.read_parquet(snakemake.input[0]), snakemake.output[0], dpi=snakemake.params.dpi
)
