"""Saliency maps of one model and method for clean and perturbed test images."""

import torch

from saliency_robustness.attribution import attribute_clean_and_perturbed, model_method_params
from saliency_robustness.data import dataset_info, load_npz, load_perturbed
from saliency_robustness.evaluation import is_multi_label
from saliency_robustness.logs import log_to_file
from saliency_robustness.models import load_trained_model, resolve_device
from saliency_robustness.tables import write_parquet

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
wc = snakemake.wildcards
info = dataset_info(wc.dataset, snakemake.config["data"])
arrays = load_npz(snakemake.input.data)
n = snakemake.params.max_images
images, labels = arrays["test_images"][:n], arrays["test_labels"][:n]
perturbed = {
    name: (severities, stack[:, :n])
    for name, (severities, stack) in load_perturbed(snakemake.input.perturbed).items()
}
device = resolve_device(snakemake.params.device)
# an ensemble (train.ensembles) loads every member's model.pt of this fold
model = load_trained_model(
    snakemake.input.model,
    wc.arch,
    info,
    images.shape[1],
    device,
    snakemake.params.ensembles,
    weights=snakemake.params.weights,
)
params = model_method_params(wc.method, snakemake.params.method_params, model, images.shape[1])
table = attribute_clean_and_perturbed(
    model,
    images,
    labels,
    perturbed,
    wc.method,
    params,
    keys={"dataset": wc.dataset, "arch": wc.arch, "fold": int(wc.fold)},
    target=snakemake.params.target,
    batch_size=snakemake.params.batch_size,
    seed=snakemake.params.seed,
    device=device,
    progress=True,
    multi_label=is_multi_label(info.task),
    top_k=snakemake.params.top_k_targets,
)
write_parquet(table, snakemake.output[0])
