"""Cost of resumable training's checkpoints (train.checkpoint_every) for the default study's
model: a CIFAR-style ResNet-18 on 28 px BreastMNIST with the default batch size.

Trains ``--epochs`` epochs with a checkpoint after every epoch (but the last, which is never
written) and reports, per checkpoint, the seconds spent writing it (content digest, torch.save
to a temporary file, rename) next to the seconds of the epoch it follows, and the file size;
then the seconds to read and verify the last one (torch.load with weights_only=True plus the
digest check). Both sides are measured in the same process, one after the other, so the ratio
holds up on a shared machine where seconds do not.

Run from the repository root::

    PYTHONPATH=src .venv/bin/python bench/checkpoint_cost.py            # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import saliency_robustness.training as training
from saliency_robustness.datasets.npz import load_npz

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "medmnist" / "breastmnist.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arch", default="resnet18")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["train"]
    data = load_npz(DATA, "breastmnist")
    settings = training.TrainSettings(
        epochs=args.epochs, batch_size=config["batch_size"], lr=config["lr"], seed=0
    )

    saves: list[tuple[int, float, int, bool]] = []  # epoch, seconds, bytes, best stored apart
    real_save = training._save_checkpoint

    def timed_save(path: Path, state: dict) -> None:
        started = time.perf_counter()
        real_save(path, state)
        seconds = time.perf_counter() - started
        saves.append(
            (state["epoch"], seconds, path.stat().st_size, state["best"]["state"] is not None)
        )
        kept.write_bytes(path.read_bytes())  # the run deletes its checkpoint at the end

    training._save_checkpoint = timed_save
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "model.checkpoint.pt"
        kept = Path(folder) / "kept.pt"
        result = training.train_classifier(
            args.arch,
            (data["train_images"], data["train_labels"]),
            (data["val_images"], data["val_labels"]),
            2,
            settings,
            torch.device("cpu"),
            checkpoint=checkpoint,
        )
        fingerprint = training.training_fingerprint(
            args.arch,
            settings,
            2,
            False,
            torch.device("cpu"),
            (data["train_images"], data["train_labels"], data["val_images"], data["val_labels"]),
        )
        started = time.perf_counter()
        assert training._load_checkpoint(kept, fingerprint, settings.epochs) is not None
        load_seconds = time.perf_counter() - started

    epoch_seconds = result.history.set_index("epoch")["seconds"]
    print(
        f"{args.arch}, {len(data['train_images'])} training images, batch {settings.batch_size}, "
        f"{args.threads} threads, torch {torch.__version__}"
    )
    print("epoch  epoch s  checkpoint s  ratio   MB   best stored apart")
    for epoch, seconds, size, apart in saves:
        ratio = seconds / epoch_seconds[epoch]
        print(
            f"{epoch:5d}  {epoch_seconds[epoch]:7.2f}  {seconds:12.3f}  {ratio:5.3f}"
            f"  {size / 1e6:5.1f}  {'yes' if apart else 'no'}"
        )
    ratios = np.array([s / epoch_seconds[e] for e, s, _, _ in saves])
    print(f"median checkpoint / epoch: {np.median(ratios):.3f}")
    print(f"read and verify the last checkpoint: {load_seconds:.3f} s")


if __name__ == "__main__":
    main()
