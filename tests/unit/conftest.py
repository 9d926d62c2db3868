"""Shared fixtures of the unit tests: real BreastMNIST arrays and a small trained ResNet-18.

Everything is real: the arrays are the official MedMNIST files (found as tests/conftest.py's
locate_medmnist says), and the model is trained here on CPU (never downloaded).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from saliency_robustness.datasets.npz import load_npz
from saliency_robustness.training import TrainResult, TrainSettings, train_classifier

N_TRAIN = 128
N_VAL = 32


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a small, shared machine, competing OpenMP threads spin and make
    the tiny CPU models here several times slower. Restored after the unit tests."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def medmnist_dir(shared_medmnist: Path) -> Path:
    """Real MedMNIST files, found as tests/conftest.py's ``locate_medmnist`` says."""
    return shared_medmnist


@pytest.fixture(scope="session")
def breast_path(medmnist_dir: Path) -> Path:
    return medmnist_dir / "breastmnist.npz"


@pytest.fixture(scope="session")
def breast(breast_path: Path) -> dict[str, np.ndarray]:
    """The real BreastMNIST arrays (28 px); tests must not modify them."""
    return load_npz(breast_path, "breastmnist")


@pytest.fixture(scope="session")
def trained(breast: dict[str, np.ndarray]) -> TrainResult:
    """ResNet-18 trained for one epoch on 128 real BreastMNIST images on CPU."""
    train = (breast["train_images"][:N_TRAIN], breast["train_labels"][:N_TRAIN])
    val = (breast["val_images"][:N_VAL], breast["val_labels"][:N_VAL])
    settings = TrainSettings(epochs=1, batch_size=64, seed=0)
    return train_classifier("resnet18", train, val, 2, settings, torch.device("cpu"))


@pytest.fixture(scope="session")
def model(trained: TrainResult) -> torch.nn.Module:
    return trained.model.eval()


@pytest.fixture(scope="session")
def clean_test_images(breast: dict[str, np.ndarray]) -> np.ndarray:
    """The official BreastMNIST test split (156 images)."""
    return breast["test_images"]
