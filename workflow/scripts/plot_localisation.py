"""Figure: localisation scores against the lesion masks vs severity, per method."""

import pandas as pd

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import localisation_vs_severity

log_to_file(snakemake.log[0])
localisation_vs_severity(
    pd.read_parquet(snakemake.input[0]), snakemake.output[0], dpi=snakemake.params.dpi
)
