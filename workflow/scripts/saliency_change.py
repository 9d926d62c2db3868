"""Per-image change of saliency maps and predictions, clean vs perturbed."""

import pandas as pd

from saliency_robustness.logs import log_to_file
from saliency_robustness.metrics import saliency_change
from saliency_robustness.tables import write_parquet

log_to_file(snakemake.log[0])
change = saliency_change(
    pd.read_parquet(snakemake.input[0]),
    snakemake.params.top_k_percent,
    multi_label=snakemake.params.multi_label,
)
write_parquet(change, snakemake.output[0])
