"""Mean SSIM and PSNR of every perturbed test set vs the clean one."""

import pandas as pd

from saliency_robustness.datasets.npz import load_npz, load_perturbed
from saliency_robustness.logs import log_to_file
from saliency_robustness.perturbations.apply import calibration
from saliency_robustness.perturbations.registry import PERTURBATIONS
from saliency_robustness.tables import write_parquet

log_to_file(snakemake.log[0])
clean = load_npz(snakemake.input.data)["test_images"]
rows = []
for name, (severities, stack) in load_perturbed(snakemake.input.perturbed).items():
    spec = PERTURBATIONS[name]
    for row in calibration(clean, stack, severities):
        rows.append({"perturbation": name, "family": spec.family, "backend": spec.backend, **row})
table = pd.DataFrame(rows).assign(dataset=snakemake.wildcards.dataset, n_images=len(clean))
table = table.astype({"severity": "int8", "n_images": "int64"})
write_parquet(table, snakemake.output[0])
