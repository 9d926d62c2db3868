"""The shap package's explainers on the same target output as captum's methods: Partition
(Owen values over a hierarchy of image halvings), GradientExplainer (expected gradients)
and KernelExplainer (over the SLIC superpixels captum's kernel_shap uses).

Apart from the captum methods because shap brings its own model-function conventions
(images in (M, H, W, C) on the 0..255 scale, coalitions of superpixels), which the
``_target_output_*`` helpers translate to the model's ``model(x)[:, target]``.
shap_partition and shap_gradient return per-channel attributions (N, C, H, W) for ``maps``
to sum; shap_kernel returns maps (N, H, W), one value per superpixel, which spans every
channel.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from saliency_robustness.attribution.inputs import BLACK, int_targets, seeded, to_uint8
from saliency_robustness.attribution.perturbation_methods import superpixels
from saliency_robustness.attribution.registry import SHAP_BACKGROUNDS, SHAP_MASKERS
from saliency_robustness.models.tensors import scale_pixels

with warnings.catch_warnings():
    # shap.plots.colors uses matplotlib's colormap API (PendingDeprecationWarning, 3.11)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module=r"shap\.")
    import shap

log = logging.getLogger(__name__)

# Seed of the tie-breaking draws of shap's Partition explainer (the method is otherwise
# deterministic; the maps do not depend on the run's seed).
PARTITION_TIE_SEED = 0


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


def shap_partition(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    masker: str = "blur",
    blur_kernel: int | None = None,
    max_evals: int = 500,
    batch_size: int = 64,
) -> np.ndarray:
    """Attributions (N, C, H, W), float64, of shap's Partition explainer (Owen values over
    shap.maskers.Image's hierarchy of axis-aligned halvings of the image, channels
    included) per image, with ``max_evals`` model evaluations, ``batch_size`` masked images
    per forward pass. Hidden features are filled as ``masker`` says (``SHAP_MASKERS``;
    ``blur``: a box blur of ``blur_kernel`` px, None: half the shorter image side, as shap's
    ImageNet example's blur(128,128) at 224 px). A group the budget does not split shares
    its value evenly among its pixels, so the attributions sum to f(x) - f(every feature
    hidden). Deterministic: shap's only random draw breaks
    ties between equally important groups in its queue (np.random), seeded with
    ``PARTITION_TIE_SEED`` for every image."""
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
    images = np.moveaxis(to_uint8(inputs), 1, -1).astype(np.float32)  # shap's (H, W, C)
    attributions = []
    for image, target in zip(images, int_targets(targets), strict=True):
        # A masker per image: the Image masker caches its blurred image by id(image), and
        # a freed image's id can come back for the next one.
        explainer = shap.explainers.Partition(
            _target_output_of_images(model, target, batch_size, inputs.device),
            shap.maskers.Image(mask_value, image.shape),
        )
        with seeded(PARTITION_TIE_SEED, inputs.device):
            explanation = explainer(
                image[None], max_evals=max_evals, batch_size=batch_size, silent=True
            )
        values = np.asarray(explanation.values, dtype=np.float64).reshape(image.shape)
        attributions.append(np.moveaxis(values, -1, 0))
    return np.stack(attributions)


def _shap_background(x: torch.Tensor, background: str, n_baselines: int) -> torch.Tensor:
    """shap_gradient's reference images for one image ``x`` (1, C, H, W) in model space.

    ``blurred``: ``n_baselines`` Gaussian blurs of the image (sigma from a quarter of the
    shorter side down to 1 px, geometrically): reference images that keep the image's
    coarse anatomy and intensity, the nearest to "training-like" images a map can use
    without depending on other images. ``black``: the black image alone (expected
    gradients then estimate Integrated Gradients from black). ``noise``: the black image
    and ``n_baselines - 1`` images of uniform noise over the input range, drawn from the
    seeded torch generator (captum's gradient_shap distribution)."""
    if background == "black":
        return torch.full_like(x, BLACK)
    if background == "noise":
        noise = torch.rand((n_baselines - 1, *x.shape[1:]), device=x.device)
        return torch.cat([torch.full_like(x, BLACK), noise * 2 - 1])
    image = x[0].detach().float().cpu().numpy()
    sigmas = np.geomspace(max(1.0, min(image.shape[1:]) / 4), 1.0, n_baselines)
    blurred = [gaussian_filter(image, sigma=(0, s, s), mode="reflect") for s in sigmas]
    return torch.as_tensor(np.stack(blurred), dtype=x.dtype, device=x.device)


def shap_gradient(
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
    """Attributions (N, C, H, W), float64, of shap.GradientExplainer (expected gradients)
    per image on the model's target output: the mean over ``n_samples`` draws of a
    reference image (``_shap_background``) and a point on the path to the image of
    gradient x (image - reference), ``batch_size`` draws per forward+backward pass and per
    call of shap (which holds all of a call's draws in memory); ``local_smoothing``: the
    standard deviation of Gaussian noise added to the image (model-input units, 0: none).
    Draws from the image's seed."""
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
    attributions = []
    for image, target, seed in zip(inputs.detach(), int_targets(targets), seeds, strict=True):
        x = image.unsqueeze(0)
        total = np.zeros(x.shape[1:], dtype=np.float64)
        with seeded(seed, x.device):
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
                # rseed: shap reseeds NumPy's global generator with it; seeded restores it
                values = explainer.shap_values(x, nsamples=k, rseed=int(chunk_seed))
                total += np.asarray(values, dtype=np.float64).reshape(x.shape[1:]) * k
        model.zero_grad(set_to_none=True)
        attributions.append(total / n_samples)
    return np.stack(attributions)


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


def shap_kernel(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seeds: Sequence[int],
    n_samples: int = 128,
    batch_size: int = 64,
    n_segments: int = 49,
    compactness: float = 0.1,
) -> np.ndarray:
    """Maps (N, H, W) of shap.KernelExplainer per image over the SLIC superpixels captum's
    kernel_shap uses (``superpixels``), a hidden superpixel black; ``n_samples``
    coalitions sampled from the image's seed, ``batch_size`` images per forward pass.
    Unlike captum's KernelShap, shap enumerates the small and large coalitions first, pairs
    each sample with its complement and constrains the values to add up to f(x) - f(black)
    exactly. No L1 feature selection (shap's default keeps 10 superpixels): every
    superpixel gets a value, as in captum's kernel_shap. Each pixel shows its superpixel's
    value: a superpixel spans every channel, so the method has one map per image and no
    channel reduction (``ChannelReduction.NONE``)."""
    n_samples = _positive_int("shap_kernel", "n_samples", n_samples, 2)
    batch_size = _positive_int("shap_kernel", "batch_size", batch_size)
    segments = superpixels(inputs, n_segments, compactness)[:, 0].cpu().numpy()
    maps = []
    for image, target, seed, segment in zip(
        inputs.detach(), int_targets(targets), seeds, segments, strict=True
    ):
        _, pixel_segment = np.unique(segment.reshape(-1), return_inverse=True)
        n_features = int(pixel_segment.max()) + 1
        output = _target_output_of_coalitions(model, image, pixel_segment, target, batch_size)
        explainer = shap.KernelExplainer(output, np.zeros((1, n_features)))
        with seeded(seed, image.device):
            values = explainer.shap_values(
                np.ones((1, n_features)), nsamples=n_samples, l1_reg=False, silent=True
            )
        values = np.asarray(values, dtype=np.float64).reshape(n_features)
        maps.append(values[pixel_segment].reshape(image.shape[1:]))
    return np.asarray(maps, dtype=np.float32).reshape(len(inputs), *inputs.shape[-2:])
