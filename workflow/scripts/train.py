"""Train one (dataset, architecture, fold); save best-validation-AUC weights and history."""

import json

import pandas as pd
import torch

from saliency_robustness.datasets.info import dataset_info, is_multi_label
from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.evaluation import (
    classification_metrics,
    metric_rows,
    predict_proba,
)
from saliency_robustness.logs import log_to_file
from saliency_robustness.models.tensors import resolve_device
from saliency_robustness.models.weights import save_weights
from saliency_robustness.tables import atomic_path, write_parquet
from saliency_robustness.training import checkpoint_path, train_fold

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
fold = int(snakemake.wildcards.fold)
info = dataset_info(snakemake.wildcards.dataset, snakemake.config["data"])
device = resolve_device(snakemake.params.device)
multi_label = is_multi_label(info.task)
# params.train: this model's resolved settings (a variant's overrides applied)
result, splits = train_fold(
    snakemake.wildcards.arch,
    snakemake.params.train,
    load_npz(snakemake.input.data),
    pd.read_parquet(snakemake.input.folds),
    fold,
    info.n_classes,
    snakemake.params.seed + fold,
    device,
    multi_label=multi_label,
    # Beside model.pt but not a declared output, so it survives the removal of a failed or
    # incomplete job's outputs and a rerun resumes from it. Read from the config rather
    # than params: changing how often to checkpoint must not retrain finished models.
    checkpoint=checkpoint_path(snakemake.output.model),
    checkpoint_every=snakemake.config["train"]["checkpoint_every"],
)
test_images, test_labels = splits["test"]
test_probs = predict_proba(result.model, test_images, device=device, multi_label=multi_label)
test = classification_metrics(test_labels, test_probs, multi_label)

save_weights(result.model, snakemake.output.model)
keys = {"dataset": snakemake.wildcards.dataset, "arch": snakemake.wildcards.arch, "fold": fold}
write_parquet(result.history.assign(**keys), snakemake.output.history)
summary = {
    "device": str(device),
    "task": info.task,
    "best_epoch": result.best_epoch,
    "val": result.best_val,
    "test": test,
    "n_train": len(splits["train"][0]),
    "n_val": len(splits["val"][0]),
}
if result.grid is not None:  # train.grid: every point's validation scores, and the kept one
    summary["grid"] = result.grid
    summary["chosen"] = result.grid[result.chosen]
if multi_label:  # per-label test metrics, keyed by label name
    summary["test_per_label"] = {
        row.pop("label"): row
        for row in metric_rows(test_labels, test_probs, True, list(info.labels.values()))[1:]
    }
with atomic_path(snakemake.output.metrics) as tmp:
    tmp.write_text(json.dumps(summary, indent=2))
