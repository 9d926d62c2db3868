"""Supervised training with a best-validation-AUC checkpoint (the MedMNIST v2 recipe).

Single-label tasks train with softmax cross-entropy; multi-label tasks (``multi_label``) with
one sigmoid per label and ``BCEWithLogitsLoss``, keeping the epoch of the best macro AUC.

Training is resumable: with a ``checkpoint`` path, :func:`train_classifier` writes the whole
training state (model, optimiser, scheduler, grad scaler, every RNG, history and the best
epoch so far) there every ``checkpoint_every`` epochs, and a later call with the same
settings and data continues from it, giving the same weights as an uninterrupted run (on
CPU, bit for bit). The file is removed when training completes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from saliency_robustness.datasets.folds import fold_split, pooled_train_val
from saliency_robustness.datasets.info import DataError
from saliency_robustness.datasets.labels import (
    DEFAULT_RANGE,
    certain,
    soft_targets,
    uncertain_range,
)
from saliency_robustness.evaluation import (
    classification_metrics,
    multi_label_array,
    predict_proba,
)
from saliency_robustness.models.build import build_model
from saliency_robustness.models.combined import COMBINED_HEAD
from saliency_robustness.models.heads import (
    HeadSpec,
    backbone_norms_eval,
    freeze_backbone,
    head_prefix,
)
from saliency_robustness.models.specs import grid_points, model_settings
from saliency_robustness.models.tensors import images_to_tensor
from saliency_robustness.tables import atomic_path

log = logging.getLogger(__name__)

# The value of a black (0) pixel after images_to_tensor: what rotation fills corners with.
BLACK = -1.0


def _frozen(value: Any) -> Any:
    """Lists as tuples (hashable, frozen settings; milestones)."""
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Augment:
    """Training augmentation (``train.augment``): a random rotation by an angle uniform in
    [-``rotation``, ``rotation``] degrees (bilinear, corners filled black) and, with ``flip``,
    a left-right mirror (reflection about the vertical axis) with probability 0.5."""

    rotation: float = 0.0
    flip: bool = False

    @property
    def active(self) -> bool:
        return self.rotation > 0 or self.flip


def augment_batch(
    inputs: torch.Tensor, augment: Augment, generator: torch.Generator
) -> torch.Tensor:
    """``inputs`` (N, C, H, W, scaled as ``images_to_tensor``) with ``augment`` applied per
    image. Every random draw comes from ``generator`` (the training run's batch-order
    generator, saved in checkpoints), so augmented runs are seeded and resume bit for bit;
    draws happen only for what is switched on."""
    n = len(inputs)
    flips = torch.rand(n, generator=generator) < 0.5 if augment.flip else torch.zeros(n, dtype=bool)
    angles = (
        (torch.rand(n, generator=generator) * 2 - 1) * augment.rotation
        if augment.rotation > 0
        else torch.zeros(n)
    )
    out = []
    for image, flip, angle in zip(inputs, flips.tolist(), angles.tolist(), strict=True):
        if flip:
            image = TF.horizontal_flip(image)
        if angle != 0:
            image = TF.rotate(image, angle, interpolation=InterpolationMode.BILINEAR, fill=[BLACK])
        out.append(image)
    return torch.stack(out)


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
    weights: str | None = None  # None: random init; "imagenet": see models.build.build_model
    weights_file: str | None = None  # ImageNet state_dict file; None: torchvision's cache
    # multi-label soft-target range of uncertain (-1) labels; part of the resume fingerprint
    uncertain_labels: tuple[float, float] = (DEFAULT_RANGE["low"], DEFAULT_RANGE["high"])
    freeze_backbone: bool = False  # train the classifier head only (Architecture.head)
    head: HeadSpec | None = None  # custom classifier head; None: the architecture's own
    augment: Augment = field(default_factory=Augment)  # training batches only
    # hyper-parameter grid: ((key, (values, ...)), ...), see models.specs.GRID_KEYS
    grid: tuple[tuple[str, tuple], ...] = ()
    # a combined model (train.combined): its backbone architectures and their ImageNet files
    backbones: tuple[str, ...] = ()
    backbone_weights_files: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, train: dict, arch: str, seed: int) -> TrainSettings:
        """The settings of config ``train`` (validated, with defaults; or a train job's
        params, ``models.specs.train_params``) for the model named ``arch`` (an architecture
        or a variant, ``train.variants``, whose overrides then apply)."""
        spec = model_settings(arch, train)
        return cls(
            epochs=spec["epochs"],
            batch_size=spec["batch_size"],
            lr=spec["lr"],
            milestones=tuple(spec["milestones"]),
            gamma=spec["gamma"],
            seed=seed,
            mixed_precision=spec["mixed_precision"],
            weights=spec["weights"],
            weights_file=spec["weights_files"].get(spec["arch"]),
            uncertain_labels=uncertain_range(train),
            freeze_backbone=spec["freeze_backbone"],
            head=HeadSpec.from_config(spec["head"]),
            augment=Augment(float(spec["augment"]["rotation"]), bool(spec["augment"]["flip"])),
            grid=tuple(
                (key, tuple(_frozen(v) for v in values)) for key, values in spec["grid"].items()
            ),
            backbones=tuple(spec["backbones"] or ()),
            backbone_weights_files=tuple(
                (name, spec["weights_files"][name])
                for name in spec["backbones"] or ()
                if name in spec["weights_files"]
            ),
        )

    def at_grid_point(self, point: dict[str, Any]) -> TrainSettings:
        """These settings with one grid point's values (``models.specs.grid_points``) and no
        grid."""
        changes: dict[str, Any] = {"grid": ()}
        for key, value in point.items():
            group, _, name = key.partition(".")
            if name:  # head.hidden, augment.rotation, ...
                current = changes.get(group, getattr(self, group))
                changes[group] = dataclasses.replace(current, **{name: value})
            else:
                changes[key] = _frozen(value)
        return dataclasses.replace(self, **changes)


@dataclass
class TrainResult:
    model: nn.Module  # weights of the best validation-AUC epoch
    history: pd.DataFrame  # one row per epoch
    best_epoch: int
    best_val: dict[str, float]
    # with a grid (TrainSettings.grid): every point's settings and best validation AUC/ACC,
    # and the index of the point whose model this is; None without a grid
    grid: list[dict[str, Any]] | None = None
    chosen: int | None = None


def seed_everything(seed: int) -> None:
    """Seed Python, torch and NumPy; deterministic kernels where torch has them."""
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


# --- checkpoints ---------------------------------------------------------------------------------

CHECKPOINT_VERSION = 1


def checkpoint_path(model_path: str | os.PathLike) -> Path:
    """Where the training job for ``model_path`` keeps its checkpoint: beside it, as
    ``<stem>.checkpoint.pt`` (e.g. ``fold0/model.checkpoint.pt``). Deliberately not a declared
    Snakemake output: Snakemake deletes the outputs of a failed or incomplete job before its
    rerun, and the checkpoint must survive exactly that."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.checkpoint.pt")


def training_fingerprint(
    arch: str,
    settings: TrainSettings,
    n_classes: int,
    multi_label: bool,
    device: torch.device,
    arrays: tuple[np.ndarray, ...],
) -> str:
    """SHA-256 of everything that determines the training run: architecture, settings, task,
    device type and the training/validation arrays. A checkpoint is only resumed by a run
    with the same fingerprint."""
    digest = hashlib.sha256()
    described = {
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "settings": dataclasses.asdict(settings),
        "n_classes": n_classes,
        "multi_label": multi_label,
        "device": device.type,  # CUDA and CPU runs give different weights
    }
    digest.update(json.dumps(described, sort_keys=True).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _content_digest(value: Any, digest: hashlib._Hash | None = None) -> str:
    """SHA-256 over a checkpoint's content (tensors by dtype, shape and bytes; other values by
    type and repr). torch.load does not check the zip records' CRC, so a flipped bit in a
    tensor would otherwise load silently."""
    digest = digest or hashlib.sha256()
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            digest.update(repr(key).encode())
            _content_digest(item, digest)
    elif isinstance(value, list | tuple):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _content_digest(item, digest)
    else:
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    return digest.hexdigest()


def _rng_states(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every random state of a training run, as tensors and plain types (weights_only)."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "generator": generator.get_state(),  # the batch order
    }


def _set_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = states["numpy"]
    key = saved["key"].numpy().astype(np.uint32)
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": key, "pos": saved["pos"]},
            "has_gauss": saved["has_gauss"],
            "gauss": saved["gauss"],
        }
    )
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    generator.set_state(states["generator"])


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename): a kill during the write leaves the
    previous checkpoint intact."""
    state = {**state, "digest": _content_digest(state)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, fingerprint: str, epochs: int) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it is intact and belongs to this run, else None with a
    log line saying why (training then starts from epoch 0)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, garbage, not a torch file: start over, never crash
        log.warning(
            "checkpoint %s is unreadable (%s: %s); training starts from epoch 0",
            path,
            type(error).__name__,
            str(error).splitlines()[0] if str(error) else "",
        )
        return None
    required = {"version", "fingerprint", "epoch", "digest", "model", "optimiser", "scheduler"}
    if not isinstance(state, dict) or not required <= set(state):
        problem = "is not a training checkpoint"
    elif state["version"] != CHECKPOINT_VERSION:
        problem = f"has format version {state['version']!r}, not {CHECKPOINT_VERSION}"
    elif state.pop("digest") != _content_digest(state):
        problem = "is corrupt (its content does not match its digest)"
    elif state["fingerprint"] != fingerprint:
        problem = "was written for other settings or data (epochs, lr, seed, arch, ...)"
    elif not isinstance(state["epoch"], int) or not 1 <= state["epoch"] <= epochs:
        problem = f"has epoch {state['epoch']!r}, outside 1..{epochs}"
    else:
        return state
    log.warning("checkpoint %s %s; training starts from epoch 0", path, problem)
    return None


def _validation_loss(probs: np.ndarray, labels: np.ndarray, multi_label: bool) -> float:
    """The training loss on validation probabilities (clamped away from 0 and 1); multi-label:
    over the certain entries (an uncertain one, -1, has no true value to score)."""
    p = torch.as_tensor(probs)
    if multi_label:
        kept = torch.as_tensor(certain(labels))
        p = p.double().clamp(1e-12, 1 - 1e-12)[kept]
        target = torch.as_tensor(labels).double()[kept]
        return float(nn.functional.binary_cross_entropy(p, target))
    return float(
        nn.functional.nll_loss(torch.log(p.clamp_min(1e-12)), torch.as_tensor(labels).long())
    )


def train_classifier(
    arch: str,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    settings: TrainSettings,
    device: torch.device | str,
    multi_label: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
) -> TrainResult:
    """Train ``arch`` on uint8 images; keep the epoch with the best validation AUC.

    Without a grid (``settings.grid``) this is one training run (``_train_one``, documented
    there). With one, every grid point (``models.specs.grid_points``) is trained on the same
    data from the same seed, and the point with the best validation AUC is kept (ties:
    validation accuracy, then the earlier point): its model, best epoch and validation
    metrics are the result, ``grid`` lists every point's settings and best validation
    AUC/ACC, ``chosen`` the kept point, and the history holds every point's epochs with
    ``grid_point`` and ``grid_chosen`` columns. Each point has its own checkpoint
    (``grid_checkpoint_path``), kept after the point completes, so a resumed job neither
    retrains finished points nor restarts the interrupted one; all are deleted at the end.
    """
    if not settings.grid:
        return _train_one(
            arch, train, val, n_classes, settings, device, multi_label, checkpoint,
            checkpoint_every,
        )  # fmt: skip
    rows, histories = [], []
    best, best_key, chosen = None, None, 0
    points = grid_points({key: list(values) for key, values in settings.grid})
    paths = [
        None if checkpoint is None else grid_checkpoint_path(checkpoint, index)
        for index in range(len(points))
    ]
    for index, point in enumerate(points):
        log.info("grid point %d of %d: %s", index + 1, len(points), point)
        result = _train_one(
            arch, train, val, n_classes, settings.at_grid_point(point), device, multi_label,
            paths[index], checkpoint_every, keep_final=True,
        )  # fmt: skip
        auc, acc = result.best_val["auc"], result.best_val["acc"]
        rows.append(
            {
                "point": index,
                "settings": point,
                "best_epoch": result.best_epoch,
                "val_auc": auc,
                "val_acc": acc,
            }
        )
        histories.append(result.history.assign(grid_point=index))
        key = (float(np.nan_to_num(auc, nan=-1.0)), acc)
        if best_key is None or key > best_key:  # strict: ties keep the earlier point
            best, best_key, chosen = result, key, index
        del result  # only the best point's model stays in memory
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)
    history = pd.concat(histories, ignore_index=True)
    history["grid_chosen"] = history["grid_point"] == chosen
    log.info("grid: point %d chosen (%s)", chosen, points[chosen])
    return TrainResult(best.model, history, best.best_epoch, best.best_val, rows, chosen)


def grid_checkpoint_path(checkpoint: str | os.PathLike, index: int) -> Path:
    """The checkpoint of grid point ``index`` beside ``checkpoint``
    (``model.checkpoint.pt`` -> ``model.checkpoint.grid0.pt``)."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.grid{index}{path.suffix}")


def _train_one(
    arch: str,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    settings: TrainSettings,
    device: torch.device | str,
    multi_label: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    keep_final: bool = False,
) -> TrainResult:
    """Train ``arch`` on uint8 images; keep the epoch with the best validation AUC.

    Ties (and NaN AUC) fall back to validation accuracy, then to the earlier epoch.
    With ``multi_label`` the labels are (N, ``n_classes``) 0/1 arrays (-1: uncertain, trained
    on a soft target from ``settings.uncertain_labels``, see ``datasets.labels.soft_targets``), the
    loss is ``BCEWithLogitsLoss`` on the logits, and AUC/ACC are the multi-label macro AUC and
    label-wise accuracy of ``classification_metrics`` (uncertain entries left out).

    With ``checkpoint`` (a file path) the training state is saved there after every
    ``checkpoint_every``-th epoch (0: never) and resumed from it when it exists, is intact
    and was written for the same arch, settings, task, device type and data (see
    :func:`training_fingerprint`); otherwise training starts from epoch 0 with a log line
    saying why. The file is deleted once training completes; with ``keep_final`` the final
    epoch is saved too and the file kept, and a call that finds it returns the finished run
    without training (a grid's completed points).

    ``settings.freeze_backbone``: only the classifier head (``Architecture.head``, or the
    custom ``settings.head``) is given to the optimiser; every other parameter has
    ``requires_grad`` off and the backbone's BatchNorm layers stay in eval mode, so no
    backbone parameter or buffer changes. ``settings.augment`` applies to training batches
    only (``augment_batch``), never to the validation images.
    """
    train_images, train_labels = train
    val_images, val_labels = val
    if len(train_images) == 0 or len(val_images) == 0:
        raise ValueError("Training and validation sets must not be empty; check the folds.")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0: off), got {checkpoint_every}")
    device = torch.device(device)
    in_channels = 1 if train_images.ndim == 3 else train_images.shape[-1]

    heads = (COMBINED_HEAD,) if settings.backbones else (head_prefix(arch),)

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer, Any, torch.Generator]:
        seed_everything(settings.seed)
        model = build_model(
            arch,
            in_channels,
            n_classes,
            train_images.shape[1],
            weights=settings.weights,
            weights_file=settings.weights_file,
            head=settings.head,
            backbones=settings.backbones,
            weights_files=dict(settings.backbone_weights_files),
        ).to(device)
        trained = freeze_backbone(model, heads) if settings.freeze_backbone else model.parameters()
        optimiser = torch.optim.Adam(trained, lr=settings.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimiser, milestones=list(settings.milestones), gamma=settings.gamma
        )
        return model, optimiser, scheduler, torch.Generator().manual_seed(settings.seed)

    model, optimiser, scheduler, generator = fresh()
    x_train = images_to_tensor(train_images)
    if multi_label:
        # BCE on logits (not sigmoid then BCE): numerically stable for confident outputs.
        # It takes soft targets: an uncertain label (-1, own data) trains on a seeded draw from
        # train.uncertain_labels, the same in every epoch and after a resume (labels.py).
        loss_fn: nn.Module = nn.BCEWithLogitsLoss()
        low, high = settings.uncertain_labels
        y_train = torch.as_tensor(
            soft_targets(multi_label_array(train_labels, n_classes), low, high, settings.seed)
        )
        y_val = multi_label_array(val_labels, n_classes)  # -1 kept: the metrics skip it
    else:
        loss_fn = nn.CrossEntropyLoss()
        y_train = torch.as_tensor(np.asarray(train_labels).reshape(-1), dtype=torch.long)
        y_val = np.asarray(val_labels).reshape(-1)
    use_amp = settings.mixed_precision and device.type == "cuda"
    if settings.mixed_precision and not use_amp:
        log.warning("mixed_precision applies to CUDA only; training in float32 on %s", device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    n_batches = math.ceil(len(x_train) / settings.batch_size)

    history: list[dict[str, float]] = []
    best_key, best_state, best_epoch, best_val = None, None, 0, {}
    done = 0  # epochs completed (restored from the checkpoint)
    path = Path(checkpoint) if checkpoint is not None and checkpoint_every > 0 else None
    if path is not None:
        fingerprint = training_fingerprint(
            arch,
            settings,
            n_classes,
            multi_label,
            device,
            (train_images, np.asarray(train_labels), val_images, np.asarray(val_labels)),
        )
        saved = _load_checkpoint(path, fingerprint, settings.epochs)
        if saved is not None:
            try:
                model.load_state_dict(saved["model"])
                optimiser.load_state_dict(saved["optimiser"])
                scheduler.load_state_dict(saved["scheduler"])
                scaler.load_state_dict(saved["scaler"])
                _set_rng_states(saved["rng"], generator)
                best = saved["best"]
                best_epoch, best_val = best["epoch"], dict(best["val"])
                best_key = tuple(best["key"])
                # None: the best epoch is the checkpoint's epoch, whose weights are "model"
                state = saved["model"] if best["state"] is None else best["state"]
                best_state = {key: value.to(device) for key, value in state.items()}
                history = [dict(row) for row in saved["history"]]
                done = saved["epoch"]
                log.info(
                    "resuming from checkpoint %s: epoch %d of %d done", path, done, settings.epochs
                )
            except (KeyError, TypeError, ValueError, RuntimeError) as error:
                # A loaded state can be half applied: rebuild everything from the seed.
                log.warning(
                    "checkpoint %s does not fit this model (%s: %s); training starts from epoch 0",
                    path,
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
                )
                model, optimiser, scheduler, generator = fresh()
                scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
                history, best_key, best_state, best_epoch, best_val = [], None, None, 0, {}
                done = 0

    for epoch in range(done + 1, settings.epochs + 1):
        started = time.perf_counter()
        model.train()
        if settings.freeze_backbone:  # frozen running statistics too
            backbone_norms_eval(model, heads)
        order = torch.randperm(len(x_train), generator=generator)
        running = 0.0
        for batch in range(n_batches):
            idx = order[batch * settings.batch_size : (batch + 1) * settings.batch_size]
            if len(idx) < 2 and n_batches > 1:
                continue  # BatchNorm cannot train on a single image
            inputs, targets = x_train[idx].to(device), y_train[idx].to(device)
            if settings.augment.active:
                inputs = augment_batch(inputs, settings.augment, generator)
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
        val = {name: float(value) for name, value in val.items()}  # plain floats: weights_only
        row = {
            "epoch": epoch,
            "train_loss": running / len(x_train),
            "val_loss": val_loss,
            "val_acc": val["acc"],
            "val_auc": val["auc"],
            "lr": float(lr),
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        key = (float(np.nan_to_num(val["auc"], nan=-1.0)), val["acc"])
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
        last = epoch == settings.epochs
        if path is not None and (keep_final and last or not last and epoch % checkpoint_every == 0):
            _save_checkpoint(
                path,
                {
                    "version": CHECKPOINT_VERSION,
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": _rng_states(generator, device),
                    "history": history,
                    "best": {
                        "epoch": best_epoch,
                        "key": list(best_key),
                        "val": best_val,
                        # the same as "model" when this epoch is the best: not stored twice
                        "state": None if best_epoch == epoch else best_state,
                    },
                },
            )
    if checkpoint is not None and not keep_final:
        Path(checkpoint).unlink(missing_ok=True)  # a finished run leaves only its outputs
    model.load_state_dict(best_state)
    model.eval()
    log.info(
        "best epoch %d: val_auc %.4f val_acc %.4f", best_epoch, best_val["auc"], best_val["acc"]
    )
    return TrainResult(model, pd.DataFrame(history), best_epoch, best_val)


# --- one train job ----------------------------------------------------------------------------

Split = tuple[np.ndarray, np.ndarray]  # images, labels


def mask_outside(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``images`` (N, H, W[, C] uint8) with every pixel outside ``masks`` (N, H, W; nonzero =
    keep) set to 0, black."""
    keep = np.asarray(masks) > 0
    if images.ndim == 4:
        keep = keep[..., None]
    return np.where(keep, images, 0).astype(images.dtype)


def masked_fold_split(
    arrays: dict[str, np.ndarray], folds: pd.DataFrame, fold: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``datasets.folds.fold_split`` with the training and validation images masked
    (``mask_outside``, the dataset's ``{split}_masks``); the test images stay whole, so that
    evaluation, perturbation and attribution see the same images as for any other model.
    Every training and validation image needs a mask (``{split}_has_mask``)."""
    splits = fold_split(arrays, folds, fold)
    if "train_masks" not in arrays or "val_masks" not in arrays:
        raise DataError(
            "train.mask_background needs masks, and this dataset has none (only the synthetic "
            "set and folder datasets with a mask column do); set mask_background: false."
        )
    masks = np.concatenate([arrays["train_masks"], arrays["val_masks"]])
    has_mask = np.concatenate(
        [
            arrays.get(f"{split}_has_mask", np.ones(len(arrays[f"{split}_masks"]), dtype=bool))
            for split in ("train", "val")
        ]
    )
    images, _, _ = pooled_train_val(arrays)
    if masks.shape[:3] != images.shape[:3]:
        raise DataError(f"Masks {masks.shape} do not match the images {images.shape}.")
    if not has_mask.all():
        raise DataError(
            f"train.mask_background: {int((~has_mask).sum())} of {len(has_mask)} training and "
            "validation images have no mask, so their background cannot be removed. Give "
            "every image a mask in the CSV's mask column, or set mask_background: false."
        )
    is_val = folds["fold"].to_numpy() == fold
    for name, rows in (("train", ~is_val), ("val", is_val)):
        split_images, labels = splits[name]
        splits[name] = (mask_outside(split_images, masks[rows]), labels)
    return splits


def train_fold(
    name: str,
    train: dict,
    arrays: dict[str, np.ndarray],
    folds: pd.DataFrame,
    fold: int,
    n_classes: int,
    seed: int,
    device: torch.device | str,
    multi_label: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    relabel: Callable[[Split, Split], tuple[Split, Split]] | None = None,
) -> tuple[TrainResult, dict[str, Split]]:
    """One train job: the model ``name``'s settings (``models.specs.model_settings`` of the
    config's ``train`` or the job's ``train_params``), the fold's splits (training and
    validation images masked with ``mask_background``), then ``train_classifier``. Returns
    the result and the splits (the test split as stored). ``relabel(train, val) -> (train,
    val)`` replaces the labels (the shuffled-label sanity model)."""
    spec = model_settings(name, train)
    settings = TrainSettings.from_config(train, name, seed)
    split = masked_fold_split if spec["mask_background"] else fold_split
    splits = split(arrays, folds, fold)
    train_set, val_set = splits["train"], splits["val"]
    if relabel is not None:
        train_set, val_set = relabel(train_set, val_set)
    result = train_classifier(
        spec["arch"],
        train_set,
        val_set,
        n_classes,
        settings,
        device,
        multi_label=multi_label,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
    )
    return result, splits
