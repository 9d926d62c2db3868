"""Supervised training with a best-validation-AUC checkpoint (the MedMNIST v2 recipe).

Single-label tasks train with softmax cross-entropy; multi-label tasks (``multi_label``) with
one sigmoid per label and ``BCEWithLogitsLoss``, keeping the epoch of the best macro AUC.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from saliency_robustness.evaluation import (
    classification_metrics,
    multi_label_array,
    predict_proba,
)
from saliency_robustness.models import build_model, images_to_tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and schedule: Adam, lr multiplied by ``gamma`` at each milestone epoch."""

    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    milestones: tuple[int, ...] = field(default_factory=tuple)
    gamma: float = 0.1
    seed: int = 0
    mixed_precision: bool = False  # float16 autocast + gradient scaling, CUDA only
    weights: str | None = None  # None: random init; "imagenet": see models.build_model
    weights_file: str | None = None  # ImageNet state_dict file; None: torchvision's cache

    @classmethod
    def from_config(cls, train: dict, arch: str, seed: int) -> TrainSettings:
        """The settings of config ``train`` (validated, with defaults) for ``arch``."""
        return cls(
            epochs=train["epochs"],
            batch_size=train["batch_size"],
            lr=train["lr"],
            milestones=tuple(train["milestones"]),
            gamma=train["gamma"],
            seed=seed,
            mixed_precision=train["mixed_precision"],
            weights=train["weights"],
            weights_file=train["weights_files"].get(arch),
        )


@dataclass
class TrainResult:
    model: nn.Module  # weights of the best validation-AUC epoch
    history: pd.DataFrame  # one row per epoch
    best_epoch: int
    best_val: dict[str, float]


def seed_everything(seed: int) -> None:
    """Seed torch and NumPy; deterministic kernels where torch has them."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _validation_loss(probs: np.ndarray, labels: np.ndarray, multi_label: bool) -> float:
    """The training loss on validation probabilities (clamped away from 0 and 1)."""
    p = torch.as_tensor(probs)
    if multi_label:
        p = p.double().clamp(1e-12, 1 - 1e-12)
        return float(nn.functional.binary_cross_entropy(p, torch.as_tensor(labels).double()))
    return float(
        nn.functional.nll_loss(torch.log(p.clamp_min(1e-12)), torch.as_tensor(labels).long())
    )


def train_classifier(
    arch: str,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    settings: TrainSettings,
    device: torch.device,
    multi_label: bool = False,
) -> TrainResult:
    """Train ``arch`` on uint8 images; keep the epoch with the best validation AUC.

    Ties (and NaN AUC) fall back to validation accuracy, then to the earlier epoch.
    With ``multi_label`` the labels are (N, ``n_classes``) 0/1 arrays, the loss is
    ``BCEWithLogitsLoss`` on the logits, and AUC/ACC are the multi-label macro AUC and
    label-wise accuracy of ``classification_metrics``.
    """
    train_images, train_labels = train
    val_images, val_labels = val
    if len(train_images) == 0 or len(val_images) == 0:
        raise ValueError("Training and validation sets must not be empty; check the folds.")
    seed_everything(settings.seed)
    in_channels = 1 if train_images.ndim == 3 else train_images.shape[-1]
    model = build_model(
        arch,
        in_channels,
        n_classes,
        train_images.shape[1],
        weights=settings.weights,
        weights_file=settings.weights_file,
    ).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimiser, milestones=list(settings.milestones), gamma=settings.gamma
    )
    x_train = images_to_tensor(train_images)
    if multi_label:
        # BCE on logits (not sigmoid then BCE): numerically stable for confident outputs.
        loss_fn: nn.Module = nn.BCEWithLogitsLoss()
        y_train = torch.as_tensor(multi_label_array(train_labels, n_classes), dtype=torch.float32)
        y_val = multi_label_array(val_labels, n_classes)
    else:
        loss_fn = nn.CrossEntropyLoss()
        y_train = torch.as_tensor(np.asarray(train_labels).reshape(-1), dtype=torch.long)
        y_val = np.asarray(val_labels).reshape(-1)
    generator = torch.Generator().manual_seed(settings.seed)
    use_amp = settings.mixed_precision and device.type == "cuda"
    if settings.mixed_precision and not use_amp:
        log.warning("mixed_precision applies to CUDA only; training in float32 on %s", device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    n_batches = math.ceil(len(x_train) / settings.batch_size)

    history, best_key, best_state, best_epoch, best_val = [], None, None, 0, {}
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        running = 0.0
        for batch in range(n_batches):
            idx = order[batch * settings.batch_size : (batch + 1) * settings.batch_size]
            if len(idx) < 2 and n_batches > 1:
                continue  # BatchNorm cannot train on a single image
            inputs, targets = x_train[idx].to(device), y_train[idx].to(device)
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(model(inputs), targets)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            running += loss.item() * len(idx)
        lr = optimiser.param_groups[0]["lr"]
        scheduler.step()
        probs = predict_proba(model, val_images, settings.batch_size, device, multi_label)
        val_loss = _validation_loss(probs, y_val, multi_label)
        val = classification_metrics(y_val, probs, multi_label)
        row = {
            "epoch": epoch,
            "train_loss": running / len(x_train),
            "val_loss": val_loss,
            "val_acc": val["acc"],
            "val_auc": val["auc"],
            "lr": lr,
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        key = (np.nan_to_num(val["auc"], nan=-1.0), val["acc"])
        if best_key is None or key > best_key:
            best_key, best_epoch, best_val = key, epoch, val
            best_state = copy.deepcopy(model.state_dict())
        log.info(
            "epoch %d/%d train_loss %.4f val_loss %.4f val_acc %.4f val_auc %.4f lr %.2g (%.1f s)",
            epoch,
            settings.epochs,
            row["train_loss"],
            val_loss,
            val["acc"],
            val["auc"],
            lr,
            row["seconds"],
        )
    model.load_state_dict(best_state)
    model.eval()
    log.info(
        "best epoch %d: val_auc %.4f val_acc %.4f", best_epoch, best_val["auc"], best_val["acc"]
    )
    return TrainResult(model, pd.DataFrame(history), best_epoch, best_val)
