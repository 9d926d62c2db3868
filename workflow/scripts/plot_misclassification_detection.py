"""Figure: misclassification detection."""

import pandas as pd

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import misclassification_detection

log_to_file(snakemake.log[0])
misclassification_detection(
    pd.read_parquet(snakemake.input[0]), snakemake.output[0], dpi=snakemake.params.dpi
)
