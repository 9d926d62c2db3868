"""Train one (dataset, architecture, fold) on shuffled labels: the data-randomisation
sanity check's model (Adebayo et al. 2018). Same recipe as the train rule."""

import pandas as pd
import torch

from saliency_robustness.analysis.sanity import shuffled_labels
from saliency_robustness.datasets.info import dataset_info, is_multi_label
from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.logs import log_to_file
from saliency_robustness.models.tensors import resolve_device
from saliency_robustness.models.weights import save_weights
from saliency_robustness.training import checkpoint_path, train_fold

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
fold = int(snakemake.wildcards.fold)
info = dataset_info(snakemake.wildcards.dataset, snakemake.config["data"])
seed = snakemake.params.seed + fold


def shuffle(train, val):
    """Both training and validation labels permuted: the checkpoint choice must not see
    the true labels either."""
    (train_images, train_labels), (val_images, val_labels) = train, val
    return (
        (train_images, shuffled_labels(train_labels, seed)),
        (val_images, shuffled_labels(val_labels, seed + 1)),
    )


result, _ = train_fold(
    snakemake.wildcards.arch,
    snakemake.params.train,  # the model's resolved settings, as in train.py
    load_npz(snakemake.input.data),
    pd.read_parquet(snakemake.input.folds),
    fold,
    info.n_classes,
    seed,
    resolve_device(snakemake.params.device),
    multi_label=is_multi_label(info.task),
    checkpoint=checkpoint_path(snakemake.output[0]),  # resumable, as in train.py
    checkpoint_every=snakemake.config["train"]["checkpoint_every"],
    relabel=shuffle,
)
save_weights(result.model, snakemake.output[0])
