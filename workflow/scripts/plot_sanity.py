"""Figure: cascading model randomisation, maps and similarity per method."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import sanity_randomisation
from saliency_robustness.tables import read_parquet

log_to_file(snakemake.log[0])
sanity_randomisation(read_parquet(snakemake.input), snakemake.output[0], dpi=snakemake.params.dpi)
