"""One long table of mean faithfulness metrics for a dataset."""

from saliency_robustness.faithfulness import summarise_faithfulness
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import read_parquet, write_parquet

log_to_file(snakemake.log[0])
write_parquet(summarise_faithfulness(read_parquet(snakemake.input)), snakemake.output[0])
