"""Between the arrays of the data and the models' inputs: uint8 images to float tensors on
the models' [-1, 1] scale (``images_to_tensor``, ``scale_pixels``, the MedMNIST reference
scaling), and the device a job runs on (``resolve_device``)."""

from __future__ import annotations

import os

import torch


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is visible (e.g. via SLURM's CUDA_VISIBLE_DEVICES)."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device: cuda was requested but no CUDA GPU is visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). "
            "Use device: auto or cpu, or run on a GPU node."
        )
    return torch.device(setting)


def images_to_tensor(images) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) -> float (N, C, H, W) scaled to [-1, 1].

    The same scaling as the MedMNIST reference code (ToTensor, Normalize(0.5, 0.5)).
    """
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8:
        raise TypeError(f"Expected uint8 images, got {tensor.dtype}.")
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return scale_pixels(tensor.float())


def scale_pixels(tensor: torch.Tensor) -> torch.Tensor:
    """Float pixel values on the 0..255 scale -> the models' input scale, -1..1 (the
    scaling of ``images_to_tensor``, for inputs that are not uint8, such as shap's)."""
    return tensor.div(255.0).sub(0.5).div(0.5)
