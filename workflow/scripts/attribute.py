"""Saliency maps of one perturbation's test sets, for one architecture's models (every fold)
and one method; images and targets come from the clean table."""

import torch

from saliency_robustness.attribution.maps import model_method_params
from saliency_robustness.attribution.table import (
    attribute_perturbed,
    saliency_schema,
    trained_models_by_fold,
)
from saliency_robustness.datasets.folds import folds_in_paths
from saliency_robustness.datasets.info import dataset_info, is_multi_label
from saliency_robustness.datasets.npz import load_perturbed
from saliency_robustness.logs import log_to_file
from saliency_robustness.models.tensors import resolve_device
from saliency_robustness.tables import MAP_KEYS, read_parquet, write_parquet_parts

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
wc, params = snakemake.wildcards, snakemake.params
info = dataset_info(wc.dataset, snakemake.config["data"])
perturbed = load_perturbed([snakemake.input.perturbed])
clean = read_parquet(
    snakemake.input.clean,
    columns=[*MAP_KEYS, "perturbation", "image_index", "label", "target"],
)
height, width = next(iter(perturbed.values()))[1].shape[2:4]
device = resolve_device(params.device)


def tables():
    """One fold at a time: a fold's table is written before the next model loads."""
    for fold, model in trained_models_by_fold(
        snakemake.input.models, folds_in_paths(snakemake.input.models),
        wc.arch, params.members, info, height, device,
        train=snakemake.config["train"],  # each model's resolved settings (models.specs)
    ):  # fmt: skip
        yield attribute_perturbed(
            model,
            clean[clean["fold"] == fold],
            perturbed,
            wc.method,
            model_method_params(wc.method, params.method_params, model, height),
            batch_size=params.batch_size,
            seed=params.seed,
            device=device,
            progress=True,
            multi_label=is_multi_label(info.task),
            precision=params.precision,
        )


schema = saliency_schema(
    height, width, info.n_classes, completeness=True, precision=params.precision
)
write_parquet_parts(tables(), snakemake.output[0], schema, map_columns=["saliency"])
