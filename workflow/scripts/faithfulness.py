"""Faithfulness metrics of one model and method's saliency maps on clean and perturbed images."""

import pandas as pd
import torch

from saliency_robustness.attribution import model_method_params
from saliency_robustness.data import dataset_info, load_npz, load_perturbed
from saliency_robustness.evaluation import is_multi_label
from saliency_robustness.faithfulness import FaithfulnessSettings, faithfulness_table
from saliency_robustness.logs import log_to_file
from saliency_robustness.models import load_trained_model, resolve_device
from saliency_robustness.tables import write_parquet

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
wc = snakemake.wildcards
info = dataset_info(wc.dataset, snakemake.config["data"])
clean = load_npz(snakemake.input.data)["test_images"]
images = {("none", 0): clean}
for name, (severities, stack) in load_perturbed(snakemake.input.perturbed).items():
    images.update({(name, int(s)): stack[i] for i, s in enumerate(severities)})
device = resolve_device(snakemake.params.device)
ensembles = snakemake.config["train"]["ensembles"]  # an ensemble loads all its members
model = load_trained_model(
    snakemake.input.model,
    wc.arch,
    info,
    clean.shape[1],
    device,
    ensembles,
    weights=snakemake.config["train"]["weights"],
)
cfg = dict(snakemake.params.settings)
severities = cfg.pop("severities")
settings = FaithfulnessSettings(
    **{**cfg, "road_percentiles": tuple(cfg["road_percentiles"])},
    seed=snakemake.params.seed,
    multi_label=is_multi_label(info.task),
)
params = model_method_params(wc.method, snakemake.params.method_params, model, clean.shape[1])
table = faithfulness_table(
    model,
    pd.read_parquet(snakemake.input.saliency),
    images,
    settings,
    wc.method,
    params,
    severities=severities,
    device=device,
)
write_parquet(table, snakemake.output[0])
