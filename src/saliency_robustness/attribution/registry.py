"""The saliency-method registry as plain data: every method's library, sign, channel
reduction, parameters and defaults, and where its implementation lives.

Light on purpose (it imports the standard library only): the Snakemake process and the
config check read it (``config_checks``), as do the table and plot jobs, none of which may
import torch, captum, pytorch-grad-cam or shap. An entry names its implementation as a
string ("module:function" in this subpackage), imported on first use by
``SaliencyMethod.implementation``. Adding a method: a function in the module of its kind
(``gradients``, ``perturbation_methods``, ``shap_methods``, ``cam``, ``controls``) that
returns attributions (N, C, H, W) or maps (N, H, W), and one ``SaliencyMethod`` entry here
whose ``channel_reduction`` says how ``maps`` turns the attributions into maps.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from saliency_robustness.registry import lookup

if TYPE_CHECKING:  # for the annotations only: the registry never imports torch
    import numpy as np
    import torch

# Integrated Gradients' default steps: the median relative completeness error of the
# default study's 1152 maps is 3.7 % at 64 (14.6 % at 16; config/README.md "Convergence of
# Integrated Gradients", bench/ig_convergence.py).
IG_STEPS = 64
SMOOTHGRAD_BASES = ("saliency", "input_x_gradient", "integrated_gradients")

# What a shap_partition masker puts where a feature is hidden (shap.maskers.Image): a box
# blur of the original image (the default: a hidden pixel's value depends on no other
# feature's state, so a pixel the model ignores gets no credit), black (the baseline of
# captum's occlusion, LIME and Kernel SHAP), or inpainting from the visible pixels (cv2
# Telea or Navier-Stokes), which makes hidden pixels depend on visible ones elsewhere (on
# four BreastMNIST images, 32-91 % of the map of a model that sees one quadrant fell
# outside it: tests/unit/attribution/test_shap_methods.py, config/README.md "shap methods").
SHAP_MASKERS = ("blur", "black", "inpaint_telea", "inpaint_ns")
# shap_gradient's background (the reference images expected gradients integrate from).
SHAP_BACKGROUNDS = ("blurred", "black", "noise")

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


class ChannelReduction(StrEnum):
    """How a method's attributions (N, C, H, W) become one map per image (N, H, W).

    ``maps`` applies the registered reduction to what an implementation returns
    (``apply``), so that the rule of every method is this value, not code of its own.
    """

    # sum of |attribution| over channels: unsigned gradient maps (saliency, guided methods)
    ABS_SUM = "abs_sum"
    # signed sum over channels: the map's sum is the attributions' sum, so a completeness
    # property (sum = f(x) - f(baseline)) survives the reduction
    SUM = "sum"
    # mean over channels: the method perturbs regions that span every channel, so its
    # attributions are equal in every channel (occlusion, LIME, Kernel SHAP)
    MEAN = "mean"
    # the method returns one map per image already: pytorch-grad-cam's CAMs (ReLU'd,
    # min-max scaled to [0, 1] per image, bilinearly resized to the input size),
    # shap_kernel (one value per superpixel, which spans every channel) and random noise
    NONE = "none"

    def apply(self, attributions: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """One map per image from ``attributions``, a torch tensor or NumPy array
        (N, C, H, W) (``NONE``: maps (N, H, W), returned as they are), reduced over axis 1
        in the array's own library and dtype."""
        if self is ChannelReduction.ABS_SUM:
            return abs(attributions).sum(1)
        if self is ChannelReduction.SUM:
            return attributions.sum(1)
        if self is ChannelReduction.MEAN:
            return attributions.mean(1)
        return attributions


@dataclass(frozen=True)
class SaliencyMethod:
    """One saliency method.

    ``compute`` names the implementation ("module:function" of this subpackage):
    ``implementation()(model, inputs, targets, **params)`` returns the attributions
    (N, C, H, W) that ``channel_reduction`` turns into maps, or, with ``NONE``, the maps
    (N, H, W) themselves; a ``stochastic`` method also receives ``seeds``, one int per
    image, and must draw all its randomness from them. ``signed_by`` and ``reduction_by``
    (optional) decide ``signed`` and ``channel_reduction`` from the parameters (smoothgrad:
    from its base). ``choices`` lists the allowed values of parameters that take names.
    ``uses_cam_layer``: the method takes a ``cam_layer``, and on an ensemble or combined
    model its maps are the members' (backbones') maps averaged (``cam_layer.member_average``).

    ``completeness``: the attributions sum to f(x) - f(baseline) (f: the model's output for
    the target, the logit). Such a method's implementation also takes
    ``return_completeness``; with True it returns ``(attributions, Completeness)``, the
    delta computed before any channel reduction. ``completeness_by`` (optional) decides
    ``completeness`` from the parameters (smoothgrad: only over integrated_gradients).
    """

    library: str
    signed: bool
    channel_reduction: ChannelReduction
    compute: str
    defaults: dict = field(default_factory=dict)
    uses_cam_layer: bool = False
    stochastic: bool = False
    choices: dict = field(default_factory=dict)
    signed_by: Callable[[dict], bool] | None = None
    reduction_by: Callable[[dict], ChannelReduction] | None = None
    completeness: bool = False
    completeness_by: Callable[[dict], bool] | None = None

    def implementation(self) -> Callable:
        """The function that computes the attributions, ``compute``. Imported on first
        use: implementations import torch, captum, grad-cam or shap, and the registry must
        stay light for the Snakemake process and table jobs."""
        module, function = self.compute.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), function)


def _smoothgrad_reduction(params: dict) -> ChannelReduction:
    """smoothgrad reduces NoiseTunnel's mean attribution by its base's rule."""
    return METHODS[params.get("base", "saliency")].channel_reduction


# pytorch-grad-cam methods that take nothing but the layer (``cam`` implements them).
_PLAIN_CAMS = (
    "gradcam",
    "gradcam_plus_plus",
    "hirescam",
    "xgradcam",
    "layercam",
    "eigencam",
    "eigengradcam",
)

METHODS: dict[str, SaliencyMethod] = {
    # captum, gradients
    "saliency": SaliencyMethod(
        library="captum",
        signed=False,
        channel_reduction=ChannelReduction.ABS_SUM,
        compute="gradients:saliency",
    ),
    "input_x_gradient": SaliencyMethod(
        library="captum",
        signed=True,
        channel_reduction=ChannelReduction.SUM,
        compute="gradients:input_x_gradient",
    ),
    "integrated_gradients": SaliencyMethod(
        library="captum",
        signed=True,
        channel_reduction=ChannelReduction.SUM,  # completeness holds
        compute="gradients:integrated_gradients",
        defaults={"n_steps": IG_STEPS, "internal_batch_size": 256},
        completeness=True,
    ),
    "gradient_shap": SaliencyMethod(
        library="captum",
        signed=True,
        channel_reduction=ChannelReduction.SUM,  # completeness holds in expectation
        compute="gradients:gradient_shap",
        defaults={"n_samples": 20, "stdevs": 0.0, "n_baselines": 8, "internal_batch_size": 64},
        stochastic=True,
    ),
    "deeplift": SaliencyMethod(
        library="captum",
        signed=True,
        # summation-to-delta holds; approximately behind an overlapping max-pool such as
        # the ImageNet stem above 64 px
        channel_reduction=ChannelReduction.SUM,
        compute="gradients:deeplift",
        defaults={"internal_batch_size": 64},
        completeness=True,
    ),
    "guided_backprop": SaliencyMethod(
        library="captum",
        signed=False,
        channel_reduction=ChannelReduction.ABS_SUM,
        compute="gradients:guided_backprop",
    ),
    "guided_gradcam": SaliencyMethod(
        library="captum",
        signed=False,
        # of guided backprop x nearest-upsampled Grad-CAM
        channel_reduction=ChannelReduction.ABS_SUM,
        compute="gradients:guided_gradcam",
        uses_cam_layer=True,
    ),
    "smoothgrad": SaliencyMethod(
        library="captum",
        signed=False,
        channel_reduction=ChannelReduction.ABS_SUM,  # of the default base, saliency
        compute="gradients:smoothgrad",
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
        reduction_by=_smoothgrad_reduction,
        completeness_by=lambda params: params.get("base") == "integrated_gradients",
    ),
    # captum, perturbations
    "occlusion": SaliencyMethod(
        library="captum",
        signed=True,
        channel_reduction=ChannelReduction.MEAN,
        compute="perturbation_methods:occlusion",
        defaults={"window": None, "stride": None, "perturbations_per_eval": 8},
    ),
    "lime": SaliencyMethod(
        library="captum",
        signed=True,
        channel_reduction=ChannelReduction.MEAN,
        compute="perturbation_methods:lime",
        defaults=dict(SURROGATE_DEFAULTS),
        stochastic=True,
    ),
    "kernel_shap": SaliencyMethod(
        library="captum",
        signed=True,
        channel_reduction=ChannelReduction.MEAN,
        compute="perturbation_methods:kernel_shap",
        defaults=dict(SURROGATE_DEFAULTS),
        stochastic=True,
    ),
    # shap (its Partition explainer has no captum equivalent)
    "shap_partition": SaliencyMethod(
        library="shap",
        signed=True,
        # the hierarchy splits channels too; the map sums to f(x) - f(every pixel masked)
        channel_reduction=ChannelReduction.SUM,
        compute="shap_methods:shap_partition",
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
        channel_reduction=ChannelReduction.SUM,  # completeness holds in expectation
        compute="shap_methods:shap_gradient",
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
        # one value per superpixel (superpixels span every channel), painted on its pixels
        channel_reduction=ChannelReduction.NONE,
        compute="shap_methods:shap_kernel",
        defaults=dict(SHAP_KERNEL_DEFAULTS),
        stochastic=True,
    ),
    # pytorch-grad-cam
    **{
        name: SaliencyMethod(
            library="pytorch-grad-cam",
            signed=False,
            channel_reduction=ChannelReduction.NONE,
            compute=f"cam:{name}",
            uses_cam_layer=True,
        )
        for name in _PLAIN_CAMS
    },
    "scorecam": SaliencyMethod(
        library="pytorch-grad-cam",
        signed=False,
        channel_reduction=ChannelReduction.NONE,
        compute="cam:scorecam",
        defaults={"batch_size": 64},
        uses_cam_layer=True,
    ),
    "ablationcam": SaliencyMethod(
        library="pytorch-grad-cam",
        signed=False,
        channel_reduction=ChannelReduction.NONE,
        compute="cam:ablationcam",
        defaults={"batch_size": 64, "ratio_channels_to_ablate": 1.0},
        uses_cam_layer=True,
    ),
    # controls
    "sobel": SaliencyMethod(
        library="control",
        signed=False,
        # skimage.filters.sobel of each channel (0..1 intensity), summed
        channel_reduction=ChannelReduction.SUM,
        compute="controls:sobel",
    ),
    "random": SaliencyMethod(
        library="control",
        signed=False,
        channel_reduction=ChannelReduction.NONE,  # uniform noise in [0, 1) per image
        compute="controls:random_map",
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


def is_signed(name: str, params: dict | None = None) -> bool:
    """Whether ``name``'s maps keep a sign with these parameters (the ``signed`` column)."""
    method = get_method(name)
    if method.signed_by is not None:
        return bool(method.signed_by({**method.defaults, **(params or {})}))
    return method.signed


def channel_reduction(name: str, params: dict | None = None) -> ChannelReduction:
    """How ``name``'s attributions become maps with these parameters (``maps`` applies it)."""
    method = get_method(name)
    if method.reduction_by is not None:
        return ChannelReduction(method.reduction_by({**method.defaults, **(params or {})}))
    return method.channel_reduction


def has_completeness(name: str, params: dict | None = None) -> bool:
    """Whether ``name``'s attributions sum to f(x) - f(baseline) with these parameters, so
    that the ``convergence_delta`` and ``completeness_error`` columns are filled."""
    method = get_method(name)
    if method.completeness_by is not None:
        return bool(method.completeness_by({**method.defaults, **(params or {})}))
    return method.completeness
