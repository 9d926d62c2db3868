"""Build a data.custom dataset (image folder + CSV, or synthetic) into the MedMNIST npz layout."""

from saliency_robustness.datasets.custom import build_custom_dataset, write_npz
from saliency_robustness.logs import log_to_file

log_to_file(snakemake.log[0])
arrays = build_custom_dataset(
    snakemake.params.spec, int(snakemake.wildcards.size), seed=snakemake.params.seed
)
write_npz(arrays, snakemake.output[0])
