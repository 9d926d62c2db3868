"""What every implementation shares about its inputs: the black baseline in model-input
space, the uint8 images behind model inputs, targets as ints, per-image seeds and the
seeded global generators that captum and shap sample from, and the silencing of captum's
per-call hook notices.

Here rather than in one method module because the gradient, perturbation, shap and control
methods all use them, ``maps`` seeds every batch with ``image_seeds``, and
``analysis.faithfulness`` perturbs towards the same black baseline.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch

# Black image in model-input space (images_to_tensor maps 0..255 to -1..1).
BLACK = -1.0


def int_targets(targets: torch.Tensor) -> list[int]:
    """Target classes as Python ints, for the libraries that take one target per call."""
    return [int(t) for t in targets.reshape(-1).tolist()]


def to_uint8(inputs: torch.Tensor) -> np.ndarray:
    """Model inputs (N, C, H, W) in -1..1 back to the uint8 images they came from."""
    images = ((inputs.detach().float() + 1.0) * 127.5).round().clamp(0, 255)
    return images.to(torch.uint8).cpu().numpy()


def image_seeds(inputs: torch.Tensor, seed: int) -> list[int]:
    """One seed per image from the run's ``seed`` and the image's values.

    The same image gets the same seed wherever it sits in a batch; two different images
    (a clean image and its perturbed version) get unrelated seeds.
    """
    seeds = []
    for image in inputs.detach().float().cpu().numpy():
        digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=8).digest()
        entropy = [int(seed) % 2**64, int.from_bytes(digest, "little")]
        seeds.append(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1)
    return seeds


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's (CPU and this CUDA device's) and NumPy's global generators seeded with
    ``seed`` inside the block and restored afterwards (captum samples from them)."""
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


@contextlib.contextmanager
def quiet_captum() -> Iterator[None]:
    """Silence captum's per-call notices about the hooks it sets and removes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Setting (forward|backward)")
        warnings.filterwarnings("ignore", message=r".*did not already require gradients")
        yield
