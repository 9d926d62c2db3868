"""The perturbation registry as plain data: name, family, backend, parameter at severities
1..5, channel counts, value range, and the backend factory as "module:function" text
(``Perturbation.transform`` imports it on first use). Also the modality sets of ``auto``
and the config-time checks of ``perturb``. Standard library and NumPy only: the Snakemake
process and the table jobs read it without imgaug, torchio or scikit-image."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from saliency_robustness.registry import lookup

SEVERITIES = (1, 2, 3, 4, 5)
FAMILIES = ("MRI acquisition", "X-ray/CT", "ultrasound", "optics", "digital")
GRAY_AND_RGB = (1, 3)
RGB_ONLY = (3,)
REFERENCE_SIDE = 28  # spatial severity parameters are defined at this image side


@dataclass(frozen=True)
class Perturbation:
    """A degradation with one parameter value per severity level 1..5."""

    name: str
    family: str
    backend: str
    parameter: str
    severity_table: tuple[float, ...]  # parameter at severities 1..5
    # parameter -> per-image transform: "module:function" of this package, imported on use
    make: str
    channels: tuple[int, ...] = GRAY_AND_RGB  # channel counts the perturbation accepts
    stochastic: bool = True  # False: no random part, the seed cannot change the result
    # Parameter values the transform is defined for (inclusive), checked at config time for
    # perturb.params.<name>.severity_table.
    value_range: tuple[float, float] = (0.0, math.inf)
    description: str = ""

    def transform(self, value: float) -> Callable[[np.ndarray, int], np.ndarray]:
        """The per-image transform at parameter ``value``. Its backend (imgaug, torchio,
        scikit-image) is imported here, not with the registry: the Snakemake process and
        the table jobs read the registry without those packages."""
        module, function = self.make.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), function)(value)


_ENTRIES = [
    # imgaug (the original study's backend)
    Perturbation(
        "gaussian_noise", "digital", "imgaug",
        "noise standard deviation (fraction of 255)",
        (0.04, 0.08, 0.12, 0.18, 0.26), "imgaug_backend:gaussian_noise",
        value_range=(0, 1),
        description="imgaug AdditiveGaussianNoise",
    ),
    Perturbation(
        "motion_blur", "optics", "imgaug",
        "kernel size in pixels at 28 px, scaled with the side (angle 45 degrees)",
        (3, 5, 7, 9, 11), "imgaug_backend:motion_blur", stochastic=False,
        value_range=(1, math.inf),
        description="imgaug MotionBlur, fixed angle and direction (deterministic)",
    ),
    Perturbation(
        "contrast", "X-ray/CT", "imgaug",
        "contrast factor alpha around the mid-grey (1 = unchanged)",
        (0.75, 0.55, 0.4, 0.28, 0.18), "imgaug_backend:contrast", stochastic=False,
        value_range=(0, math.inf),
        description="imgaug LinearContrast (under-exposure, narrow window)",
    ),
    Perturbation(
        "gamma", "X-ray/CT", "imgaug",
        "gamma exponent (1 = unchanged)",
        (1.4, 1.8, 2.3, 2.9, 3.6), "imgaug_backend:gamma", stochastic=False,
        value_range=(0.05, 20),
        description="imgaug GammaContrast (detector response / display curve)",
    ),
    Perturbation(
        "jpeg", "digital", "imgaug",
        "JPEG compression strength (0..100; quality = 100 - strength)",
        (80, 88, 93, 96, 98.5), "imgaug_backend:jpeg", stochastic=False,
        value_range=(0, 100),
        description="imgaug JpegCompression",
    ),
    Perturbation(
        "elastic", "ultrasound", "imgaug",
        "displacement alpha in pixels at 28 px (sigma 1.5 px), scaled with the side",
        # imaug smooths the displacement field differently from imgaug 0.4.0 (a box-blur
        # approximation of the Gaussian), so equal alphas deform more; this table gives the
        # SSIM per level of the former (1, 2, 3, 4.5, 6) (bench/perturbation_hashes.py).
        (0.65, 1.25, 1.9, 2.85, 3.8), "imgaug_backend:elastic",
        value_range=(0, math.inf),
        description="imgaug ElasticTransformation (probe pressure / tissue deformation)",
    ),
    # torchio (MRI acquisition)
    Perturbation(
        "mri_motion", "MRI acquisition", "torchio",
        "maximum in-plane rotation in degrees (translation = degrees/4 px at 28 px)",
        (3, 7, 12, 18, 26), "torchio_backend:mri_motion",
        value_range=(0, 180),
        description="torchio Motion (k-space motion, Shaw et al. 2019), two movements",
    ),
    Perturbation(
        "ghosting", "MRI acquisition", "torchio",
        "ghost intensity (0..1), 2-4 ghosts along a random phase-encoding axis",
        (0.2, 0.4, 0.6, 0.8, 1.0), "torchio_backend:ghosting",
        value_range=(0, 1),
        description="torchio Ghosting",
    ),
    Perturbation(
        "spike", "MRI acquisition", "torchio",
        "spike intensity (fraction of the largest k-space magnitude)",
        (0.05, 0.1, 0.2, 0.35, 0.6), "torchio_backend:spike",
        value_range=(0, math.inf),
        description="torchio Spike (herringbone)",
    ),
    Perturbation(
        "bias_field", "MRI acquisition", "torchio",
        "maximum |coefficient| of the order-3 log-polynomial field",
        (0.1, 0.2, 0.35, 0.55, 0.8), "torchio_backend:bias_field",
        value_range=(0, math.inf),
        description="torchio BiasField (coil inhomogeneity)",
    ),
    Perturbation(
        "rician_noise", "MRI acquisition", "numpy",
        "noise standard deviation per real/imaginary channel (fraction of 255)",
        (0.03, 0.06, 0.1, 0.15, 0.22), "numpy_backend:rician_noise",
        value_range=(0, 1),
        description="|image + complex Gaussian noise| (magnitude-image noise)",
    ),
    Perturbation(
        "gibbs_ringing", "MRI acquisition", "numpy",
        "fraction of k-space kept along each axis (truncation)",
        (0.8, 0.65, 0.5, 0.4, 0.3), "numpy_backend:gibbs_ringing", stochastic=False,
        value_range=(0.01, 1),
        description="k-space truncation with a hard cut (Gibbs ringing)",
    ),
    Perturbation(
        "low_resolution", "MRI acquisition", "skimage",
        "resolution factor (side of the acquired grid / side)",
        (0.8, 0.65, 0.5, 0.4, 0.3), "numpy_backend:low_resolution", stochastic=False,
        value_range=(0.01, 1),
        description="anti-aliased downsampling, linear upsampling back",
    ),
    # MedMNIST-C-style corruptions (own implementation, see the module docstring)
    Perturbation(
        "speckle_noise", "ultrasound", "numpy",
        "standard deviation of the multiplicative noise",
        (0.1, 0.2, 0.32, 0.45, 0.6), "numpy_backend:speckle_noise",
        value_range=(0, math.inf),
        description="x + x * N(0, sigma) (MedMNIST-C / ImageNet-C speckle)",
    ),
    Perturbation(
        "impulse_noise", "digital", "skimage",
        "share of pixels set to 0 or 255",
        (0.01, 0.03, 0.06, 0.1, 0.15), "numpy_backend:impulse_noise",
        value_range=(0, 1),
        description="skimage random_noise salt & pepper",
    ),
    Perturbation(
        "defocus_blur", "optics", "scipy",
        "disk radius in pixels at 28 px, scaled with the side",
        (0.6, 0.9, 1.2, 1.6, 2.1), "numpy_backend:defocus_blur", stochastic=False,
        value_range=(0, math.inf),
        description="convolution with an anti-aliased disk (out-of-focus optics)",
    ),
    Perturbation(
        "gaussian_blur", "optics", "skimage",
        "Gaussian sigma in pixels at 28 px, scaled with the side",
        (0.4, 0.6, 0.85, 1.15, 1.5), "numpy_backend:gaussian_blur", stochastic=False,
        value_range=(0, math.inf),
        description="skimage gaussian",
    ),
    Perturbation(
        "pixelate", "digital", "skimage",
        "resolution factor before nearest-neighbour upsampling",
        (0.8, 0.65, 0.5, 0.4, 0.3), "numpy_backend:pixelate", stochastic=False,
        value_range=(0.01, 1),
        description="box downsampling, nearest upsampling (ImageNet-C pixelate)",
    ),
    Perturbation(
        "brightness", "optics", "numpy",
        "value added to every channel (fraction of 255), clipped",
        (0.08, 0.16, 0.25, 0.35, 0.45), "numpy_backend:brightness", stochastic=False,
        value_range=(-1, 1),
        description="over-exposure: the same shift on R, G and B (grey: the intensity)",
    ),
    Perturbation(
        "saturation", "optics", "skimage",
        "CIE Lab chroma factor at fixed lightness L* (1 = unchanged)",
        (0.7, 0.5, 0.35, 0.2, 0.08), "numpy_backend:saturation",
        channels=RGB_ONLY, stochastic=False,
        value_range=(0, math.inf),
        description="faded colour (stain fading, white balance) at fixed lightness; RGB only",
    ),
    Perturbation(
        "stain_shift", "optics", "skimage",
        "haematoxylin and eosin amounts multiplied or divided by up to 1 + value",
        (0.7, 1.6, 2.8, 4.5, 7.0), "numpy_backend:stain_shift", channels=RGB_ONLY,
        value_range=(0, math.inf),
        description="H&E stain amounts scaled in optical density, glass stays white; RGB only",
    ),
    # ImageNet-C / MedMNIST-C and Tellez et al. definitions, for comparison with them
    Perturbation(
        "hsv_brightness", "optics", "skimage",
        "value added (fraction of 255; HSV value for RGB)",
        (0.08, 0.16, 0.25, 0.35, 0.45), "numpy_backend:hsv_brightness", stochastic=False,
        value_range=(-1, 1),
        description="ImageNet-C / MedMNIST-C brightness (HSV value shift)",
    ),
    Perturbation(
        "hsv_saturation", "optics", "numpy",
        "HSV saturation factor (1 = unchanged)",
        (0.7, 0.5, 0.35, 0.2, 0.08), "numpy_backend:hsv_saturation",
        channels=RGB_ONLY, stochastic=False,
        value_range=(0, math.inf),
        description="ImageNet-C saturate (HSV saturation factor, V kept); RGB only",
    ),
    Perturbation(
        "tellez_stain_shift", "optics", "skimage",
        "maximum relative change of each H&E-DAB stain",
        (0.1, 0.2, 0.35, 0.5, 0.7), "numpy_backend:tellez_stain_shift", channels=RGB_ONLY,
        value_range=(0, 1),
        description="H&E stain augmentation (Tellez et al. 2018); RGB only",
    ),
]  # fmt: skip

PERTURBATIONS: dict[str, Perturbation] = {entry.name: entry for entry in _ENTRIES}

# Imaging modality of each MedMNIST 2D flag; ``perturbations: auto`` picks the modality's
# set from the config (``perturb.sets``). Other datasets name theirs in ``perturb.modality``.
DATASET_MODALITY: dict[str, str] = {
    "pathmnist": "pathology",
    "chestmnist": "xray",
    "pneumoniamnist": "xray",
    "dermamnist": "dermatoscopy",
    "octmnist": "oct",
    "retinamnist": "fundus",
    "breastmnist": "ultrasound",
    "bloodmnist": "microscopy",  # blood smear
    "tissuemnist": "microscopy",  # kidney cortex
    "organamnist": "ct",
    "organcmnist": "ct",
    "organsmnist": "ct",
}


def get_perturbation(name: str) -> Perturbation:
    return lookup(PERTURBATIONS, name, "perturbation")


def modality_of(dataset: str, perturb_config: Mapping) -> str:
    """The dataset's modality: ``perturb.modality`` in the config, else the MedMNIST map."""
    configured = perturb_config.get("modality") or {}
    if dataset in configured:
        return configured[dataset]
    if dataset in DATASET_MODALITY:
        return DATASET_MODALITY[dataset]
    raise ValueError(
        f"perturb.perturbations is 'auto' but dataset '{dataset}' has no known imaging "
        f"modality. Add it to the config, e.g. perturb: {{modality: {{{dataset}: mri}}}} "
        f"(modalities: {', '.join(sorted(perturb_config.get('sets') or {}))}), or list "
        "the perturbations by name."
    )


def resolve_perturbations(
    perturb_config: Mapping, dataset: str, n_channels: int | None = None
) -> list[str]:
    """Perturbation names for one dataset: the configured list, or for ``auto`` the set of
    the dataset's modality without the perturbations its channel count cannot take (RGB-only
    ones on grayscale data). ``n_channels`` None (unknown dataset) skips that filter."""
    names = perturb_config["perturbations"]
    if names != "auto":
        return list(names)
    modality = modality_of(dataset, perturb_config)
    sets = perturb_config.get("sets") or {}
    if modality not in sets:
        raise ValueError(
            f"perturb.sets has no set for modality '{modality}' (dataset '{dataset}'). "
            f"Sets: {', '.join(sorted(sets))}."
        )
    chosen = list(sets[modality])
    if n_channels is not None:
        chosen = [n for n in chosen if n not in PERTURBATIONS or _accepts(n, n_channels)]
    return chosen


def _accepts(name: str, n_channels: int) -> bool:
    return n_channels in PERTURBATIONS[name].channels


def severity_table_markdown() -> str:
    """The severity tables of every registered perturbation (config/README.md embeds it)."""
    lines = [
        "| perturbation | family | backend | channels | parameter | severities 1..5 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, spec in PERTURBATIONS.items():
        channels = "RGB only" if spec.channels == RGB_ONLY else "gray, RGB"
        values = ", ".join(f"{v:g}" for v in spec.severity_table)
        lines.append(
            f"| `{name}` | {spec.family} | {spec.backend}: {spec.description} | {channels} "
            f"| {spec.parameter} | {values} |"
        )
    return "\n".join(lines)


def perturb_config_errors(
    perturb_config: Mapping,
    datasets: Sequence[str],
    architectures: Sequence[str],
    n_channels_of: Callable[[str], int | None],
) -> list[str]:
    """Problems in the config's ``perturb`` section, one message each, found before any job
    runs: unknown names (listing the valid ones), datasets ``auto`` cannot place, RGB-only
    perturbations listed for grayscale datasets, and an unknown baseline architecture."""
    errors: list[str] = []
    valid = ", ".join(sorted(PERTURBATIONS))
    names = perturb_config["perturbations"]
    sets = perturb_config.get("sets") or {}
    if names != "auto":
        for name in names:
            if name not in PERTURBATIONS:
                errors.append(
                    f"perturb.perturbations: unknown name '{name}'. Valid names: {valid}."
                )
    for modality, members in sets.items():
        for name in members:
            if name not in PERTURBATIONS:
                errors.append(
                    f"perturb.sets.{modality}: unknown name '{name}'. Valid names: {valid}."
                )
    for dataset, modality in (perturb_config.get("modality") or {}).items():
        if modality not in sets:
            errors.append(
                f"perturb.modality: '{dataset}' has modality '{modality}', which has no set "
                f"in perturb.sets. Sets: {', '.join(sorted(sets))}."
            )
    for dataset in datasets:
        n_channels = n_channels_of(dataset)
        try:
            chosen = resolve_perturbations(perturb_config, dataset, n_channels)
        except ValueError as error:
            errors.append(str(error))
            continue
        if not chosen:
            errors.append(
                f"perturb.perturbations: auto leaves no perturbation for dataset '{dataset}' "
                f"({n_channels} channel(s)); add perturbations to its modality's set."
            )
        if n_channels is None:
            continue
        for name in chosen:
            if name in PERTURBATIONS and not _accepts(name, n_channels):
                errors.append(
                    f"perturb.perturbations: '{name}' is RGB-only but dataset '{dataset}' has "
                    f"{n_channels} channel(s); remove it from the list (or use auto, which "
                    "leaves it out for grayscale datasets)."
                )
    for name, params in (perturb_config.get("params") or {}).items():
        spec = PERTURBATIONS.get(name)
        table = (params or {}).get("severity_table")
        if spec is None or not table:
            continue  # unknown names are reported by the caller; lengths by the schema
        low, high = spec.value_range
        outside = [value for value in table if not low <= value <= high]
        if outside:
            errors.append(
                f"perturb.params.{name}.severity_table: {outside} outside {low:g}..{high:g}, "
                f"the values {name} is defined for ({spec.parameter}). Use values in that "
                f"range; the default table is {list(spec.severity_table)}."
            )
    baseline = perturb_config.get("baseline_arch")
    if baseline is not None and baseline not in architectures:
        errors.append(
            f"perturb.baseline_arch: '{baseline}' is not one of train.architectures "
            f"({', '.join(architectures)}); robustness scores need the baseline's errors."
        )
    return errors
