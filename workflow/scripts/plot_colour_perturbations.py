"""The four colour test images under every RGB perturbation of the study x severity."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.perturbations.colour_test_images import colour_preview
from saliency_robustness.plots import perturbation_grid_figure

log_to_file(snakemake.log[0])
params = snakemake.params
clean, stacks = colour_preview(
    params.perturbations, params.severities, params.size, params.seed, params.severity_tables
)
title = (
    f"colour test images at {params.size} px (fundus, dermatoscopy / H&E, blood smear), "
    f"seed {params.seed}"
)
perturbation_grid_figure(clean, stacks, params.severities, snakemake.output[0], title, params.dpi)
