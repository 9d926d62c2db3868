"""Faithfulness metrics of one architecture's (every fold's) and method's saliency maps on
clean and perturbed images."""

import pandas as pd
import torch

from saliency_robustness.analysis.faithfulness import FaithfulnessSettings, faithfulness_table
from saliency_robustness.attribution.maps import model_method_params
from saliency_robustness.attribution.table import trained_models_by_fold
from saliency_robustness.datasets.folds import folds_in_paths
from saliency_robustness.datasets.info import dataset_info, is_multi_label
from saliency_robustness.datasets.npz import load_npz, load_perturbed
from saliency_robustness.logs import log_to_file
from saliency_robustness.models.tensors import resolve_device
from saliency_robustness.tables import read_saliency, write_parquet

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
wc, params = snakemake.wildcards, snakemake.params
info = dataset_info(wc.dataset, snakemake.config["data"])
clean = load_npz(snakemake.input.data)["test_images"]
images = {("none", 0): clean}
for name, (severities, stack) in load_perturbed(snakemake.input.perturbed).items():
    images.update({(name, int(s)): stack[i] for i, s in enumerate(severities)})
device = resolve_device(params.device)
cfg = dict(params.settings)
severities = cfg.pop("severities")
# covering and binary_threshold are left out of the params at their defaults (common.smk)
cfg["road_percentiles"] = tuple(cfg["road_percentiles"])
if "covering" in cfg:
    cfg["covering"] = tuple(cfg["covering"])
settings = FaithfulnessSettings(
    **cfg,
    seed=params.seed,
    multi_label=is_multi_label(info.task),
)
tables = []
for fold, model in trained_models_by_fold(
    snakemake.input.models, folds_in_paths(snakemake.input.models),
    wc.arch, params.members, info, clean.shape[1], device,
    train=snakemake.config["train"],  # each model's resolved settings (models.specs)
):  # fmt: skip
    tables.append(
        faithfulness_table(
            model,
            read_saliency(snakemake.input.saliency, fold=fold),
            images,
            settings,
            wc.method,
            model_method_params(wc.method, params.method_params, model, clean.shape[1]),
            severities=severities,
            device=device,
        )
    )
write_parquet(pd.concat(tables, ignore_index=True), snakemake.output[0])
