"""Long tables of mean faithfulness metrics for a dataset: per fold, and over folds, with
bootstrap intervals."""

from saliency_robustness.analysis.faithfulness_summary import (
    faithfulness_over_folds,
    summarise_faithfulness,
)
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import read_parquet, write_parquet

log_to_file(snakemake.log[0])
table = read_parquet(list(snakemake.input))
bootstrap = snakemake.params.bootstrap
write_parquet(summarise_faithfulness(table, **bootstrap), snakemake.output.summary)
write_parquet(faithfulness_over_folds(table, **bootstrap), snakemake.output.over_folds)
