"""Perturb the test images of one dataset at every configured severity; preview grid."""

import numpy as np
import torch

from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.logs import log_to_file
from saliency_robustness.perturbations.apply import perturb_all_severities
from saliency_robustness.plots import perturbation_preview_figure
from saliency_robustness.tables import atomic_path

log_to_file(snakemake.log[0])
# torchio's per-image FFTs gain nothing from intra-op threads, and on a busy machine idle
# OpenMP threads spin (measured 45x slower at 224 px with 2 threads under load).
torch.set_num_threads(snakemake.threads)
name = snakemake.wildcards.perturbation
severities = snakemake.params.severities
clean = load_npz(snakemake.input[0])["test_images"]
stack = perturb_all_severities(
    clean,
    name,
    severities,
    seed=snakemake.params.seed,
    severity_table=snakemake.params.overrides.get("severity_table"),
)
with atomic_path(snakemake.output.images) as tmp, open(tmp, "wb") as handle:
    np.savez_compressed(handle, images=stack, severities=np.asarray(severities))
perturbation_preview_figure(clean, stack, severities, name, snakemake.output.preview)
