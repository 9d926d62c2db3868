"""Figure: model x model agreement matrices per method."""

import pandas as pd

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import agreement_matrices

log_to_file(snakemake.log[0])
agreement_matrices(
    pd.read_parquet(snakemake.input[0]), snakemake.output[0], dpi=snakemake.params.dpi
)
