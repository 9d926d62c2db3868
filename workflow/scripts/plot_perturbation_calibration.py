"""Figure of the perturbation calibration table (SSIM, PSNR per severity)."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import perturbation_calibration
from saliency_robustness.tables import read_parquet

log_to_file(snakemake.log[0])
perturbation_calibration(read_parquet(snakemake.input), snakemake.output[0], snakemake.params.dpi)
