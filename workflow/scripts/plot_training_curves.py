"""Figure: training curves."""

import pandas as pd

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import training_curves

log_to_file(snakemake.log[0])
training_curves(pd.read_parquet(snakemake.input[0]), snakemake.output[0], dpi=snakemake.params.dpi)
