"""pytorch-grad-cam's CAM methods (Grad-CAM and its variants, ScoreCAM, AblationCAM) on
one model at one layer.

Each returns the library's maps (N, H, W): ReLU'd, min-max scaled to [0, 1] per image and
bilinearly resized to the input size, so there is no channel reduction
(``ChannelReduction.NONE``). The layer comes from ``cam_layer.cam_layer_name``; an ensemble
or combined model is averaged over its members by ``cam_layer.member_average`` in ``maps``.
The library's progress bars are switched off, and its hooks and the weights' gradients are
released after every call.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable, Iterator

import numpy as np
import pytorch_grad_cam
import torch
import tqdm as tqdm_module
from pytorch_grad_cam import AblationCAM, ScoreCAM, ablation_cam, score_cam
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from saliency_robustness.attribution.cam_layer import cam_layer_name
from saliency_robustness.attribution.inputs import int_targets
from saliency_robustness.models.architectures import cam_reshape_transform
from saliency_robustness.models.build import get_layer


@contextlib.contextmanager
def _silent_cam_progress() -> Iterator[None]:
    """ScoreCAM and AblationCAM wrap their loops in ``tqdm.tqdm`` with no option to turn
    the bars off; swap the ``tqdm`` module they see for one whose bars are disabled."""
    silent = types.SimpleNamespace(tqdm=functools.partial(tqdm_module.tqdm, disable=True))
    modules = (score_cam, ablation_cam)
    saved = [module.tqdm for module in modules]
    for module in modules:
        module.tqdm = silent
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.tqdm = original


def _run_cam(cam_class, model, layer, inputs, targets, setup=None, **init) -> np.ndarray:
    # ViTs: tokens -> patch grid (pytorch-grad-cam's reshape_transform); None for CNNs
    reshape = cam_reshape_transform(model)
    cam = cam_class(model=model, target_layers=[layer], reshape_transform=reshape, **init)
    if setup is not None:
        setup(cam)
    try:
        with _silent_cam_progress():
            return cam(input_tensor=inputs, targets=[ClassifierOutputTarget(t) for t in targets])
    finally:
        # Not ``with cam:``: its __exit__ swallows IndexError and returns None.
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)  # the library's backward fills the weights' grads


def _cam(cam_class: type, name: str) -> Callable[..., np.ndarray]:
    def compute(
        model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, cam_layer: str | None = None
    ) -> np.ndarray:
        """pytorch-grad-cam's ``cam_class`` at ``cam_layer`` (None: the default layer)."""
        layer = get_layer(model, cam_layer_name(model, inputs, cam_layer))
        return _run_cam(cam_class, model, layer, inputs, int_targets(targets))

    compute.__name__ = compute.__qualname__ = name
    return compute


def scorecam(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    cam_layer: str | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """pytorch-grad-cam ScoreCAM, one image at a time: the library builds every masked
    copy of its batch at once (images x CAM channels x input size), so memory stays
    bounded by one image's copies, scored ``batch_size`` per forward pass."""
    layer = get_layer(model, cam_layer_name(model, inputs, cam_layer))

    def setup(cam) -> None:
        cam.batch_size = int(batch_size)

    targets = int_targets(targets)
    return np.concatenate(
        [
            _run_cam(ScoreCAM, model, layer, inputs[i : i + 1], targets[i : i + 1], setup)
            for i in range(len(inputs))
        ]
    )


def ablationcam(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    cam_layer: str | None = None,
    batch_size: int = 64,
    ratio_channels_to_ablate: float = 1.0,
) -> np.ndarray:
    """pytorch-grad-cam AblationCAM: ``batch_size`` ablated copies per forward pass."""
    layer = get_layer(model, cam_layer_name(model, inputs, cam_layer))
    return _run_cam(
        AblationCAM,
        model,
        layer,
        inputs,
        int_targets(targets),
        ablation_layer=AblationLayer(),  # the library's default instance is shared
        batch_size=int(batch_size),
        ratio_channels_to_ablate=float(ratio_channels_to_ablate),
    )


gradcam = _cam(pytorch_grad_cam.GradCAM, "gradcam")
gradcam_plus_plus = _cam(pytorch_grad_cam.GradCAMPlusPlus, "gradcam_plus_plus")
hirescam = _cam(pytorch_grad_cam.HiResCAM, "hirescam")
xgradcam = _cam(pytorch_grad_cam.XGradCAM, "xgradcam")
layercam = _cam(pytorch_grad_cam.LayerCAM, "layercam")
eigencam = _cam(pytorch_grad_cam.EigenCAM, "eigencam")
eigengradcam = _cam(pytorch_grad_cam.EigenGradCAM, "eigengradcam")
