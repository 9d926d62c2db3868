"""Figure of the MedMNIST-C robustness scores per architecture and perturbation."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import robustness_scores
from saliency_robustness.tables import read_parquet

log_to_file(snakemake.log[0])
robustness_scores(read_parquet(snakemake.input), snakemake.output[0], dpi=snakemake.params.dpi)
