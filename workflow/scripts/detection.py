"""Misclassification detection per perturbation family, beyond the confidence drop."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.metrics import detection_by_family
from saliency_robustness.perturbations import get_perturbation
from saliency_robustness.tables import read_parquet, write_parquet

log_to_file(snakemake.log[0])
change = read_parquet(snakemake.input)
families = {name: get_perturbation(name).family for name in change["perturbation"].unique()}
write_parquet(
    detection_by_family(change, families, snakemake.params.cv_folds, snakemake.params.seed),
    snakemake.output[0],
)
