"""Perturbation registry: realistic image degradations at severities 1..5.

One ``Perturbation`` entry in ``PERTURBATIONS`` defines a perturbation: its name, family
(MRI acquisition, X-ray/CT, ultrasound, optics, digital), backend library, the parameter
value at each severity 1..5, which channel counts it accepts, and a factory that turns a
parameter value into a per-image transform. Backends:

- ``imgaug`` (the original study's augmenters), seeded per image;
- ``torchio`` for MRI acquisition artifacts, always through the fixed-parameter transforms
  (``tio.Motion``, ``tio.Ghosting``, ``tio.Spike``, ``tio.BiasField``) with every random
  parameter drawn from a NumPy Generator seeded per image, never torch's global RNG;
- ``numpy/scipy/skimage`` re-implementations of MedMNIST-C corruptions (Di Salvo et al.
  2024, arXiv:2406.17536, which follow ImageNet-C, Hendrycks & Dietterich 2019). Their
  ``medmnistc`` package is not a dependency here (not pinned in this stack), so speckle,
  impulse noise, defocus/Gaussian blur, pixelation, HSV brightness and saturation and the
  Tellez et al. stain shift are written from the papers' definitions with NumPy, SciPy and
  scikit-image; so are Rician noise, k-space truncation (Gibbs ringing) and low
  resolution, which torchio 1.2.1 does not provide.

Colour: ``brightness``, ``saturation`` and ``stain_shift`` (which ``auto`` uses) act as a
camera or a stained slide would: exposure adds the same light to R, G and B, desaturation
keeps CIE lightness, a stain change scales the stains present and leaves glass white. The
benchmark definitions invent colour on real RGB images (HSV value lifts a near-black pixel
of noisy hue into a saturated one; HSV desaturation brightens), so they are kept only for
comparison, as ``hsv_brightness``, ``hsv_saturation`` and ``tellez_stain_shift``.
``saliency_robustness.colour_test_images`` makes the RGB images they are checked on.

Every image gets its own random state from (seed, perturbation, severity, image index), so
results do not depend on batch size or order. Spatial parameters are given for a 28 px
image and scaled with the image side, so a severity means the same degradation at 28, 64,
128 and 224 px.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from saliency_robustness.registry import lookup

SEVERITIES = (1, 2, 3, 4, 5)
FAMILIES = ("MRI acquisition", "X-ray/CT", "ultrasound", "optics", "digital")
GRAY_AND_RGB = (1, 3)
RGB_ONLY = (3,)
REFERENCE_SIDE = 28  # spatial severity parameters are defined at this image side

# A per-image transform: (uint8 image (H, W) or (H, W, C), seed) -> uint8 image, same shape.
Transform = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Perturbation:
    """A degradation with one parameter value per severity level 1..5."""

    name: str
    family: str
    backend: str
    parameter: str
    severity_table: tuple[float, ...]  # parameter at severities 1..5
    make: Callable[[float], Transform]  # parameter -> per-image transform
    channels: tuple[int, ...] = GRAY_AND_RGB  # channel counts the perturbation accepts
    stochastic: bool = True  # False: no random part, the seed cannot change the result
    # Parameter values the transform is defined for (inclusive), checked at config time for
    # perturb.params.<name>.severity_table.
    value_range: tuple[float, float] = (0.0, math.inf)
    description: str = ""


# ---------------------------------------------------------------- helpers


def _scale(value: float, image: np.ndarray) -> float:
    """A length given at 28 px, at this image's side."""
    return value * image.shape[0] / REFERENCE_SIDE


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _hwc(image: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 1) view; (H, W, C) unchanged."""
    return image[..., None] if image.ndim == 2 else image


def _like(result: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Back to the input's layout ((H, W) stays (H, W))."""
    return result[..., 0] if image.ndim == 2 else result


# ---------------------------------------------------------------- imgaug


def _imgaug(augmenter) -> Transform:
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        augmenter.seed_(seed)
        return augmenter.augment_image(image)

    return apply


def _gaussian_noise(sigma: float) -> Transform:
    import imgaug.augmenters as iaa

    return _imgaug(iaa.AdditiveGaussianNoise(loc=0, scale=sigma * 255))


def _motion_blur(kernel: float) -> Transform:
    import imgaug.augmenters as iaa

    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        # imgaug's MotionBlur is only deterministic with a fixed angle and direction.
        k = max(3, int(round(_scale(kernel, image))))
        augmenter = iaa.MotionBlur(k=k, angle=45, direction=0.0)
        augmenter.seed_(seed)
        return augmenter.augment_image(image)

    return apply


def _contrast(alpha: float) -> Transform:
    import imgaug.augmenters as iaa

    return _imgaug(iaa.LinearContrast(alpha=alpha))


def _gamma(gamma: float) -> Transform:
    import imgaug.augmenters as iaa

    return _imgaug(iaa.GammaContrast(gamma=gamma))


def _jpeg(compression: float) -> Transform:
    import imgaug.augmenters as iaa

    return _imgaug(iaa.JpegCompression(compression=compression))


def _elastic(alpha: float) -> Transform:
    import imgaug.augmenters as iaa

    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        # Displacement (alpha) and its smoothness (sigma) are lengths: scale with the side.
        # order=3 (bicubic): imgaug 0.4.0's default, which imaug changed to 0 (nearest).
        augmenter = iaa.ElasticTransformation(
            alpha=_scale(alpha, image), sigma=_scale(1.5, image), mode="reflect", order=3
        )
        augmenter.seed_(seed)
        return augmenter.augment_image(image)

    return apply


# ---------------------------------------------------------------- torchio (MRI)


def _torchio(
    transform_for: Callable[[np.ndarray, np.random.Generator], object], motion_layout: bool = False
) -> Transform:
    """Run a fixed-parameter torchio transform on one 2D image.

    torchio wants 4D tensors (C, X, Y, Z). The slice goes in as (C, H, W, 1), except for
    motion: torchio's Motion fills k-space in segments along the third spatial axis, so
    that axis must lie in the image plane for a real motion artifact; motion gets
    (C, H, 1, W) and rotates about the second (through-plane) axis.
    """

    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        import torch
        import torchio as tio

        hwc = _hwc(image).astype(np.float32)
        chw = hwc.transpose(2, 0, 1)
        volume = chw[:, :, None, :] if motion_layout else chw[..., None]
        subject = tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(volume)))
        transform = transform_for(hwc, np.random.default_rng(seed))
        out = transform(subject).data.numpy()
        out = out[:, :, 0, :] if motion_layout else out[..., 0]
        return _like(_to_uint8(out.transpose(1, 2, 0)), image)

    return apply


def _mri_motion(degrees: float) -> Transform:
    def transform_for(image: np.ndarray, rng: np.random.Generator):
        import torchio as tio

        n = 2  # two movements during the acquisition
        # Magnitudes in [0.8, 1] x the severity's maximum with a random sign: random
        # direction, but little spread within a severity (keeps SSIM monotone). Layout (H, 1, W):
        # in-plane rotation is about axis 1, in-plane translation along axes 0 and 2.
        signs = rng.choice([-1.0, 1.0], size=(n, 3))
        rotation = np.zeros((n, 3))
        rotation[:, 1] = degrees * rng.uniform(0.8, 1.0, n) * signs[:, 1]
        translation = np.zeros((n, 3))
        shift = _scale(degrees / 4, image) * rng.uniform(0.8, 1.0, (n, 2)) * signs[:, [0, 2]]
        translation[:, [0, 2]] = shift
        # As torchio's RandomMotion: evenly spread movement times, jittered; torchio
        # fills the k-space centre from the original pose.
        times = np.array([1 / 3, 2 / 3]) + rng.uniform(-0.05, 0.05, n)
        return tio.Motion(
            degrees=rotation, translation=translation, times=times, image_interpolation="linear"
        )

    return _torchio(transform_for, motion_layout=True)


def _ghosting(intensity: float) -> Transform:
    def transform_for(image: np.ndarray, rng: np.random.Generator):
        import torchio as tio

        # Phase-encoding direction (axis) and ghost count are random per image.
        return tio.Ghosting(
            num_ghosts=int(rng.integers(2, 5)),
            axis=int(rng.integers(0, 2)),
            intensity=intensity,
            restore=0.02,
        )

    return _torchio(transform_for)


def _spike(intensity: float) -> Transform:
    def transform_for(image: np.ndarray, rng: np.random.Generator):
        import torchio as tio

        # One spike in k-space, away from the centre (a spike at DC only changes brightness):
        # distance 0.1..0.4 of the spectrum from the centre, random angle. Positions are
        # fractions of the spectrum shape (torchio's convention); the third axis has size 1.
        radius = rng.uniform(0.1, 0.4)
        angle = rng.uniform(0, 2 * np.pi)
        position = np.array([[0.5 + radius * np.cos(angle), 0.5 + radius * np.sin(angle), 0.0]])
        return tio.Spike(spikes_positions=np.clip(position, 0, 0.999), intensity=intensity)

    return _torchio(transform_for)


def _bias_field(magnitude: float) -> Transform:
    def transform_for(image: np.ndarray, rng: np.random.Generator):
        import torchio as tio

        # Order 3 in 3D has 20 coefficients; terms with a z power vanish on a single slice
        # (z = 0), so only the in-plane ones are drawn. Random signs, |c| in [0.5, 1] x max.
        coefficients = []
        for x_order in range(4):
            for y_order in range(4 - x_order):
                for z_order in range(4 - x_order - y_order):
                    if z_order or (x_order == 0 and y_order == 0):
                        coefficients.append(0.0)  # z terms, and the constant (pure gain)
                    else:
                        coefficients.append(
                            float(magnitude * rng.uniform(0.5, 1.0) * rng.choice([-1, 1]))
                        )
        return tio.BiasField(coefficients=coefficients, order=3)

    return _torchio(transform_for)


# ------------------------------------------------ numpy / scipy / scikit-image


def _rician_noise(sigma: float) -> Transform:
    # Magnitude MRI images carry Rician noise: |image + complex Gaussian noise|. torchio 1.2.1
    # only has additive Gaussian noise, so this is written directly with NumPy.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = image.astype(np.float64)
        s = sigma * 255
        real = x + rng.normal(0, s, x.shape)
        imaginary = rng.normal(0, s, x.shape)
        return _to_uint8(np.hypot(real, imaginary))

    return apply


def _gibbs_ringing(keep: float) -> Transform:
    # k-space truncation: keep the central ``keep`` fraction of frequencies along each axis
    # (hard cut, no window), which rings at edges (Gibbs). torchio 1.2.1 has no such
    # transform; a centred symmetric cut keeps the image real up to rounding.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        hwc = _hwc(image).astype(np.float64)
        h, w = hwc.shape[:2]
        spectrum = np.fft.fftshift(np.fft.fft2(hwc, axes=(0, 1)), axes=(0, 1))
        fy = np.abs(np.arange(h) - h // 2) <= keep * h / 2
        fx = np.abs(np.arange(w) - w // 2) <= keep * w / 2
        mask = (fy[:, None] & fx[None, :])[..., None]
        out = np.fft.ifft2(np.fft.ifftshift(spectrum * mask, axes=(0, 1)), axes=(0, 1)).real
        return _like(_to_uint8(out), image)

    return apply


def _low_resolution(factor: float) -> Transform:
    # Acquisition at a coarser grid, shown at the original grid: anti-aliased downsampling
    # to ``factor`` x the side, then linear interpolation back (scikit-image; linear as in
    # torchio's RandomAnisotropy, and cubic costs 18x more at 224 px).
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        from skimage.transform import resize

        hwc = _hwc(image).astype(np.float64)
        h, w, c = hwc.shape
        small = (max(2, round(h * factor)), max(2, round(w * factor)), c)
        low = resize(hwc, small, order=1, anti_aliasing=True, preserve_range=True)
        back = resize(low, hwc.shape, order=1, anti_aliasing=False, preserve_range=True)
        return _like(_to_uint8(back), image)

    return apply


def _speckle_noise(sigma: float) -> Transform:
    # Multiplicative noise x + x * n, n ~ N(0, sigma) (ImageNet-C / MedMNIST-C speckle).
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = image.astype(np.float64)
        return _to_uint8(x + x * rng.normal(0, sigma, x.shape))

    return apply


def _impulse_noise(amount: float) -> Transform:
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        from skimage.util import random_noise

        noisy = random_noise(image, mode="s&p", amount=amount, rng=seed)
        return _to_uint8(noisy * 255)

    return apply


def _disk_kernel(radius: float) -> np.ndarray:
    """Normalised disk (defocus point-spread function) with fractional radius: each weight
    is the share of its pixel inside the circle (8 x 8 supersampling), so the blur grows
    continuously with the radius instead of in whole-pixel steps."""
    half = int(np.ceil(radius))
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    offsets = np.arange(-half, half + 1)
    ys = (offsets[:, None] + sub[None, :]).reshape(-1)
    inside = (ys[:, None] ** 2 + ys[None, :] ** 2) <= radius**2
    n = len(offsets)
    kernel = inside.reshape(n, 8, n, 8).mean(axis=(1, 3))
    return kernel / kernel.sum()


def _defocus_blur(radius: float) -> Transform:
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        from scipy.signal import fftconvolve

        kernel = _disk_kernel(max(_scale(radius, image), 0.5))
        # Mirror padding, then an FFT convolution: the disk grows with the side, and direct
        # convolution with a 21 x 21 kernel at 224 px was the slowest step.
        pad = kernel.shape[0] // 2
        hwc = np.pad(_hwc(image).astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), "symmetric")
        out = fftconvolve(hwc, kernel[..., None], mode="valid")
        return _like(_to_uint8(out), image)

    return apply


def _gaussian_blur(sigma: float) -> Transform:
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        from skimage.filters import gaussian

        hwc = _hwc(image).astype(np.float64)
        out = gaussian(hwc, sigma=_scale(sigma, image), channel_axis=-1, preserve_range=True)
        return _like(_to_uint8(out), image)

    return apply


def _pixelate(factor: float) -> Transform:
    # ImageNet-C pixelate: box-downsample to ``factor`` x the side, nearest-neighbour back.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        from skimage.transform import resize

        hwc = _hwc(image).astype(np.float64)
        h, w, c = hwc.shape
        small = (max(2, round(h * factor)), max(2, round(w * factor)), c)
        low = resize(hwc, small, order=1, anti_aliasing=True, preserve_range=True)
        back = resize(low, hwc.shape, order=0, anti_aliasing=False, preserve_range=True)
        return _like(_to_uint8(back), image)

    return apply


def _brightness(shift: float) -> Transform:
    # Over-exposure as a camera makes it: the same amount added to every channel of the
    # 8-bit (sRGB-encoded) values, clipped at 255, so neutral pixels stay neutral and
    # saturated ones run towards white; nothing gains colour. A grey image (and every grey
    # pixel of a colour image) gets exactly the grayscale shift, as under hsv_brightness.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        return _to_uint8(image.astype(np.float64) + shift * 255)

    return apply


def _hsv_brightness(shift: float) -> Transform:
    # ImageNet-C / MedMNIST-C brightness: add to the HSV value channel (grey images: to the
    # intensity). Kept for comparison with those benchmarks: a near-black pixel such as
    # (3, 1, 0) has full HSV saturation and a noisy hue, so raising V paints it in colour.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        if image.ndim == 2 or image.shape[2] == 1:
            return _to_uint8(image.astype(np.float64) + shift * 255)
        from skimage.color import hsv2rgb, rgb2hsv

        hsv = rgb2hsv(image)
        hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
        return _to_uint8(hsv2rgb(hsv) * 255)

    return apply


def _saturation(factor: float) -> Transform:
    # Faded (or, above 1, stronger) colour at fixed lightness: CIE Lab chroma a*, b* scaled
    # by ``factor``, L* and hue angle kept (scikit-image, D65). HSV desaturation keeps
    # V = max(R, G, B) instead, which brightens a saturated image as it loses colour.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        from skimage.color import lab2rgb, rgb2lab

        lab = rgb2lab(image)
        lab[..., 1:] *= factor
        return _to_uint8(lab2rgb(lab) * 255)

    return apply


def _hsv_saturation(factor: float) -> Transform:
    # ImageNet-C saturate: HSV saturation scaled, in closed form: with hue and value
    # V = max(R, G, B) fixed, every channel c satisfies c = V (1 - S g(hue)), so scaling S by
    # f gives c' = V - f (V - c) (f capped where S f would exceed 1). Same result as skimage
    # rgb2hsv/hsv2rgb, 30x faster at 224 px.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        x = image.astype(np.float64)
        value = x.max(axis=-1, keepdims=True)
        spread = value - x.min(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            cap = np.where(spread > 0, value / spread, np.inf)  # f at which S reaches 1
        scale = np.minimum(factor, cap)
        return _to_uint8(value - scale * (value - x))

    return apply


# Stain model limits, in scikit-image's units (optical density / ln(1e6)) and grey levels.
# Amounts below _STAIN_NOISE (absorption under about 5 %) are not stain: camera noise of SD
# 2 grey levels on white glass unmixes into amounts below 0.0033 in 99.9 % of pixels. A
# pixel whose brightest channel is below _OPAQUE_GREY transmits under 6 % of the light in
# every channel: opaque (dust, folds, a black border), its colour says nothing about stain,
# and it keeps it; the change fades in up to _CLEAR_GREY (19 %).
_STAIN_NOISE = 0.004
_OPAQUE_GREY = 16.0
_CLEAR_GREY = 48.0


def _optical_density(image: np.ndarray) -> np.ndarray:
    """scikit-image's optical density log(I) / log(1e-6), I floored at 1e-6 as in rgb2hed."""
    return np.log(np.maximum(image.astype(np.float64) / 255, 1e-6)) / np.log(1e-6)


def _stain_amounts(image: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin and residual (DAB vector) amounts per pixel: scikit-image's
    colour deconvolution (Ruifrok & Johnston 2001) in its units, without rgb2hed's clipping
    of negative amounts."""
    from skimage.color import hed_from_rgb

    return _optical_density(image) @ hed_from_rgb


def _stain_shift(sigma: float) -> Transform:
    # Stain uptake varies between slides and labs. Beer-Lambert model with scikit-image's
    # H&E-DAB vectors: the haematoxylin and eosin present in a pixel (amount above the noise
    # floor) is multiplied or divided by (1 + sigma)^u, u ~ U(0.8, 1) per stain and image
    # (little spread within a severity keeps the levels apart), random direction. The rest
    # of the optical density (residual, noise) is kept and nothing is added, so bare glass
    # stays white; opaque pixels keep their colour; factor 1 returns the image exactly.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        from skimage.color import hed_from_rgb, rgb_from_hed

        rng = np.random.default_rng(seed)
        factors = (1 + sigma) ** (rng.uniform(0.8, 1.0, 2) * rng.choice([-1.0, 1.0], 2))
        density = _optical_density(image)
        stain = np.maximum(density @ hed_from_rgb[:, :2] - _STAIN_NOISE, 0)
        brightest = image.max(axis=-1, keepdims=True).astype(np.float64)
        clear = np.clip((brightest - _OPAQUE_GREY) / (_CLEAR_GREY - _OPAQUE_GREY), 0, 1)
        density = density + clear * ((stain * (factors - 1)) @ rgb_from_hed[:2])
        return _to_uint8(np.exp(density * np.log(1e-6)) * 255)

    return apply


def _tellez_stain_shift(sigma: float) -> Transform:
    # H&E stain augmentation (Tellez et al. 2018): in haematoxylin-eosin-DAB space, scale each
    # stain by 1 + a and shift it by b, a ~ U(-sigma, sigma), b ~ U(-sigma/4, sigma/4) per
    # image, at least half the maximum so every severity shifts visibly. The shift b tints
    # bare glass (white) and rgb2hed's clipping recolours near-black pixels; kept for
    # comparison with studies that use this augmentation.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        from skimage.color import hed2rgb, rgb2hed

        rng = np.random.default_rng(seed)
        signs = rng.choice([-1.0, 1.0], size=(2, 3))
        a = sigma * rng.uniform(0.5, 1.0, 3) * signs[0]
        b = sigma / 4 * rng.uniform(0.5, 1.0, 3) * signs[1]
        hed = rgb2hed(image)
        return _to_uint8(hed2rgb(hed * (1 + a) + b) * 255)

    return apply


# ---------------------------------------------------------------- registry

_ENTRIES = [
    # imgaug (the original study's backend)
    Perturbation(
        "gaussian_noise", "digital", "imgaug",
        "noise standard deviation (fraction of 255)",
        (0.04, 0.08, 0.12, 0.18, 0.26), _gaussian_noise,
        value_range=(0, 1),
        description="imgaug AdditiveGaussianNoise",
    ),
    Perturbation(
        "motion_blur", "optics", "imgaug",
        "kernel size in pixels at 28 px, scaled with the side (angle 45 degrees)",
        (3, 5, 7, 9, 11), _motion_blur, stochastic=False,
        value_range=(1, math.inf),
        description="imgaug MotionBlur, fixed angle and direction (deterministic)",
    ),
    Perturbation(
        "contrast", "X-ray/CT", "imgaug",
        "contrast factor alpha around the mid-grey (1 = unchanged)",
        (0.75, 0.55, 0.4, 0.28, 0.18), _contrast, stochastic=False,
        value_range=(0, math.inf),
        description="imgaug LinearContrast (under-exposure, narrow window)",
    ),
    Perturbation(
        "gamma", "X-ray/CT", "imgaug",
        "gamma exponent (1 = unchanged)",
        (1.4, 1.8, 2.3, 2.9, 3.6), _gamma, stochastic=False,
        value_range=(0.05, 20),
        description="imgaug GammaContrast (detector response / display curve)",
    ),
    Perturbation(
        "jpeg", "digital", "imgaug",
        "JPEG compression strength (0..100; quality = 100 - strength)",
        (80, 88, 93, 96, 98.5), _jpeg, stochastic=False,
        value_range=(0, 100),
        description="imgaug JpegCompression",
    ),
    Perturbation(
        "elastic", "ultrasound", "imgaug",
        "displacement alpha in pixels at 28 px (sigma 1.5 px), scaled with the side",
        # imaug smooths the displacement field differently from imgaug 0.4.0 (a box-blur
        # approximation of the Gaussian), so equal alphas deform more; this table gives the
        # SSIM per level of the former (1, 2, 3, 4.5, 6) (bench/perturbation_hashes.py).
        (0.65, 1.25, 1.9, 2.85, 3.8), _elastic,
        value_range=(0, math.inf),
        description="imgaug ElasticTransformation (probe pressure / tissue deformation)",
    ),
    # torchio (MRI acquisition)
    Perturbation(
        "mri_motion", "MRI acquisition", "torchio",
        "maximum in-plane rotation in degrees (translation = degrees/4 px at 28 px)",
        (3, 7, 12, 18, 26), _mri_motion,
        value_range=(0, 180),
        description="torchio Motion (k-space motion, Shaw et al. 2019), two movements",
    ),
    Perturbation(
        "ghosting", "MRI acquisition", "torchio",
        "ghost intensity (0..1), 2-4 ghosts along a random phase-encoding axis",
        (0.2, 0.4, 0.6, 0.8, 1.0), _ghosting,
        value_range=(0, 1),
        description="torchio Ghosting",
    ),
    Perturbation(
        "spike", "MRI acquisition", "torchio",
        "spike intensity (fraction of the largest k-space magnitude)",
        (0.05, 0.1, 0.2, 0.35, 0.6), _spike,
        value_range=(0, math.inf),
        description="torchio Spike (herringbone)",
    ),
    Perturbation(
        "bias_field", "MRI acquisition", "torchio",
        "maximum |coefficient| of the order-3 log-polynomial field",
        (0.1, 0.2, 0.35, 0.55, 0.8), _bias_field,
        value_range=(0, math.inf),
        description="torchio BiasField (coil inhomogeneity)",
    ),
    Perturbation(
        "rician_noise", "MRI acquisition", "numpy",
        "noise standard deviation per real/imaginary channel (fraction of 255)",
        (0.03, 0.06, 0.1, 0.15, 0.22), _rician_noise,
        value_range=(0, 1),
        description="|image + complex Gaussian noise| (magnitude-image noise)",
    ),
    Perturbation(
        "gibbs_ringing", "MRI acquisition", "numpy",
        "fraction of k-space kept along each axis (truncation)",
        (0.8, 0.65, 0.5, 0.4, 0.3), _gibbs_ringing, stochastic=False,
        value_range=(0.01, 1),
        description="k-space truncation with a hard cut (Gibbs ringing)",
    ),
    Perturbation(
        "low_resolution", "MRI acquisition", "skimage",
        "resolution factor (side of the acquired grid / side)",
        (0.8, 0.65, 0.5, 0.4, 0.3), _low_resolution, stochastic=False,
        value_range=(0.01, 1),
        description="anti-aliased downsampling, linear upsampling back",
    ),
    # MedMNIST-C-style corruptions (own implementation, see the module docstring)
    Perturbation(
        "speckle_noise", "ultrasound", "numpy",
        "standard deviation of the multiplicative noise",
        (0.1, 0.2, 0.32, 0.45, 0.6), _speckle_noise,
        value_range=(0, math.inf),
        description="x + x * N(0, sigma) (MedMNIST-C / ImageNet-C speckle)",
    ),
    Perturbation(
        "impulse_noise", "digital", "skimage",
        "share of pixels set to 0 or 255",
        (0.01, 0.03, 0.06, 0.1, 0.15), _impulse_noise,
        value_range=(0, 1),
        description="skimage random_noise salt & pepper",
    ),
    Perturbation(
        "defocus_blur", "optics", "scipy",
        "disk radius in pixels at 28 px, scaled with the side",
        (0.6, 0.9, 1.2, 1.6, 2.1), _defocus_blur, stochastic=False,
        value_range=(0, math.inf),
        description="convolution with an anti-aliased disk (out-of-focus optics)",
    ),
    Perturbation(
        "gaussian_blur", "optics", "skimage",
        "Gaussian sigma in pixels at 28 px, scaled with the side",
        (0.4, 0.6, 0.85, 1.15, 1.5), _gaussian_blur, stochastic=False,
        value_range=(0, math.inf),
        description="skimage gaussian",
    ),
    Perturbation(
        "pixelate", "digital", "skimage",
        "resolution factor before nearest-neighbour upsampling",
        (0.8, 0.65, 0.5, 0.4, 0.3), _pixelate, stochastic=False,
        value_range=(0.01, 1),
        description="box downsampling, nearest upsampling (ImageNet-C pixelate)",
    ),
    Perturbation(
        "brightness", "optics", "numpy",
        "value added to every channel (fraction of 255), clipped",
        (0.08, 0.16, 0.25, 0.35, 0.45), _brightness, stochastic=False,
        value_range=(-1, 1),
        description="over-exposure: the same shift on R, G and B (grey: the intensity)",
    ),
    Perturbation(
        "saturation", "optics", "skimage",
        "CIE Lab chroma factor at fixed lightness L* (1 = unchanged)",
        (0.7, 0.5, 0.35, 0.2, 0.08), _saturation, channels=RGB_ONLY, stochastic=False,
        value_range=(0, math.inf),
        description="faded colour (stain fading, white balance) at fixed lightness; RGB only",
    ),
    Perturbation(
        "stain_shift", "optics", "skimage",
        "haematoxylin and eosin amounts multiplied or divided by up to 1 + value",
        (0.7, 1.6, 2.8, 4.5, 7.0), _stain_shift, channels=RGB_ONLY,
        value_range=(0, math.inf),
        description="H&E stain amounts scaled in optical density, glass stays white; RGB only",
    ),
    # ImageNet-C / MedMNIST-C and Tellez et al. definitions, for comparison with them
    Perturbation(
        "hsv_brightness", "optics", "skimage",
        "value added (fraction of 255; HSV value for RGB)",
        (0.08, 0.16, 0.25, 0.35, 0.45), _hsv_brightness, stochastic=False,
        value_range=(-1, 1),
        description="ImageNet-C / MedMNIST-C brightness (HSV value shift)",
    ),
    Perturbation(
        "hsv_saturation", "optics", "numpy",
        "HSV saturation factor (1 = unchanged)",
        (0.7, 0.5, 0.35, 0.2, 0.08), _hsv_saturation, channels=RGB_ONLY, stochastic=False,
        value_range=(0, math.inf),
        description="ImageNet-C saturate (HSV saturation factor, V kept); RGB only",
    ),
    Perturbation(
        "tellez_stain_shift", "optics", "skimage",
        "maximum relative change of each H&E-DAB stain",
        (0.1, 0.2, 0.35, 0.5, 0.7), _tellez_stain_shift, channels=RGB_ONLY,
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


def _channels_of(images: np.ndarray) -> int:
    return 1 if images.ndim == 3 else images.shape[-1]


def image_seed(seed: int, perturbation: str, severity: int, image_index: int) -> int:
    """Stable 32-bit seed for one image (crc32 keeps names stable across Python runs)."""
    state = np.random.SeedSequence([seed, zlib.crc32(perturbation.encode()), severity, image_index])
    return int(state.generate_state(1)[0])


def perturb_images(
    images: np.ndarray,
    name: str,
    severity: int,
    seed: int,
    image_indices: Sequence[int] | None = None,
    severity_table: Sequence[float] | None = None,
) -> np.ndarray:
    """Apply one perturbation at one severity to uint8 images (N, H, W) or (N, H, W, C).

    ``image_indices`` are the images' positions in the full test set (default 0..N-1), so
    a subset gets the same result as the whole set. ``severity_table`` (five values)
    replaces the registry's parameters for severities 1..5.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(
            f"Perturbations take uint8 images, got {getattr(images, 'dtype', type(images))}."
        )
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise ValueError(f"Expected images of shape (N, H, W) or (N, H, W, C), got {images.shape}.")
    if severity not in SEVERITIES:
        raise ValueError(f"Severity must be one of {SEVERITIES}, got {severity}.")
    spec = get_perturbation(name)
    channels = _channels_of(images)
    if channels not in spec.channels:
        raise ValueError(
            f"{name} needs images with {' or '.join(map(str, spec.channels))} channel(s), "
            f"got {channels}: it is RGB-only; choose another perturbation for this dataset."
        )
    table = spec.severity_table if severity_table is None else tuple(severity_table)
    if len(table) != len(SEVERITIES):
        raise ValueError(
            f"{name}: severity_table needs {len(SEVERITIES)} values, got {len(table)}."
        )
    transform = spec.make(table[severity - 1])
    indices = range(len(images)) if image_indices is None else image_indices
    out = np.empty_like(images)
    for position, (image, index) in enumerate(zip(images, indices, strict=True)):
        out[position] = transform(image, image_seed(seed, name, severity, int(index)))
    return out


def perturb_all_severities(
    images: np.ndarray,
    name: str,
    severities: Sequence[int],
    seed: int,
    severity_table: Sequence[float] | None = None,
) -> np.ndarray:
    """Stack of perturbed copies, shape (len(severities), *images.shape)."""
    return np.stack(
        [perturb_images(images, name, s, seed, severity_table=severity_table) for s in severities]
    )


def calibration(
    clean: np.ndarray, stack: np.ndarray, severities: Sequence[int]
) -> list[dict[str, float]]:
    """Mean SSIM and PSNR (scikit-image) of perturbed vs clean images at each severity."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    channel_axis = -1 if clean.ndim == 4 else None
    rows = []
    for severity, level in zip(severities, stack, strict=True):
        ssim = [
            structural_similarity(c, p, data_range=255, channel_axis=channel_axis)
            for c, p in zip(clean, level, strict=True)
        ]
        psnr = []
        for c, p in zip(clean, level, strict=True):
            # Identical images have infinite PSNR; cap at 100 dB to keep the mean finite.
            psnr.append(
                100.0 if np.array_equal(c, p) else peak_signal_noise_ratio(c, p, data_range=255)
            )
        rows.append(
            {"severity": int(severity), "ssim": float(np.mean(ssim)), "psnr": float(np.mean(psnr))}
        )
    return rows


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
