"""One real test image of a dataset under every perturbation x severity, one figure."""

from saliency_robustness.datasets.npz import load_npz, load_perturbed
from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import perturbation_grid_figure

log_to_file(snakemake.log[0])
clean = load_npz(snakemake.input.data)["test_images"]
index = snakemake.params.image
if index >= len(clean):
    raise ValueError(
        f"perturb.preview_image is {index} but the test set has {len(clean)} images "
        f"(use 0..{len(clean) - 1})."
    )
perturbed = load_perturbed(snakemake.input.perturbed)
severities = [int(s) for s in next(iter(perturbed.values()))[0]]
stacks = {name: stack[:, index] for name, (_, stack) in perturbed.items()}
title = f"{snakemake.wildcards.dataset}, test image {index}"
perturbation_grid_figure(
    clean[index], stacks, severities, snakemake.output[0], title, snakemake.params.dpi
)
