"""Download one MedMNIST file, verify its MD5, write it atomically."""

from saliency_robustness.datasets.medmnist import download
from saliency_robustness.logs import log_to_file

log_to_file(snakemake.log[0])
download(
    snakemake.wildcards.dataset,
    int(snakemake.wildcards.size),
    snakemake.output[0],
    mirror=snakemake.config["mirror"],
)
