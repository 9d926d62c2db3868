"""Saliency-method registry and batched attribution of clean and perturbed images.

Each method maps a batch of model inputs and target classes to 2-D float32 maps at input
resolution. Every ``SaliencyMethod`` entry records its channel rule (``channel_reduction``)
and whether its maps keep a sign (``signed``). In short: plain and guided gradients sum
absolute values over input channels (non-negative maps); Input x Gradient, Integrated
Gradients, GradientSHAP and DeepLift sum signed attributions over channels (so their
completeness properties hold); occlusion, LIME and Kernel SHAP attribute regions that span
every channel, so they take the (equal) channel mean; pytorch-grad-cam's CAMs are ReLU'd,
min-max scaled and upsampled to the input size; the shap package's Partition, Gradient
and Kernel explainers give signed maps of the same output as captum's methods (Partition
and Kernel over image regions, so they also take the channel mean); the controls are a
Sobel edge map of the image and seeded uniform noise. Adding a method is one
``SaliencyMethod`` entry.

Memory is bounded by the attribution batch size and each method's parameters
(``internal_batch_size``, ``perturbations_per_eval``, ``batch_size``), never by the number
of steps, samples or perturbations. Stochastic methods
draw their randomness per image from a seed derived from the run's seed and the image's
pixels, so a map depends neither on the batch size nor on the image's neighbours, and the
same configuration gives identical maps.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from saliency_robustness.evaluation import (
    MULTI_LABEL_THRESHOLD,
    multi_label_array,
    predict_proba,
)
from saliency_robustness.metrics import constant_maps
from saliency_robustness.models import (
    Combined,
    Ensemble,
    cam_reshape_transform,
    get_architecture,
    get_layer,
    images_to_tensor,
    load_trained_model,
    scale_pixels,
    token_grid,
)
from saliency_robustness.registry import lookup
from saliency_robustness.tables import CLEAN, MODEL_KEYS

log = logging.getLogger(__name__)

# Black image in model-input space (images_to_tensor maps 0..255 to -1..1).
BLACK = -1.0
# A CAM layer must keep at least this many positions along each side.
MIN_CAM_SIZE = 4
# Default CAM layers are searched among the top two levels of the module tree (a ResNet's
# stages and their blocks), not inside blocks.
CAM_LAYER_DEPTH = 2
# Integrated Gradients' default steps: the median relative completeness error of the
# default study's 1152 maps is 3.7 % at 64 (14.6 % at 16; config/README.md "Convergence of
# Integrated Gradients", bench/ig_convergence.py).
IG_STEPS = 64
# attribute_clean_and_perturbed warns when the median relative completeness error of one
# table (one model and method) is above this: a study's target is 5 %, but one model's
# median scatters around it (default study at 64 steps: 1.6, 7.9 and 6.3 % by fold; at 16
# steps 6.2, 26 and 24 %).
COMPLETENESS_WARNING = 0.10
# |f(x) - f(baseline)| at or below this (output units) counts as no change: float32
# rounding of two forward passes, so the relative completeness error is NaN.
GAP_TOLERANCE = 1e-6

GRADIENT_ABS = "sum of |attribution| over channels"
SIGNED_SUM = "signed sum over channels"
CHANNEL_MEAN = "mean over channels (the perturbed region spans every channel, so they are equal)"
CAM_RULE = (
    "CAM upsampled (pytorch-grad-cam): ReLU'd, min-max scaled to [0, 1] per image, "
    "bilinearly resized to the input size"
)


@dataclass(frozen=True)
class SaliencyMethod:
    """One saliency method.

    ``compute(model, inputs, targets, **params)`` returns float maps (N, H, W); a
    ``stochastic`` method also receives ``seeds``, one int per image, and must draw all its
    randomness from them. ``channel_reduction`` documents how channels become one map.
    ``signed_by`` (optional) decides ``signed`` from the parameters. ``choices`` lists the
    allowed values of parameters that take names.

    ``completeness``: the attributions sum to f(x) - f(baseline) (f: the model's output for
    the target, the logit). Such a method's ``compute`` also takes ``return_completeness``;
    with True it returns ``(maps, Completeness)``. ``completeness_by`` (optional) decides
    ``completeness`` from the parameters (smoothgrad: only over integrated_gradients).
    """

    library: str
    signed: bool
    channel_reduction: str
    compute: Callable[..., torch.Tensor | np.ndarray]
    defaults: dict = field(default_factory=dict)
    uses_cam_layer: bool = False
    stochastic: bool = False
    choices: dict = field(default_factory=dict)
    signed_by: Callable[[dict], bool] | None = None
    completeness: bool = False
    completeness_by: Callable[[dict], bool] | None = None


@dataclass(frozen=True)
class Completeness:
    """Per image: ``delta``, captum's convergence delta, sum(attributions over channels and
    pixels, before any channel reduction) - (f(x) - f(baseline)); ``gap``, f(x) - f(baseline),
    f the model output captum attributes (``model(x)[target]``: the logit, or an ensemble's
    log mean probability). Both in those output units, float64 arrays of length N."""

    delta: np.ndarray
    gap: np.ndarray

    @property
    def error(self) -> np.ndarray:
        """|delta| / |gap|: the relative completeness error; NaN where f(x) = f(baseline)
        (|gap| <= ``GAP_TOLERANCE``: nothing to explain, the ratio is rounding noise)."""
        gap = np.abs(self.gap)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gap > GAP_TOLERANCE, np.abs(self.delta) / gap, np.nan)


# --- helpers --------------------------------------------------------------------------------


def _int_targets(targets: torch.Tensor) -> list[int]:
    return [int(t) for t in targets.reshape(-1).tolist()]


@contextlib.contextmanager
def _quiet_captum() -> Iterator[None]:
    """Silence captum's per-call notices about the hooks it sets and removes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Setting (forward|backward)")
        warnings.filterwarnings("ignore", message=r".*did not already require gradients")
        yield


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
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


def _output_gap(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """f(x) - f(black) per image, f = ``model(x)[target]``: the output captum attributes
    (logits; an ensemble's log mean probability). One forward pass of the batch and one of
    a single black image (the baseline is the same for every image)."""
    with torch.no_grad():
        outputs = model(inputs.detach())
        black = model(torch.full_like(inputs[:1], BLACK).detach())
    rows = torch.arange(len(inputs), device=outputs.device)
    columns = targets.reshape(-1).long().to(outputs.device)
    gap = outputs[rows, columns] - black[0, columns]
    return gap.detach().double().cpu().numpy()


def _deltas(delta: torch.Tensor) -> np.ndarray:
    return delta.detach().double().reshape(-1).cpu().numpy()


def _to_uint8(inputs: torch.Tensor) -> np.ndarray:
    """Model inputs (N, C, H, W) in -1..1 back to the uint8 images they came from."""
    images = ((inputs.detach().float() + 1.0) * 127.5).round().clamp(0, 255)
    return images.to(torch.uint8).cpu().numpy()


# --- the target layer of CAM methods -------------------------------------------------------


def _layer_output_sizes(
    model: nn.Module, input_shape: Sequence[int], extra: Sequence[str] = ()
) -> list[tuple[str, int, int]]:
    """(name, height, width) of every submodule in the top ``CAM_LAYER_DEPTH`` levels
    (and of the modules named in ``extra``) with a 4-D output, or, in a ViT, a token output
    of the patch grid's size (the grid's height and width), in the order in which the
    modules finish during one dummy forward pass; modules called more than once (shared
    activations) are left out, their output is ambiguous."""
    records: list[tuple[str, int, int]] = []
    calls: dict[str, int] = {}
    grid = token_grid(model)

    def hook(name: str):
        def record(_module, _inputs, output) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                records.append((name, int(output.shape[-2]), int(output.shape[-1])))
            elif (
                grid is not None
                and isinstance(output, torch.Tensor)
                and output.ndim == 3
                and output.shape[1] == 1 + grid[0] * grid[1]
            ):
                records.append((name, *grid))

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if name and (name.count(".") < CAM_LAYER_DEPTH or name in extra)
    ]
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [record for record in records if calls[record[0]] == 1]


def _first_conv_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError("The model has no Conv2d layer; give in_channels explicitly.")


def default_cam_layer(
    model: nn.Module,
    arch: str | None = None,
    image_size: int | tuple[int, int] = 28,
    in_channels: int | None = None,
    min_size: int = MIN_CAM_SIZE,
) -> str:
    """The layer CAM methods use by default: the deepest one with a >= 4x4 output.

    One dummy forward pass at ``image_size`` records the spatial size of every layer's
    output. The architecture's preferred layer (``models.ARCHITECTURES[arch].cam_layer``)
    wins when it is at least ``min_size`` positions along each side; otherwise the layers
    are walked from the deepest (last to finish) to the shallowest and the first with a
    large enough output is taken. For the ResNets this is ``layer4`` at 28 px (CIFAR stem,
    4x4) and at 224 px (ImageNet stem, 7x7), and ``layer3`` where ``layer4`` would be
    smaller than 4x4 (e.g. 96 px with the ImageNet stem). ``arch`` defaults to the
    model's ``registry_name`` (set by ``models.build_model``). In a ViT a token layer counts
    with its patch grid's size (the preferred layer is the last block's ``ln_1``).
    """
    if isinstance(model, Ensemble | Combined):
        raise ValueError(
            "An ensemble or combined model has no single CAM layer: CAM methods average the "
            "members' (backbones') maps, each at its default layer (pass cam_layer=None)."
        )
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    channels = in_channels if in_channels is not None else _first_conv_channels(model)
    arch = arch if arch is not None else getattr(model, "registry_name", None)
    preferred = get_architecture(arch).cam_layer if arch is not None else None
    sizes = _layer_output_sizes(model, (channels, height, width), [preferred] if preferred else [])
    if preferred is not None:
        for name, h, w in sizes:
            if name == preferred and min(h, w) >= min_size:
                return name
    for name, h, w in reversed(sizes):
        if min(h, w) >= min_size:
            return name
    raise ValueError(
        f"No layer of the model keeps {min_size}x{min_size} positions at {height}x{width} px; "
        "set cam_layer explicitly."
    )


def _cam_layer_name(model: nn.Module, inputs: torch.Tensor, cam_layer: str | None) -> str:
    """``cam_layer`` as given, or the default layer for this input size when it is None."""
    if cam_layer is None or cam_layer == "auto":
        return default_cam_layer(model, None, tuple(inputs.shape[-2:]), inputs.shape[1])
    get_layer(model, cam_layer)  # an unknown name is a KeyError naming the layers
    return cam_layer


def _member_average(compute: Callable) -> Callable:
    """A CAM method that, on an ``Ensemble``, averages its members' maps, each member at
    its own default CAM layer (the members may be different architectures, so no single
    layer exists); on a ``Combined`` model, the maps of the combined model's output at each
    backbone's default CAM layer; on any other model ``compute`` itself."""

    @functools.wraps(compute)
    def wrapper(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *args, **kwargs):
        if not isinstance(model, Ensemble | Combined):
            return compute(model, inputs, targets, *args, **kwargs)
        if kwargs.pop("cam_layer", None) not in (None, "auto"):
            raise ValueError(
                "cam_layer cannot be set for an ensemble or combined model: each member "
                "(backbone) uses its own default CAM layer; remove "
                "attribute.params.<method>.cam_layer."
            )
        if isinstance(model, Combined):  # (model, layer): the whole model's target output
            size, channels = tuple(inputs.shape[-2:]), inputs.shape[1]
            runs = [
                (model, f"backbones.{i}.{default_cam_layer(backbone, None, size, channels)}")
                for i, backbone in enumerate(model.backbones)
            ]
        else:  # through the wrapper: a member may itself be a combined model
            runs = [(member, None) for member in model.members]
        maps = []
        for member, layer in runs:
            run = compute if isinstance(model, Combined) else wrapper
            result = run(member, inputs, targets, *args, cam_layer=layer, **kwargs)
            if isinstance(result, torch.Tensor):
                result = result.detach().float().cpu().numpy()
            maps.append(np.asarray(result, dtype=np.float32))
        return np.mean(maps, axis=0)

    return wrapper


# --- a model copy for DeepLift and guided backpropagation -----------------------------------


class _PerCall(nn.Module):
    """Stands in for a non-linear module that a forward pass may call several times
    (torchvision ResNets reuse one ``nn.ReLU`` per block): call i of a forward pass goes
    to its own non-in-place copy, so captum's per-module hooks see each use separately.
    The output is cloned so that two adjacent non-linear modules (ReLU then max-pool)
    never share a tensor: captum 0.9.0's DeepLift otherwise reads the wrong output
    gradient for the first of them (captum issue #1104)."""

    def __init__(self, module: nn.Module, n_calls: int) -> None:
        super().__init__()
        copies = []
        for _ in range(max(1, n_calls)):
            fresh = copy.deepcopy(module)
            if hasattr(fresh, "inplace"):
                fresh.inplace = False
            copies.append(fresh)
        self.calls = nn.ModuleList(copies)
        self.index = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        module = self.calls[self.index % len(self.calls)]
        self.index += 1
        return module(x).clone()


class _PlainMaxPool(nn.Module):
    """An overlapping max-pool (kernel larger than stride, as in the ImageNet stem) called
    through the functional API, so that captum leaves it to plain autograd: captum's
    DeepLift max-pool rule unpools with ``max_unpool``, which drops contributions where
    windows overlap and breaks summation-to-delta far more than the plain gradient does."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool
        return F.max_pool2d(x, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode)


def _overlapping(pool: nn.MaxPool2d) -> bool:
    kernel = nn.modules.utils._pair(pool.kernel_size)
    stride = nn.modules.utils._pair(pool.stride or pool.kernel_size)
    return any(k > s for k, s in zip(kernel, stride, strict=True))


def unshared_copy(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A deep copy of ``model`` in which every non-linear module DeepLift hooks is used
    once per forward pass, not in place, and not adjacent to another one.

    Needed by captum's DeepLift (which raises "A Module ReLU(inplace=True) was detected
    that does not contain some of the input/output attributes ..." on a torchvision ResNet)
    and used for guided backpropagation too, so that one rule holds for both. The original
    model is untouched; the copy computes the same outputs. ``example`` (one input is
    enough) is run once to count how often each module is called.
    """
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    model = copy.deepcopy(model).eval()
    counts: dict[str, int] = {}

    def counter(name: str):
        def count(_module, _inputs) -> None:
            counts[name] = counts.get(name, 0) + 1

        return count

    handles = [
        module.register_forward_pre_hook(counter(name))
        for name, module in model.named_modules()
        if type(module) in SUPPORTED_NON_LINEAR
    ]
    try:
        with torch.no_grad():
            model(example[:1].detach())
    finally:
        for handle in handles:
            handle.remove()
    wrappers = []
    for name, n_calls in counts.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = getattr(parent, child)
        if isinstance(module, nn.MaxPool2d) and _overlapping(module):
            replacement = _PlainMaxPool(module)
        else:
            replacement = _PerCall(module, n_calls)
            wrappers.append(replacement)
        setattr(parent, child, replacement)

    def restart(_module, _inputs) -> None:
        for wrapper in wrappers:
            wrapper.index = 0

    model.register_forward_pre_hook(restart)
    return model


# --- captum: gradients ------------------------------------------------------------------


def _saliency(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from captum.attr import Saliency

    return Saliency(model).attribute(inputs, target=targets, abs=True).sum(dim=1)


def _input_x_gradient(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    from captum.attr import InputXGradient

    return InputXGradient(model).attribute(inputs, target=targets).sum(dim=1)


def _integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    n_steps: int = IG_STEPS,
    internal_batch_size: int = 256,
    return_completeness: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Completeness]:
    """captum IntegratedGradients from the black image (Gauss-Legendre, ``n_steps``
    points); with ``return_completeness`` also captum's convergence delta per image and
    f(x) - f(black) from two forward passes of our own."""
    from captum.attr import IntegratedGradients

    # internal_batch_size bounds memory: captum otherwise expands the batch n_steps times.
    result = IntegratedGradients(model).attribute(
        inputs,
        baselines=torch.full_like(inputs, BLACK),
        target=targets,
        n_steps=int(n_steps),
        internal_batch_size=int(internal_batch_size),
        return_convergence_delta=return_completeness,
    )
    if not return_completeness:
        return result.sum(dim=1)
    attributions, delta = result
    check = Completeness(_deltas(delta), _output_gap(model, inputs, targets))
    return attributions.sum(dim=1), check


def _gradient_shap(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seeds: Sequence[int],
    n_samples: int = 20,
    stdevs: float = 0.0,
    n_baselines: int = 8,
    internal_batch_size: int = 64,
) -> torch.Tensor:
    """captum GradientShap per image, its samples in chunks of ``internal_batch_size``
    (captum has no internal batching for it), averaged with the chunk sizes as weights.
    Baseline distribution: the black image and ``n_baselines - 1`` images of uniform noise
    over the input range, drawn from the image's seed like captum's own sampling."""
    from captum.attr import GradientShap

    explainer = GradientShap(model)
    chunk = max(1, int(internal_batch_size))
    maps = []
    for image, target, seed in zip(inputs, _int_targets(targets), seeds, strict=True):
        x = image.unsqueeze(0)
        with _seeded(seed, x.device), _quiet_captum():
            noise = torch.rand((max(1, int(n_baselines)) - 1, *x.shape[1:]), device=x.device)
            baselines = torch.cat([torch.full_like(x, BLACK), noise * 2 - 1]).detach()
            total = torch.zeros_like(x)
            for start in range(0, int(n_samples), chunk):
                k = min(chunk, int(n_samples) - start)
                part = explainer.attribute(
                    x, baselines=baselines, target=target, n_samples=k, stdevs=float(stdevs)
                )
                total = total + part.detach() * k
        maps.append((total / int(n_samples)).sum(dim=1))
    return torch.cat(maps)


def _deeplift(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    internal_batch_size: int = 64,
    return_completeness: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Completeness]:
    """captum DeepLift (rescale rule, black baseline) on ``unshared_copy(model)``; images
    in chunks of ``internal_batch_size`` (each runs twice that: inputs and baselines).

    With ``return_completeness`` also the summation-to-delta residual per image, captum's
    convergence delta sum(attributions) - (f(x) - f(black)), computed as captum does but
    with f(x) - f(black) from one forward pass of the original model (captum's
    ``return_convergence_delta`` runs inputs and baselines through the copy again: +44 %
    time at batch 32, against +17 %)."""
    from captum.attr import DeepLift

    explainer = DeepLift(unshared_copy(model, inputs))
    chunk = max(1, int(internal_batch_size))
    maps, sums = [], []
    with _quiet_captum():
        for start in range(0, len(inputs), chunk):
            x = inputs[start : start + chunk]
            attributions = explainer.attribute(
                x, baselines=torch.full_like(x, BLACK), target=targets[start : start + chunk]
            ).detach()
            maps.append(attributions.sum(dim=1))
            if return_completeness:
                sums.append(_deltas(attributions.reshape(len(x), -1).sum(dim=1)))
    if not return_completeness:
        return torch.cat(maps)
    gap = _output_gap(model, inputs, targets)
    return torch.cat(maps), Completeness(np.concatenate(sums) - gap, gap)


def _guided_backprop(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from captum.attr import GuidedBackprop

    with _quiet_captum():
        attributions = GuidedBackprop(unshared_copy(model, inputs)).attribute(
            inputs, target=targets
        )
    return attributions.abs().sum(dim=1)


@_member_average
def _guided_gradcam(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, cam_layer: str | None = None
) -> torch.Tensor:
    from captum.attr import GuidedGradCam

    name = _cam_layer_name(model, inputs, cam_layer)
    unshared = unshared_copy(model, inputs)
    with _quiet_captum():
        attributions = GuidedGradCam(unshared, get_layer(unshared, name)).attribute(
            inputs, target=targets
        )
    return attributions.abs().sum(dim=1)


def _smoothgrad(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seeds: Sequence[int],
    base: str = "saliency",
    nt_samples: int = 20,
    stdevs: float = 0.3,
    n_steps: int = 20,
    internal_batch_size: int = 64,
    return_completeness: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Completeness]:
    """captum NoiseTunnel (smoothgrad: mean attribution over noisy copies) over ``base``,
    per image with noise from the image's seed. ``internal_batch_size`` bounds the inputs
    per forward pass (noisy copies, times ``n_steps`` for integrated_gradients).

    ``return_completeness`` (integrated_gradients base only): per image, the mean of
    captum's convergence deltas over the noisy copies (the mean map's completeness
    residual against mean f(x + noise) - f(black)); that gap is sum(mean attribution) - mean
    delta, as the noisy copies are drawn inside captum."""
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

    if base == "saliency":
        method, kwargs, per_sample = Saliency(model), {"abs": True}, 1
    elif base == "input_x_gradient":
        method, kwargs, per_sample = InputXGradient(model), {}, 1
    elif base == "integrated_gradients":
        kwargs = {
            "baselines": BLACK,
            "n_steps": int(n_steps),
            "internal_batch_size": int(internal_batch_size),
        }
        method, per_sample = IntegratedGradients(model), int(n_steps)
    else:
        raise ValueError(f"smoothgrad: unknown base '{base}'; allowed: {SMOOTHGRAD_BASES}.")
    if return_completeness and base != "integrated_gradients":
        raise ValueError(f"smoothgrad over {base} has no completeness property.")
    if return_completeness:
        kwargs["return_convergence_delta"] = True
    tunnel = NoiseTunnel(method)
    batch = max(1, min(int(nt_samples), int(internal_batch_size) // per_sample))
    maps, deltas, gaps = [], [], []
    for image, target, seed in zip(inputs, _int_targets(targets), seeds, strict=True):
        x = image.unsqueeze(0)
        with _seeded(seed, x.device), _quiet_captum():
            result = tunnel.attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=int(nt_samples),
                nt_samples_batch_size=batch,
                stdevs=float(stdevs),
                target=target,
                **kwargs,
            )
        attributions = result[0] if return_completeness else result
        if return_completeness:
            delta = float(_deltas(result[1]).mean())  # one per noisy copy
            deltas.append(delta)
            gaps.append(float(attributions.detach().double().sum()) - delta)
        maps.append(attributions.detach().sum(dim=1))
    if not return_completeness:
        return torch.cat(maps)
    return torch.cat(maps), Completeness(np.asarray(deltas), np.asarray(gaps))


SMOOTHGRAD_BASES = ("saliency", "input_x_gradient", "integrated_gradients")


# --- captum: perturbations ------------------------------------------------------------------


def _occlusion(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    window: int | None = None,
    stride: int | None = None,
    perturbations_per_eval: int = 8,
) -> torch.Tensor:
    """captum Occlusion with a black square of ``window`` px moved by ``stride`` px (None:
    a seventh of the shorter image side, and half the window). Each forward pass holds
    ``perturbations_per_eval`` perturbed copies of every image in the batch."""
    from captum.attr import Occlusion

    channels, height, width = inputs.shape[1:]
    side = min(height, width)
    window = int(window) if window is not None else max(1, round(side / 7))
    stride = int(stride) if stride is not None else max(1, window // 2)
    with torch.no_grad():
        attributions = Occlusion(model).attribute(
            inputs.detach(),
            sliding_window_shapes=(channels, window, window),
            strides=(channels, stride, stride),
            baselines=BLACK,
            target=targets,
            perturbations_per_eval=int(perturbations_per_eval),
        )
    return attributions.mean(dim=1)


def superpixels(
    inputs: torch.Tensor, n_segments: int = 49, compactness: float = 0.1
) -> torch.Tensor:
    """SLIC superpixels (skimage) of each image as captum feature masks (N, C, H, W),
    segment ids from 0 and shared by all channels. Grayscale images are segmented on
    their intensity (``channel_axis=None``), colour images in Lab."""
    from skimage.segmentation import slic

    masks = []
    for image in _to_uint8(inputs):
        pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        segments = slic(
            pixels,
            n_segments=int(n_segments),
            compactness=float(compactness),
            channel_axis=None if image.shape[0] == 1 else -1,
            start_label=0,
        )
        masks.append(np.broadcast_to(segments, image.shape))
    return torch.as_tensor(np.stack(masks), device=inputs.device).long()


def _surrogate(kind: str):
    def compute(
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        seeds: Sequence[int],
        n_samples: int = 128,
        perturbations_per_eval: int = 64,
        n_segments: int = 49,
        compactness: float = 0.1,
    ) -> torch.Tensor:
        """captum Lime / KernelShap per image on SLIC superpixels (black when removed),
        sampling from the image's seed; ``perturbations_per_eval`` samples per forward."""
        from captum.attr import KernelShap, Lime

        explainer = Lime(model) if kind == "lime" else KernelShap(model)
        masks = superpixels(inputs, n_segments, compactness)
        maps = []
        for image, target, seed, mask in zip(
            inputs.detach(), _int_targets(targets), seeds, masks, strict=True
        ):
            with _seeded(seed, image.device), _quiet_captum():
                attributions = explainer.attribute(
                    image.unsqueeze(0),
                    baselines=BLACK,
                    target=target,
                    feature_mask=mask.unsqueeze(0),
                    n_samples=int(n_samples),
                    perturbations_per_eval=int(perturbations_per_eval),
                )
            maps.append(attributions.detach().float().mean(dim=1))
        return torch.cat(maps)

    compute.__name__ = f"_{kind}"
    return compute


# --- shap -----------------------------------------------------------------------------------

# What a shap_partition masker puts where a feature is hidden (shap.maskers.Image): a box
# blur of the original image (the default: a hidden pixel's value depends on no other
# feature's state, so a pixel the model ignores gets no credit), black (the baseline of
# captum's occlusion, LIME and Kernel SHAP), or inpainting from the visible pixels (cv2
# Telea or Navier-Stokes), which makes hidden pixels depend on visible ones elsewhere (on
# four BreastMNIST images, 32-91 % of the map of a model that sees one quadrant fell
# outside it: tests/unit/test_shap_methods.py, config/README.md "shap methods").
SHAP_MASKERS = ("blur", "black", "inpaint_telea", "inpaint_ns")
# shap_gradient's background (the reference images expected gradients integrate from).
SHAP_BACKGROUNDS = ("blurred", "black", "noise")
# Seed of the tie-breaking draws of shap's Partition explainer (the method is otherwise
# deterministic; the maps do not depend on the run's seed).
PARTITION_TIE_SEED = 0


def _import_shap() -> types.ModuleType:
    """The shap package, without the notices its import raises about matplotlib's colormap
    API (shap.plots.colors, PendingDeprecationWarning with matplotlib 3.11)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module=r"shap\.")
        import shap  # here, not at the top: heavy (numba, matplotlib), only its methods need it
    return shap


def _positive_int(method: str, key: str, value, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError naming ``attribute.params.<method>.<key>``."""
    number = isinstance(value, (int, float, np.integer, np.floating))
    if not number or isinstance(value, bool) or not float(value).is_integer() or value < minimum:
        raise ValueError(
            f"attribute.params.{method}.{key} is {value!r}; it must be an integer >= {minimum}."
        )
    return int(value)


class _TargetOutput(nn.Module):
    """``model(x)[:, [target]]``: the one output the other methods attribute (the logit; an
    ensemble's log mean probability, or logit of the mean sigmoid), as a single-output
    model for shap.GradientExplainer, which otherwise explains every class."""

    def __init__(self, model: nn.Module, target: int) -> None:
        super().__init__()
        self.model, self.target = model, int(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.target : self.target + 1]


def _target_outputs(model: nn.Module, batches: Iterator[torch.Tensor], target: int) -> np.ndarray:
    """``model(x)[:, target]`` of every batch, concatenated as float64 (shap's model
    functions); an empty array when there is no batch."""
    with torch.no_grad():
        parts = [model(x)[:, target].double().cpu().numpy() for x in batches]
    return np.concatenate([np.zeros(0), *parts])


def _target_output_of_images(
    model: nn.Module, target: int, batch_size: int, device: torch.device
) -> Callable[[np.ndarray], np.ndarray]:
    """shap's model function for images in its layout, floats (M, H, W, C) on the 0..255
    scale of the uint8 images: ``model(x)[:, target]`` (M,) as float64, with the inputs
    scaled as ``images_to_tensor`` does, ``batch_size`` images per forward pass."""

    def output(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        batches = (
            scale_pixels(
                torch.as_tensor(images[start : start + batch_size], device=device)
            ).permute(0, 3, 1, 2)
            for start in range(0, len(images), batch_size)
        )
        return _target_outputs(model, batches, target)

    return output


def _shap_partition(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    masker: str = "blur",
    blur_kernel: int | None = None,
    max_evals: int = 500,
    batch_size: int = 64,
) -> np.ndarray:
    """shap's Partition explainer (Owen values over shap.maskers.Image's hierarchy of
    axis-aligned halvings of the image, channels included) per image, with ``max_evals``
    model evaluations, ``batch_size`` masked images per forward pass. Hidden features are
    filled as ``masker`` says (``SHAP_MASKERS``; ``blur``: a box blur of ``blur_kernel`` px,
    None: half the shorter image side, as shap's ImageNet example's blur(128,128) at 224 px).
    A group the budget does not split shares its value evenly among its pixels, so the map
    sums to f(x) - f(every feature hidden). Deterministic: shap's only random draw breaks
    ties between equally important groups in its queue (np.random), seeded with
    ``PARTITION_TIE_SEED`` for every image."""
    shap = _import_shap()

    if masker not in SHAP_MASKERS:
        raise ValueError(
            f"attribute.params.shap_partition.masker: unknown value {masker!r}; "
            f"allowed: {', '.join(SHAP_MASKERS)}."
        )
    max_evals = _positive_int("shap_partition", "max_evals", max_evals, 3)
    batch_size = _positive_int("shap_partition", "batch_size", batch_size)
    height, width = inputs.shape[-2:]
    if masker == "blur":
        side = min(height, width) // 2 if blur_kernel is None else blur_kernel
        side = _positive_int("shap_partition", "blur_kernel", side)
        mask_value = f"blur({side},{side})"
    else:
        mask_value = 0.0 if masker == "black" else masker  # 0: black on the uint8 scale
    images = np.moveaxis(_to_uint8(inputs), 1, -1).astype(np.float32)  # shap's (H, W, C)
    maps = []
    for image, target in zip(images, _int_targets(targets), strict=True):
        # A masker per image: the Image masker caches its blurred image by id(image), and
        # a freed image's id can come back for the next one.
        explainer = shap.explainers.Partition(
            _target_output_of_images(model, target, batch_size, inputs.device),
            shap.maskers.Image(mask_value, image.shape),
        )
        with _seeded(PARTITION_TIE_SEED, inputs.device):
            explanation = explainer(
                image[None], max_evals=max_evals, batch_size=batch_size, silent=True
            )
        values = np.asarray(explanation.values, dtype=np.float64).reshape(image.shape)
        maps.append(values.sum(axis=-1))
    return np.asarray(maps, dtype=np.float32).reshape(len(images), height, width)


def _shap_background(x: torch.Tensor, background: str, n_baselines: int) -> torch.Tensor:
    """shap_gradient's reference images for one image ``x`` (1, C, H, W) in model space.

    ``blurred``: ``n_baselines`` Gaussian blurs of the image (sigma from a quarter of the
    shorter side down to 1 px, geometrically): reference images that keep the image's
    coarse anatomy and intensity, the nearest to "training-like" images a map can use
    without depending on other images. ``black``: the black image alone (expected
    gradients then estimate Integrated Gradients from black). ``noise``: the black image
    and ``n_baselines - 1`` images of uniform noise over the input range, drawn from the
    seeded torch generator (captum's gradient_shap distribution)."""
    from scipy.ndimage import gaussian_filter

    if background == "black":
        return torch.full_like(x, BLACK)
    if background == "noise":
        noise = torch.rand((n_baselines - 1, *x.shape[1:]), device=x.device)
        return torch.cat([torch.full_like(x, BLACK), noise * 2 - 1])
    image = x[0].detach().float().cpu().numpy()
    sigmas = np.geomspace(max(1.0, min(image.shape[1:]) / 4), 1.0, n_baselines)
    blurred = [gaussian_filter(image, sigma=(0, s, s), mode="reflect") for s in sigmas]
    return torch.as_tensor(np.stack(blurred), dtype=x.dtype, device=x.device)


def _shap_gradient(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seeds: Sequence[int],
    background: str = "blurred",
    n_baselines: int = 8,
    n_samples: int = 64,
    local_smoothing: float = 0.0,
    batch_size: int = 64,
) -> np.ndarray:
    """shap.GradientExplainer (expected gradients) per image on the model's target output:
    the mean over ``n_samples`` draws of a reference image (``_shap_background``) and a
    point on the path to the image of gradient x (image - reference), ``batch_size``
    draws per forward+backward pass and per call of shap (which holds all of a call's draws
    in memory); ``local_smoothing``: the standard deviation of
    Gaussian noise added to the image (model-input units, 0: none). Draws from the image's
    seed."""
    shap = _import_shap()

    if background not in SHAP_BACKGROUNDS:
        raise ValueError(
            f"attribute.params.shap_gradient.background: unknown value {background!r}; "
            f"allowed: {', '.join(SHAP_BACKGROUNDS)}."
        )
    n_baselines = _positive_int("shap_gradient", "n_baselines", n_baselines)
    if not float(local_smoothing) >= 0:
        raise ValueError(
            f"attribute.params.shap_gradient.local_smoothing is {local_smoothing!r}; it must "
            "be a standard deviation >= 0 (model-input units)."
        )
    n_samples = _positive_int("shap_gradient", "n_samples", n_samples)
    batch_size = _positive_int("shap_gradient", "batch_size", batch_size)
    maps = []
    for image, target, seed in zip(inputs.detach(), _int_targets(targets), seeds, strict=True):
        x = image.unsqueeze(0)
        total = np.zeros(x.shape[1:], dtype=np.float64)
        with _seeded(seed, x.device):
            references = _shap_background(x, background, n_baselines).detach()
            explainer = shap.GradientExplainer(
                _TargetOutput(model, target),
                references,
                batch_size=batch_size,
                local_smoothing=float(local_smoothing),
            )
            # shap holds all nsamples draws at once: chunks of batch_size bound the memory
            chunks = range(0, n_samples, batch_size)
            chunk_seeds = np.random.randint(0, 2**32, size=len(chunks), dtype=np.int64)
            for start, chunk_seed in zip(chunks, chunk_seeds, strict=True):
                k = min(batch_size, n_samples - start)
                # rseed: shap reseeds NumPy's global generator with it; _seeded restores it
                values = explainer.shap_values(x, nsamples=k, rseed=int(chunk_seed))
                total += np.asarray(values, dtype=np.float64).reshape(x.shape[1:]) * k
        model.zero_grad(set_to_none=True)
        maps.append((total / n_samples).sum(axis=0))
    return np.asarray(maps, dtype=np.float32).reshape(len(inputs), *inputs.shape[-2:])


def _target_output_of_coalitions(
    model: nn.Module, image: torch.Tensor, pixel_segment: np.ndarray, target: int, batch_size: int
) -> Callable[[np.ndarray], np.ndarray]:
    """shap_kernel's model function: coalitions (M, superpixels), 0/1 per superpixel, to the
    target output (M,) float64 of ``image`` (C, H, W) with the superpixels outside each
    coalition black; ``pixel_segment`` holds each pixel's superpixel (H * W)."""
    flat = image.reshape(image.shape[0], -1)
    where = torch.as_tensor(pixel_segment, device=image.device)
    black = torch.full_like(flat, BLACK)

    def output(coalitions: np.ndarray) -> np.ndarray:
        keep = torch.as_tensor(np.asarray(coalitions) > 0.5, device=image.device)
        shown = (
            keep[start : start + batch_size][:, where].unsqueeze(1)
            for start in range(0, len(keep), batch_size)
        )
        batches = (torch.where(s, flat, black).reshape(len(s), *image.shape) for s in shown)
        return _target_outputs(model, batches, target)

    return output


def _shap_kernel(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seeds: Sequence[int],
    n_samples: int = 128,
    batch_size: int = 64,
    n_segments: int = 49,
    compactness: float = 0.1,
) -> np.ndarray:
    """shap.KernelExplainer per image over the SLIC superpixels captum's kernel_shap uses
    (``superpixels``), a hidden superpixel black; ``n_samples`` coalitions sampled from
    the image's seed, ``batch_size`` images per forward pass. Unlike captum's KernelShap,
    shap enumerates the small and large coalitions first, pairs each sample with its
    complement and constrains the values to add up to f(x) - f(black) exactly. No L1
    feature selection (shap's default keeps 10 superpixels): every superpixel gets a
    value, as in captum's kernel_shap. Each pixel shows its superpixel's value."""
    shap = _import_shap()

    n_samples = _positive_int("shap_kernel", "n_samples", n_samples, 2)
    batch_size = _positive_int("shap_kernel", "batch_size", batch_size)
    segments = superpixels(inputs, n_segments, compactness)[:, 0].cpu().numpy()
    maps = []
    for image, target, seed, segment in zip(
        inputs.detach(), _int_targets(targets), seeds, segments, strict=True
    ):
        _, pixel_segment = np.unique(segment.reshape(-1), return_inverse=True)
        n_features = int(pixel_segment.max()) + 1
        output = _target_output_of_coalitions(model, image, pixel_segment, target, batch_size)
        explainer = shap.KernelExplainer(output, np.zeros((1, n_features)))
        with _seeded(seed, image.device):
            values = explainer.shap_values(
                np.ones((1, n_features)), nsamples=n_samples, l1_reg=False, silent=True
            )
        values = np.asarray(values, dtype=np.float64).reshape(n_features)
        maps.append(values[pixel_segment].reshape(image.shape[1:]))
    return np.asarray(maps, dtype=np.float32).reshape(len(inputs), *inputs.shape[-2:])


# --- pytorch-grad-cam -----------------------------------------------------------------------


@contextlib.contextmanager
def _silent_cam_progress() -> Iterator[None]:
    """ScoreCAM and AblationCAM wrap their loops in ``tqdm.tqdm`` with no option to turn
    the bars off; swap the ``tqdm`` module they see for one whose bars are disabled."""
    import tqdm as tqdm_module
    from pytorch_grad_cam import ablation_cam, score_cam

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
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

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


def _cam(class_name: str):
    def compute(
        model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, cam_layer: str | None = None
    ) -> np.ndarray:
        import pytorch_grad_cam

        layer = get_layer(model, _cam_layer_name(model, inputs, cam_layer))
        cam_class = getattr(pytorch_grad_cam, class_name)
        return _run_cam(cam_class, model, layer, inputs, _int_targets(targets))

    compute.__name__ = f"_{class_name}"
    return _member_average(compute)


@_member_average
def _scorecam(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    cam_layer: str | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """pytorch-grad-cam ScoreCAM, one image at a time: the library builds every masked
    copy of its batch at once (images x CAM channels x input size), so memory stays
    bounded by one image's copies, scored ``batch_size`` per forward pass."""
    from pytorch_grad_cam import ScoreCAM

    layer = get_layer(model, _cam_layer_name(model, inputs, cam_layer))

    def setup(cam) -> None:
        cam.batch_size = int(batch_size)

    targets = _int_targets(targets)
    return np.concatenate(
        [
            _run_cam(ScoreCAM, model, layer, inputs[i : i + 1], targets[i : i + 1], setup)
            for i in range(len(inputs))
        ]
    )


@_member_average
def _ablationcam(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    cam_layer: str | None = None,
    batch_size: int = 64,
    ratio_channels_to_ablate: float = 1.0,
) -> np.ndarray:
    """pytorch-grad-cam AblationCAM: ``batch_size`` ablated copies per forward pass."""
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.ablation_layer import AblationLayer

    layer = get_layer(model, _cam_layer_name(model, inputs, cam_layer))
    return _run_cam(
        AblationCAM,
        model,
        layer,
        inputs,
        _int_targets(targets),
        ablation_layer=AblationLayer(),  # the library's default instance is shared
        batch_size=int(batch_size),
        ratio_channels_to_ablate=float(ratio_channels_to_ablate),
    )


# --- controls -------------------------------------------------------------------------------


def _sobel(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """skimage.filters.sobel of the uint8 image (skimage scales it to 0..1), per channel,
    summed over channels; independent of the model and the target."""
    from skimage.filters import sobel

    maps = [np.sum([sobel(channel) for channel in image], axis=0) for image in _to_uint8(inputs)]
    return np.asarray(maps, dtype=np.float32).reshape(len(inputs), *inputs.shape[-2:])


def _random(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]
) -> np.ndarray:
    """Uniform noise in [0, 1) from each image's seed: unrelated maps for a clean image and
    its perturbed versions, the floor of every map-similarity metric."""
    shape = tuple(inputs.shape[-2:])
    maps = [np.random.default_rng(seed).random(shape, dtype=np.float32) for seed in seeds]
    return np.asarray(maps, dtype=np.float32).reshape(len(inputs), *shape)


# LIME and Kernel SHAP share their sampling and SLIC superpixel settings.
SURROGATE_DEFAULTS = {
    "n_samples": 128,
    "perturbations_per_eval": 64,
    "n_segments": 49,
    "compactness": 0.1,
}

# shap_kernel samples and segments as captum's kernel_shap does, so the two compare.
SHAP_KERNEL_DEFAULTS = {
    "n_samples": SURROGATE_DEFAULTS["n_samples"],
    "batch_size": SURROGATE_DEFAULTS["perturbations_per_eval"],
    "n_segments": SURROGATE_DEFAULTS["n_segments"],
    "compactness": SURROGATE_DEFAULTS["compactness"],
}

METHODS: dict[str, SaliencyMethod] = {
    # captum, gradients
    "saliency": SaliencyMethod(
        library="captum", signed=False, channel_reduction=GRADIENT_ABS, compute=_saliency
    ),
    "input_x_gradient": SaliencyMethod(
        library="captum", signed=True, channel_reduction=SIGNED_SUM, compute=_input_x_gradient
    ),
    "integrated_gradients": SaliencyMethod(
        library="captum",
        signed=True,
        channel_reduction=SIGNED_SUM + " (completeness holds)",
        compute=_integrated_gradients,
        defaults={"n_steps": IG_STEPS, "internal_batch_size": 256},
        completeness=True,
    ),
    "gradient_shap": SaliencyMethod(
        library="captum",
        signed=True,
        channel_reduction=SIGNED_SUM + " (completeness holds in expectation)",
        compute=_gradient_shap,
        defaults={"n_samples": 20, "stdevs": 0.0, "n_baselines": 8, "internal_batch_size": 64},
        stochastic=True,
    ),
    "deeplift": SaliencyMethod(
        library="captum",
        signed=True,
        channel_reduction=(
            SIGNED_SUM + " (summation-to-delta holds; approximately behind an overlapping "
            "max-pool such as the ImageNet stem above 64 px)"
        ),
        compute=_deeplift,
        defaults={"internal_batch_size": 64},
        completeness=True,
    ),
    "guided_backprop": SaliencyMethod(
        library="captum", signed=False, channel_reduction=GRADIENT_ABS, compute=_guided_backprop
    ),
    "guided_gradcam": SaliencyMethod(
        library="captum",
        signed=False,
        channel_reduction=GRADIENT_ABS + " (guided backprop x nearest-upsampled Grad-CAM)",
        compute=_guided_gradcam,
        uses_cam_layer=True,
    ),
    "smoothgrad": SaliencyMethod(
        library="captum",
        signed=False,
        channel_reduction=(
            "the base method's rule on NoiseTunnel's mean attribution: saliency sums "
            "|gradient| over channels, input_x_gradient and integrated_gradients sum signed "
            "values"
        ),
        compute=_smoothgrad,
        defaults={
            "base": "saliency",
            "nt_samples": 20,
            "stdevs": 0.3,
            "n_steps": 20,
            "internal_batch_size": 64,
        },
        stochastic=True,
        choices={"base": SMOOTHGRAD_BASES},
        signed_by=lambda params: params.get("base", "saliency") != "saliency",
        completeness_by=lambda params: params.get("base") == "integrated_gradients",
    ),
    # captum, perturbations
    "occlusion": SaliencyMethod(
        library="captum",
        signed=True,
        channel_reduction=CHANNEL_MEAN,
        compute=_occlusion,
        defaults={"window": None, "stride": None, "perturbations_per_eval": 8},
    ),
    "lime": SaliencyMethod(
        library="captum",
        signed=True,
        channel_reduction=CHANNEL_MEAN,
        compute=_surrogate("lime"),
        defaults=dict(SURROGATE_DEFAULTS),
        stochastic=True,
    ),
    "kernel_shap": SaliencyMethod(
        library="captum",
        signed=True,
        channel_reduction=CHANNEL_MEAN,
        compute=_surrogate("kernel_shap"),
        defaults=dict(SURROGATE_DEFAULTS),
        stochastic=True,
    ),
    # shap (its Partition explainer has no captum equivalent)
    "shap_partition": SaliencyMethod(
        library="shap",
        signed=True,
        channel_reduction=(
            SIGNED_SUM + " (the hierarchy splits channels too; the map sums to f(x) - "
            "f(every pixel masked))"
        ),
        compute=_shap_partition,
        defaults={
            "masker": "blur",
            "blur_kernel": None,
            "max_evals": 500,
            "batch_size": 64,
        },
        choices={"masker": SHAP_MASKERS},
    ),
    "shap_gradient": SaliencyMethod(
        library="shap",
        signed=True,
        channel_reduction=SIGNED_SUM + " (completeness holds in expectation)",
        compute=_shap_gradient,
        defaults={
            "background": "blurred",
            "n_baselines": 8,
            "n_samples": 64,
            "local_smoothing": 0.0,
            "batch_size": 64,
        },
        stochastic=True,
        choices={"background": SHAP_BACKGROUNDS},
    ),
    "shap_kernel": SaliencyMethod(
        library="shap",
        signed=True,
        channel_reduction=CHANNEL_MEAN,
        compute=_shap_kernel,
        defaults=dict(SHAP_KERNEL_DEFAULTS),
        stochastic=True,
    ),
    # pytorch-grad-cam
    **{
        name: SaliencyMethod(
            library="pytorch-grad-cam",
            signed=False,
            channel_reduction=CAM_RULE,
            compute=_cam(class_name),
            uses_cam_layer=True,
        )
        for name, class_name in [
            ("gradcam", "GradCAM"),
            ("gradcam_plus_plus", "GradCAMPlusPlus"),
            ("hirescam", "HiResCAM"),
            ("xgradcam", "XGradCAM"),
            ("layercam", "LayerCAM"),
            ("eigencam", "EigenCAM"),
            ("eigengradcam", "EigenGradCAM"),
        ]
    },
    "scorecam": SaliencyMethod(
        library="pytorch-grad-cam",
        signed=False,
        channel_reduction=CAM_RULE,
        compute=_scorecam,
        defaults={"batch_size": 64},
        uses_cam_layer=True,
    ),
    "ablationcam": SaliencyMethod(
        library="pytorch-grad-cam",
        signed=False,
        channel_reduction=CAM_RULE,
        compute=_ablationcam,
        defaults={"batch_size": 64, "ratio_channels_to_ablate": 1.0},
        uses_cam_layer=True,
    ),
    # controls
    "sobel": SaliencyMethod(
        library="control",
        signed=False,
        channel_reduction="skimage.filters.sobel of each channel (0..1 intensity), summed",
        compute=_sobel,
    ),
    "random": SaliencyMethod(
        library="control",
        signed=False,
        channel_reduction="none: uniform noise in [0, 1), one map per image",
        compute=_random,
        stochastic=True,
    ),
}


def get_method(name: str) -> SaliencyMethod:
    return lookup(METHODS, name, "saliency method")


def method_params(name: str, params: dict | None, cam_layer: str | None = None) -> dict:
    """Defaults merged with the config's parameters; unknown keys are an error.

    ``cam_layer`` is the default target layer of CAM methods (e.g. from
    ``default_cam_layer``); None lets each batch pick ``default_cam_layer`` for its own
    input size. ``attribute.params.<method>.cam_layer`` overrides both.
    """
    method = get_method(name)
    params = dict(params or {})
    allowed = set(method.defaults) | ({"cam_layer"} if method.uses_cam_layer else set())
    extra = set(params) - allowed
    if extra:
        raise ValueError(
            f"attribute.params.{name}: unknown keys {sorted(extra)}; "
            f"allowed: {sorted(allowed) or 'none'}."
        )
    for key, valid in method.choices.items():
        if key in params and params[key] not in valid:
            raise ValueError(
                f"attribute.params.{name}.{key}: unknown value {params[key]!r}; "
                f"allowed: {', '.join(valid)}."
            )
    merged = {**method.defaults, **params}
    if method.uses_cam_layer:
        merged.setdefault("cam_layer", cam_layer)
    return merged


def model_method_params(
    name: str, params: dict | None, model: nn.Module, image_size: int | tuple[int, int]
) -> dict:
    """``method_params`` for a trained ``model``: a CAM method's default layer is the
    model's ``default_cam_layer`` at ``image_size``; an ``Ensemble`` or ``Combined`` model
    gets None, so each member's (backbone's) CAM uses its own default layer."""
    cam_layer = None
    configured = "cam_layer" in (params or {})
    if (
        get_method(name).uses_cam_layer
        and not configured
        and not isinstance(model, Ensemble | Combined)
    ):
        cam_layer = default_cam_layer(model, image_size=image_size)
    return method_params(name, params, cam_layer)


def is_signed(name: str, params: dict | None = None) -> bool:
    """Whether ``name``'s maps keep a sign with these parameters (the ``signed`` column)."""
    method = get_method(name)
    if method.signed_by is not None:
        return bool(method.signed_by({**method.defaults, **(params or {})}))
    return method.signed


def has_completeness(name: str, params: dict | None = None) -> bool:
    """Whether ``name``'s attributions sum to f(x) - f(baseline) with these parameters, so
    that the ``convergence_delta`` and ``completeness_error`` columns are filled."""
    method = get_method(name)
    if method.completeness_by is not None:
        return bool(method.completeness_by({**method.defaults, **(params or {})}))
    return method.completeness


def compute_maps(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    method: str,
    params: dict,
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int | None = None,
) -> np.ndarray:
    """Saliency maps (N, H, W) float32 for uint8 images, in batches of ``batch_size``.

    Stochastic methods draw per image from ``image_seeds(inputs, seed)``; with ``seed``
    None the seed is drawn from torch's global generator (so ``torch.manual_seed`` before
    the call fixes the maps). Maps do not depend on ``batch_size``.
    """
    maps, _ = _compute(model, images, targets, method, params, batch_size, device, seed, False)
    return maps


def compute_maps_and_completeness(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    method: str,
    params: dict,
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int | None = None,
) -> tuple[np.ndarray, Completeness | None]:
    """``compute_maps`` and, for a method with a completeness property
    (``has_completeness``), its ``Completeness`` per image (None for other methods). The
    maps are the same as ``compute_maps``'s."""
    completeness = has_completeness(method, params)
    return _compute(model, images, targets, method, params, batch_size, device, seed, completeness)


def _compute(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    method: str,
    params: dict,
    batch_size: int,
    device: torch.device | str,
    seed: int | None,
    completeness: bool,
) -> tuple[np.ndarray, Completeness | None]:
    spec = get_method(method)
    model.eval()
    if spec.stochastic and seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    maps, deltas, gaps = [], [], []
    for start in range(0, len(images), batch_size):
        inputs = images_to_tensor(images[start : start + batch_size]).to(device)
        inputs.requires_grad_(True)
        batch_targets = torch.as_tensor(targets[start : start + batch_size], device=device).long()
        extra = {"seeds": image_seeds(inputs, seed)} if spec.stochastic else {}
        if completeness:
            extra["return_completeness"] = True
        result = spec.compute(model, inputs, batch_targets, **extra, **params)
        if completeness:
            result, check = result
            deltas.append(check.delta)
            gaps.append(check.gap)
        if isinstance(result, torch.Tensor):
            result = result.detach().float().cpu().numpy()
        maps.append(np.asarray(result, dtype=np.float32))
    maps = np.concatenate(maps) if maps else np.zeros((0, *images.shape[1:3]), np.float32)
    if maps.shape != (len(images), *images.shape[1:3]):
        expected = (len(images), *images.shape[1:3])
        raise RuntimeError(f"{method} returned maps of shape {maps.shape}, expected {expected}.")
    bad = ~np.isfinite(maps).reshape(len(maps), -1).all(axis=1)
    if bad.any():
        raise FloatingPointError(
            f"{method} produced NaN or infinite maps for images "
            f"{np.flatnonzero(bad)[:10].tolist()}; check the model weights and the method's "
            "parameters."
        )
    if not completeness:
        return maps, None
    empty = np.zeros(0, np.float64)
    check = Completeness(
        np.concatenate(deltas) if deltas else empty, np.concatenate(gaps) if gaps else empty
    )
    return maps, check


def top_k_targets(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label targets: the ``k`` highest-scoring classes of every image.

    Returns ``(image_index, target)``, one entry per (image, target), images in order and
    each image's classes by decreasing score (ties: lower class first). Feed them to
    ``compute_maps(model, images[image_index], target, ...)``.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"top_k_targets: need scores (N, classes) and 1 <= k <= classes, got "
                         f"{scores.shape} and k={k}.")  # fmt: skip
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    image_index = np.repeat(np.arange(len(scores)), k)
    return image_index, order.reshape(-1)


# Columns of the saliency table that tables written before them lack (readers must treat
# them as optional): float32, null for methods without a completeness property.
COMPLETENESS_COLUMNS = ("convergence_delta", "completeness_error")
# Storage types of the saliency column (attribute.precision). float16 keeps 11 significant
# bits: on the default study's maps RMSE and SSIM move by at most 2.4e-4, Spearman by
# 2.2e-3 and the top-k IoU by 1.3e-2 (new ties at the cut-off); config/README.md
# "Saliency tables", bench/saliency_storage.py.
PRECISIONS = {"float16": pa.float16(), "float32": pa.float32()}


def _map_type(precision: str) -> pa.DataType:
    if precision not in PRECISIONS:
        raise ValueError(
            f"attribute.precision: unknown value {precision!r}; allowed: {', '.join(PRECISIONS)}."
        )
    return PRECISIONS[precision]


def saliency_schema(
    height: int,
    width: int,
    n_classes: int,
    completeness: bool = False,
    precision: str = "float32",
) -> pa.Schema:
    """Schema of the saliency Parquet files (documented in config/README.md).

    ``completeness=True``: the schema ``attribute_clean``/``attribute_perturbed`` (and so
    the workflow) write, ending in ``COMPLETENESS_COLUMNS``; False: the columns every
    saliency table has, including those written before the completeness columns existed.
    ``precision`` is the saliency column's float type (``PRECISIONS``).
    """
    extra = [(name, pa.float32()) for name in COMPLETENESS_COLUMNS] if completeness else []
    return pa.schema(
        [
            ("dataset", pa.string()),
            ("arch", pa.string()),
            ("fold", pa.int16()),
            ("method", pa.string()),
            ("perturbation", pa.string()),
            ("severity", pa.int8()),
            ("image_index", pa.int32()),
            ("label", pa.int16()),
            ("target", pa.int16()),
            ("predicted", pa.int16()),
            ("target_probability", pa.float32()),
            ("probabilities", pa.list_(pa.float32(), n_classes)),
            ("height", pa.int16()),
            ("width", pa.int16()),
            ("signed", pa.bool_()),
            ("is_constant", pa.bool_()),
            ("saliency", pa.list_(_map_type(precision), height * width)),
            *extra,
        ]
    )


def models_by_fold(
    paths: Sequence[str], folds: Sequence[int], members: Sequence[str] = ()
) -> list[tuple[int, list[str]]]:
    """A fold-major list of model files (every member's of a fold for an ensemble, else
    one per fold), as (fold, that fold's files): the models one attribution job loads."""
    per_fold = max(len(members), 1)
    if len(paths) != per_fold * len(folds):
        raise ValueError(
            f"{len(paths)} model files for {len(folds)} folds of {per_fold} member(s) each."
        )
    return [
        (int(fold), list(paths[i * per_fold : (i + 1) * per_fold])) for i, fold in enumerate(folds)
    ]


def trained_models_by_fold(
    paths: Sequence[str],
    folds: Sequence[int],
    arch: str,
    members: Sequence[str],
    info,
    image_size: int,
    device: torch.device | str,
    weights: str | None = None,
    train: dict | None = None,
) -> Iterator[tuple[int, nn.Module]]:
    """(fold, trained model) one fold at a time, so a fold's work is done before the next
    model loads; an ensemble (``members``, from train.ensembles) loads every member's file.
    ``train``: the config's train section, from which each model's resolved settings (a
    variant's base architecture, weights and head) are taken (``models.load_trained_model``).
    """
    ensembles = {arch: list(members)} if members else {}
    for fold, fold_paths in models_by_fold(paths, folds, members):
        model_paths = fold_paths if members else fold_paths[0]
        model = load_trained_model(
            model_paths, arch, info, image_size, device, ensembles, weights, train
        )
        yield fold, model


def attribute_clean(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    method: str,
    params: dict,
    keys: dict,
    target: str = "predicted",
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    multi_label: bool = False,
    top_k: int = 1,
    precision: str = "float32",
) -> pa.Table:
    """Maps of the clean ``images`` (perturbation ``tables.CLEAN``, 'none'; severity 0), one table
    in ``saliency_schema(..., completeness=True, precision=precision)``.

    The target class of each image is fixed here, from the clean image (the model's
    prediction, or the true label with ``target='label'``); ``attribute_perturbed`` keeps
    it for the image's perturbed versions. ``keys`` holds dataset/arch/fold.

    Multi-label (``multi_label``; labels (N, L) 0/1, sigmoid outputs): each image gets
    ``top_k`` targets, its ``top_k`` highest-scoring labels on the clean image
    (``top_k_targets``; with ``target='label'`` the image's present labels rank first), one
    row per (image, target). ``label`` is then the true presence of the target label and
    ``predicted`` its predicted presence (sigmoid probability above
    ``MULTI_LABEL_THRESHOLD``). ``top_k`` is ignored for single-label tasks.

    Methods with a completeness property (``has_completeness``) fill ``convergence_delta``
    and ``completeness_error`` per map (``Completeness``); the rest leave them null. A
    table whose median ``completeness_error`` exceeds ``COMPLETENESS_WARNING`` is logged as
    a warning (raise the method's ``n_steps``).
    """
    _map_type(precision)
    clean_probs = predict_proba(model, images, batch_size, device, multi_label)
    if multi_label:
        label_matrix = multi_label_array(labels, clean_probs.shape[1])
        if not 1 <= top_k <= clean_probs.shape[1]:
            raise ValueError(
                f"attribute.top_k_targets is {top_k} but the dataset has "
                f"{clean_probs.shape[1]} labels; set it between 1 and {clean_probs.shape[1]}."
            )
        # label: present labels (2 + p) outrank absent ones (p in [0, 1]), then by score
        ranking = clean_probs if target == "predicted" else 2.0 * label_matrix + clean_probs
        image_index, targets = top_k_targets(ranking, top_k)
        row_labels = label_matrix[image_index, targets]
    else:
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        image_index = np.arange(len(images))
        targets = clean_probs.argmax(axis=1) if target == "predicted" else labels
        row_labels = labels
    rows = _Rows(keys, method, params, image_index, targets, row_labels, multi_label, precision)
    table = rows.level(model, images, clean_probs[image_index], CLEAN, 0, batch_size, seed, device)
    _warn_if_not_converged(method, params, table.column("completeness_error"))
    return table


def attribute_perturbed(
    model: nn.Module,
    clean: pa.Table | pd.DataFrame,
    perturbed: dict[str, tuple[list[int], np.ndarray]],
    method: str,
    params: dict,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    multi_label: bool = False,
    precision: str = "float32",
) -> pa.Table:
    """Maps of the perturbed versions of one model's attributed images, for the targets of
    its ``clean`` table (``attribute_clean``'s output for this model and method).

    ``perturbed`` maps a perturbation name to (severities, images (S, N, H, W[, C])), the
    test images in their original order (row ``image_index`` of the clean table is image
    ``image_index`` here). Rows: per perturbation and severity, the clean table's (image,
    target) rows in its order, with the keys, ``label`` and ``target`` of the clean rows.
    A stochastic method's maps do not depend on which job computes them (``image_seeds``).
    """
    _map_type(precision)
    if isinstance(clean, pa.Table):
        columns = [*MODEL_KEYS, "perturbation", "image_index", "label", "target"]
        clean = clean.select(columns).to_pandas()
    if clean.empty or set(clean["perturbation"]) != {CLEAN}:
        raise ValueError(f"attribute_perturbed needs the model's clean saliency rows ({CLEAN!r}).")
    models = clean[MODEL_KEYS].drop_duplicates()
    if len(models) != 1 or models["method"].iloc[0] != method:
        raise ValueError(
            f"attribute_perturbed takes the clean rows of one model and method ({method}); "
            f"got {models.to_dict('records')}."
        )
    keys = models.iloc[0][["dataset", "arch", "fold"]].to_dict()
    image_index = clean["image_index"].to_numpy(np.int64)
    rows = _Rows(
        keys, method, params, image_index, clean["target"].to_numpy(np.int64),
        clean["label"].to_numpy(np.int64), multi_label, precision,
    )  # fmt: skip
    attributed = np.unique(image_index)  # predictions once per image, not per target
    to_rows = np.searchsorted(attributed, image_index)
    levels = [
        (name, int(severity), stack[i])
        for name, (severities, stack) in perturbed.items()
        for i, severity in enumerate(severities)
    ]
    if not levels:
        raise ValueError("attribute_perturbed: no perturbed image sets given.")
    tables = []
    for name, severity, images in tqdm(levels, desc=method, unit="set", disable=not progress):
        if images.shape[0] <= attributed[-1]:
            raise ValueError(
                f"{name} severity {severity} holds {images.shape[0]} images, but the clean "
                f"table attributes test image {attributed[-1]}; rebuild the perturbed set."
            )
        probs = predict_proba(model, images[attributed], batch_size, device, multi_label)
        tables.append(
            rows.level(model, images, probs[to_rows], name, severity, batch_size, seed, device)
        )
        log.info("%s %s severity %d: %d maps", method, name, severity, len(image_index))
    table = pa.concat_tables(tables)
    _warn_if_not_converged(method, params, table.column("completeness_error"))
    return table


def attribute_clean_and_perturbed(
    model: nn.Module,
    clean_images: np.ndarray,
    labels: np.ndarray,
    perturbed: dict[str, tuple[list[int], np.ndarray]],
    method: str,
    params: dict,
    keys: dict,
    target: str = "predicted",
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    multi_label: bool = False,
    top_k: int = 1,
    precision: str = "float32",
) -> pa.Table:
    """``attribute_clean`` and ``attribute_perturbed`` of one model and method, as one Arrow
    table in the comparison form (``tables.with_clean_rows``): the clean rows head each
    perturbation as its severity 0 (under ``'none'`` when there are no perturbations).

    The workflow stores the two parts apart (each clean map once); this form is what the
    metric functions compare within.
    """
    clean = attribute_clean(
        model, clean_images, labels, method, params, keys, target=target, batch_size=batch_size,
        seed=seed, device=device, multi_label=multi_label, top_k=top_k, precision=precision,
    )  # fmt: skip
    if not perturbed:
        return clean
    position = clean.schema.get_field_index("perturbation")
    parts = []
    for name, level in perturbed.items():
        names = pa.array([name] * clean.num_rows, pa.string())
        parts.append(clean.set_column(position, "perturbation", names))
        parts.append(
            attribute_perturbed(
                model,
                clean,
                {name: level},
                method,
                params,
                batch_size=batch_size,
                seed=seed,
                device=device,
                progress=progress,
                multi_label=multi_label,
                precision=precision,
            )  # fmt: skip
        )
    return pa.concat_tables(parts)


class _Rows:
    """Builds saliency tables of one model and method for fixed (image, target) rows."""

    def __init__(
        self,
        keys: dict,
        method: str,
        params: dict,
        image_index: np.ndarray,
        targets: np.ndarray,
        labels: np.ndarray,
        multi_label: bool,
        precision: str,
    ) -> None:
        self.keys, self.method, self.params = keys, method, params
        self.image_index, self.targets, self.labels = image_index, targets, labels
        self.multi_label, self.precision = multi_label, precision

    def level(
        self,
        model: nn.Module,
        images: np.ndarray,
        probs: np.ndarray,
        perturbation: str,
        severity: int,
        batch_size: int,
        seed: int,
        device,
    ) -> pa.Table:
        """Rows of one image set (clean, or one perturbation at one severity); ``probs``
        are the model's probabilities of each row's image."""
        torch.manual_seed(seed)  # stochastic methods give the same maps for the same config
        maps, check = compute_maps_and_completeness(
            model, images[self.image_index], self.targets, self.method, self.params,
            batch_size, device, seed,
        )  # fmt: skip
        return self.table(images.shape[1:3], probs, maps, check, perturbation, severity)

    def table(
        self,
        size: tuple[int, int],
        probs: np.ndarray,
        maps: np.ndarray,
        check: Completeness | None,
        perturbation: str,
        severity: int,
    ) -> pa.Table:
        """One Arrow table in ``saliency_schema``; the maps rounded to the storage
        precision first, so that ``is_constant`` describes the stored maps."""
        n, (height, width) = len(maps), size
        schema = saliency_schema(height, width, probs.shape[1], True, self.precision)
        stored = maps.reshape(n, -1).astype(
            schema.field("saliency").type.value_type.to_pandas_dtype()
        )
        delta = check.delta if check is not None else np.full(n, np.nan)
        error = check.error if check is not None else np.full(n, np.nan)
        target_probability = probs[np.arange(n), self.targets]
        predicted = (
            (target_probability > MULTI_LABEL_THRESHOLD).astype(np.int64)
            if self.multi_label
            else probs.argmax(axis=1)
        )

        def repeat(value) -> np.ndarray:
            return np.full(n, value)

        def fixed_lists(values: np.ndarray, size: int) -> pa.Array:
            return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), size)

        columns = {
            "dataset": repeat(self.keys["dataset"]),
            "arch": repeat(self.keys["arch"]),
            "fold": repeat(int(self.keys["fold"])),
            "method": repeat(self.method),
            "perturbation": repeat(perturbation),
            "severity": repeat(severity),
            "image_index": self.image_index,
            "label": self.labels,
            "target": self.targets,
            "predicted": predicted,
            "target_probability": target_probability,
            "probabilities": fixed_lists(probs.astype(np.float32), probs.shape[1]),
            "height": repeat(height),
            "width": repeat(width),
            "signed": repeat(is_signed(self.method, self.params)),
            "is_constant": constant_maps(stored.astype(np.float32).reshape(maps.shape)),
            "saliency": fixed_lists(stored, height * width),
            "convergence_delta": delta,
            "completeness_error": error,
        }
        arrays = [
            column
            if isinstance(column := columns[field.name], pa.Array)
            # from_pandas: NaN (no completeness value) becomes null
            else pa.array(column, field.type, from_pandas=True)
            for field in schema
        ]
        return pa.Table.from_arrays(arrays, schema=schema)


def _warn_if_not_converged(method: str, params: dict, errors: pa.ChunkedArray) -> None:
    errors = errors.to_numpy(zero_copy_only=False).astype(np.float64)
    errors = errors[np.isfinite(errors)]
    if len(errors) and np.median(errors) > COMPLETENESS_WARNING:
        steps = f" (n_steps {params['n_steps']})" if "n_steps" in params else ""
        log.warning(
            "%s%s: median relative completeness error %.1f %% (max %.1f %%) over %d maps, "
            "above %.0f %%: the path integral is not converged; raise "
            "attribute.params.%s.n_steps.",
            method, steps, 100 * np.median(errors), 100 * errors.max(), len(errors),
            100 * COMPLETENESS_WARNING, method,
        )  # fmt: skip
