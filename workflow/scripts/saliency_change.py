"""Per-image change of saliency maps and predictions, clean vs perturbed, for one
architecture's models (every fold) and one method."""

import pandas as pd

from saliency_robustness.analysis.saliency_change import saliency_change
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import read_saliency, saliency_folds, write_parquet

log_to_file(snakemake.log[0])
paths = list(snakemake.input)
change = pd.concat(
    [
        # one fold at a time: a fold's maps in memory, not the architecture's
        saliency_change(
            read_saliency(paths, fold=fold),
            snakemake.params.top_k_percent,
            multi_label=snakemake.params.multi_label,
        )
        for fold in saliency_folds(paths)
    ],
    ignore_index=True,
)
write_parquet(change, snakemake.output[0])
