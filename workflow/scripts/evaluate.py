"""Predictions and classification metrics of one model on clean and perturbed test images."""

import torch

from saliency_robustness.datasets.info import dataset_info, is_multi_label
from saliency_robustness.datasets.npz import load_npz, load_perturbed
from saliency_robustness.evaluation import evaluate_model
from saliency_robustness.logs import log_to_file
from saliency_robustness.models.loading import load_trained_model
from saliency_robustness.models.tensors import resolve_device
from saliency_robustness.tables import write_parquet

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
wc = snakemake.wildcards
info = dataset_info(wc.dataset, snakemake.config["data"])
arrays = load_npz(snakemake.input.data)
device = resolve_device(snakemake.params.device)
images = arrays["test_images"]
# an ensemble (train.ensembles) loads every member's model.pt of this fold
model = load_trained_model(
    snakemake.input.model,
    wc.arch,
    info,
    images.shape[1],
    device,
    {wc.arch: snakemake.params.members} if snakemake.params.members else {},
    # each model (every member) with its resolved settings: a variant's base, weights, head
    train=snakemake.config["train"],
)
predictions, metrics = evaluate_model(
    model,
    images,
    arrays["test_labels"],
    load_perturbed(snakemake.input.perturbed),
    snakemake.params.batch_size,
    device,
    multi_label=is_multi_label(info.task),
    label_names=list(info.labels.values()),
)
keys = {"dataset": wc.dataset, "arch": wc.arch, "fold": int(wc.fold)}
write_parquet(predictions.assign(**keys), snakemake.output.predictions)
write_parquet(metrics.assign(**keys), snakemake.output.metrics)
