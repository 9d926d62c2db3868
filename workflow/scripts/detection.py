"""Misclassification detection per perturbation family, beyond the baselines, with
intervals, paired tests and q-values; and method-vs-method comparisons."""

from saliency_robustness.analysis.detection import detection_by_family
from saliency_robustness.logs import log_to_file
from saliency_robustness.perturbations.registry import get_perturbation
from saliency_robustness.tables import read_parquet, write_parquet

log_to_file(snakemake.log[0])
change = read_parquet(snakemake.input)
families = {name: get_perturbation(name).family for name in change["perturbation"].unique()}
detection, method_comparison = detection_by_family(
    change, families, snakemake.params.cv_folds, **snakemake.params.bootstrap
)
write_parquet(detection, snakemake.output.detection)
write_parquet(method_comparison, snakemake.output.method_comparison)
