"""Figure: training curves."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import training_curves
from saliency_robustness.tables import read_parquet

log_to_file(snakemake.log[0])
training_curves(read_parquet(snakemake.input[0]), snakemake.output[0], dpi=snakemake.params.dpi)
