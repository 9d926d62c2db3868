"""One long table of the randomisation sanity check for a dataset."""

from saliency_robustness.analysis.sanity_summary import summarise_randomisation
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import read_parquet, write_parquet

log_to_file(snakemake.log[0])
table = read_parquet(snakemake.input).drop(columns="saliency")
write_parquet(summarise_randomisation(table, snakemake.params.pass_threshold), snakemake.output[0])
