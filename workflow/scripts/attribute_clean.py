"""Clean saliency maps of one architecture's models (every fold) and one method."""

import torch

from saliency_robustness.attribution.maps import model_method_params
from saliency_robustness.attribution.table import (
    attribute_clean,
    saliency_schema,
    trained_models_by_fold,
)
from saliency_robustness.datasets.folds import folds_in_paths
from saliency_robustness.datasets.info import dataset_info, is_multi_label
from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.logs import log_to_file
from saliency_robustness.models.tensors import resolve_device
from saliency_robustness.tables import write_parquet_parts

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
wc, params = snakemake.wildcards, snakemake.params
info = dataset_info(wc.dataset, snakemake.config["data"])
arrays = load_npz(snakemake.input.data)
n = params.max_images
images, labels = arrays["test_images"][:n], arrays["test_labels"][:n]
device = resolve_device(params.device)


def tables():
    """One fold at a time: a fold's table is written before the next model loads."""
    for fold, model in trained_models_by_fold(
        snakemake.input.models, folds_in_paths(snakemake.input.models),
        wc.arch, params.members, info, images.shape[1],
        device, train=snakemake.config["train"],  # each model's resolved settings (models.specs)
    ):  # fmt: skip
        yield attribute_clean(
            model,
            images,
            labels,
            wc.method,
            model_method_params(wc.method, params.method_params, model, images.shape[1]),
            keys={"dataset": wc.dataset, "arch": wc.arch, "fold": fold},
            target=params.target,
            batch_size=params.batch_size,
            seed=params.seed,
            device=device,
            multi_label=is_multi_label(info.task),
            top_k=params.top_k_targets,
            precision=params.precision,
        )


schema = saliency_schema(
    images.shape[1], images.shape[2], info.n_classes, completeness=True, precision=params.precision
)
write_parquet_parts(tables(), snakemake.output[0], schema, map_columns=["saliency"])
