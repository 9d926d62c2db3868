"""Cascading model-randomisation sanity check of one model and method."""

import numpy as np
import torch

from saliency_robustness.analysis.sanity import data_randomisation, model_randomisation
from saliency_robustness.attribution.maps import model_method_params
from saliency_robustness.datasets.info import dataset_info
from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.logs import log_to_file
from saliency_robustness.models.loading import load_trained_model
from saliency_robustness.models.tensors import resolve_device
from saliency_robustness.tables import read_parquet, write_parquet

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
wc = snakemake.wildcards
info = dataset_info(wc.dataset, snakemake.config["data"])
# The trained model's clean maps fix the images and targets (the attributed images).
saliency = read_parquet(
    snakemake.input.saliency,
    columns=["fold", "severity", "image_index", "target"],
    filters=[("fold", "==", int(wc.fold))],
)
clean = saliency[saliency["severity"] == 0].drop_duplicates(["image_index", "target"])
clean = clean.sort_values(["image_index", "target"]).head(snakemake.params.max_images)
images = load_npz(snakemake.input.data)["test_images"][clean["image_index"].to_numpy()]
device = resolve_device(snakemake.params.device)
ensembles = snakemake.config["train"]["ensembles"]  # an ensemble loads all its members
model = load_trained_model(
    snakemake.input.model,
    wc.arch,
    info,
    images.shape[1],
    device,
    ensembles,
    train=snakemake.config["train"],  # each model's resolved settings (models.specs)
)
params = model_method_params(wc.method, snakemake.params.method_params, model, images.shape[1])
targets = clean["target"].to_numpy()
if hasattr(snakemake.input, "shuffled_model"):  # a Namedlist: `in` tests values
    # data randomisation: the same architecture trained on shuffled labels
    variant = "data"
    shuffled = load_trained_model(
        snakemake.input.shuffled_model,
        wc.arch,
        info,
        images.shape[1],
        device,
        ensembles,
        train=snakemake.config["train"],
    )
    table = data_randomisation(
        model, shuffled, images, targets, wc.method, params,
        batch_size=snakemake.params.batch_size, seed=snakemake.params.seed, device=device,
    )  # fmt: skip
else:
    variant = "model"
    table = model_randomisation(
        model,
        images,
        targets,
        wc.method,
        params,
        granularity=snakemake.params.granularity,
        batch_size=snakemake.params.batch_size,
        seed=snakemake.params.seed,
        device=device,
    )
table["image_index"] = np.tile(
    clean["image_index"].to_numpy(np.int32), table["stage_index"].nunique()
)
table = table.assign(
    dataset=wc.dataset,
    arch=wc.arch,
    fold=np.int16(wc.fold),
    method=wc.method,
    variant=variant,
    height=np.int16(images.shape[1]),
    width=np.int16(images.shape[2]),
)
write_parquet(table, snakemake.output[0])
