"""NumPy, SciPy and scikit-image perturbations: MedMNIST-C / ImageNet-C corruptions written
from the papers' definitions (speckle, impulse noise, defocus and Gaussian blur,
pixelation, brightness, saturation, stain shifts) and the MRI k-space ones torchio lacks
(Rician noise, Gibbs ringing, low resolution)."""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve
from skimage.color import (
    hed2rgb,
    hed_from_rgb,
    hsv2rgb,
    lab2rgb,
    rgb2hed,
    rgb2hsv,
    rgb2lab,
    rgb_from_hed,
)
from skimage.filters import gaussian
from skimage.transform import resize
from skimage.util import random_noise

from saliency_robustness.perturbations.images import Transform, _hwc, _like, _scale, _to_uint8


def rician_noise(sigma: float) -> Transform:
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


def gibbs_ringing(keep: float) -> Transform:
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


def low_resolution(factor: float) -> Transform:
    # Acquisition at a coarser grid, shown at the original grid: anti-aliased downsampling
    # to ``factor`` x the side, then linear interpolation back (scikit-image; linear as in
    # torchio's RandomAnisotropy, and cubic costs 18x more at 224 px).
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        hwc = _hwc(image).astype(np.float64)
        h, w, c = hwc.shape
        small = (max(2, round(h * factor)), max(2, round(w * factor)), c)
        low = resize(hwc, small, order=1, anti_aliasing=True, preserve_range=True)
        back = resize(low, hwc.shape, order=1, anti_aliasing=False, preserve_range=True)
        return _like(_to_uint8(back), image)

    return apply


def speckle_noise(sigma: float) -> Transform:
    # Multiplicative noise x + x * n, n ~ N(0, sigma) (ImageNet-C / MedMNIST-C speckle).
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = image.astype(np.float64)
        return _to_uint8(x + x * rng.normal(0, sigma, x.shape))

    return apply


def impulse_noise(amount: float) -> Transform:
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
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


def defocus_blur(radius: float) -> Transform:
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        kernel = _disk_kernel(max(_scale(radius, image), 0.5))
        # Mirror padding, then an FFT convolution: the disk grows with the side, and direct
        # convolution with a 21 x 21 kernel at 224 px was the slowest step.
        pad = kernel.shape[0] // 2
        hwc = np.pad(_hwc(image).astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), "symmetric")
        out = fftconvolve(hwc, kernel[..., None], mode="valid")
        return _like(_to_uint8(out), image)

    return apply


def gaussian_blur(sigma: float) -> Transform:
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        hwc = _hwc(image).astype(np.float64)
        out = gaussian(hwc, sigma=_scale(sigma, image), channel_axis=-1, preserve_range=True)
        return _like(_to_uint8(out), image)

    return apply


def pixelate(factor: float) -> Transform:
    # ImageNet-C pixelate: box-downsample to ``factor`` x the side, nearest-neighbour back.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        hwc = _hwc(image).astype(np.float64)
        h, w, c = hwc.shape
        small = (max(2, round(h * factor)), max(2, round(w * factor)), c)
        low = resize(hwc, small, order=1, anti_aliasing=True, preserve_range=True)
        back = resize(low, hwc.shape, order=0, anti_aliasing=False, preserve_range=True)
        return _like(_to_uint8(back), image)

    return apply


def brightness(shift: float) -> Transform:
    # Over-exposure as a camera makes it: the same amount added to every channel of the
    # 8-bit (sRGB-encoded) values, clipped at 255, so neutral pixels stay neutral and
    # saturated ones run towards white; nothing gains colour. A grey image (and every grey
    # pixel of a colour image) gets exactly the grayscale shift, as under hsv_brightness.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        return _to_uint8(image.astype(np.float64) + shift * 255)

    return apply


def hsv_brightness(shift: float) -> Transform:
    # ImageNet-C / MedMNIST-C brightness: add to the HSV value channel (grey images: to the
    # intensity). Kept for comparison with those benchmarks: a near-black pixel such as
    # (3, 1, 0) has full HSV saturation and a noisy hue, so raising V paints it in colour.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        if image.ndim == 2 or image.shape[2] == 1:
            return _to_uint8(image.astype(np.float64) + shift * 255)

        hsv = rgb2hsv(image)
        hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
        return _to_uint8(hsv2rgb(hsv) * 255)

    return apply


def saturation(factor: float) -> Transform:
    # Faded (or, above 1, stronger) colour at fixed lightness: CIE Lab chroma a*, b* scaled
    # by ``factor``, L* and hue angle kept (scikit-image, D65). HSV desaturation keeps
    # V = max(R, G, B) instead, which brightens a saturated image as it loses colour.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        lab = rgb2lab(image)
        lab[..., 1:] *= factor
        return _to_uint8(lab2rgb(lab) * 255)

    return apply


def hsv_saturation(factor: float) -> Transform:
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
    return _optical_density(image) @ hed_from_rgb


def stain_shift(sigma: float) -> Transform:
    # Stain uptake varies between slides and labs. Beer-Lambert model with scikit-image's
    # H&E-DAB vectors: the haematoxylin and eosin present in a pixel (amount above the noise
    # floor) is multiplied or divided by (1 + sigma)^u, u ~ U(0.8, 1) per stain and image
    # (little spread within a severity keeps the levels apart), random direction. The rest
    # of the optical density (residual, noise) is kept and nothing is added, so bare glass
    # stays white; opaque pixels keep their colour; factor 1 returns the image exactly.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        factors = (1 + sigma) ** (rng.uniform(0.8, 1.0, 2) * rng.choice([-1.0, 1.0], 2))
        density = _optical_density(image)
        stain = np.maximum(density @ hed_from_rgb[:, :2] - _STAIN_NOISE, 0)
        brightest = image.max(axis=-1, keepdims=True).astype(np.float64)
        clear = np.clip((brightest - _OPAQUE_GREY) / (_CLEAR_GREY - _OPAQUE_GREY), 0, 1)
        density = density + clear * ((stain * (factors - 1)) @ rgb_from_hed[:2])
        return _to_uint8(np.exp(density * np.log(1e-6)) * 255)

    return apply


def tellez_stain_shift(sigma: float) -> Transform:
    # H&E stain augmentation (Tellez et al. 2018): in haematoxylin-eosin-DAB space, scale each
    # stain by 1 + a and shift it by b, a ~ U(-sigma, sigma), b ~ U(-sigma/4, sigma/4) per
    # image, at least half the maximum so every severity shifts visibly. The shift b tints
    # bare glass (white) and rgb2hed's clipping recolours near-black pixels; kept for
    # comparison with studies that use this augmentation.
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        signs = rng.choice([-1.0, 1.0], size=(2, 3))
        a = sigma * rng.uniform(0.5, 1.0, 3) * signs[0]
        b = sigma / 4 * rng.uniform(0.5, 1.0, 3) * signs[1]
        hed = rgb2hed(image)
        return _to_uint8(hed2rgb(hed * (1 + a) + b) * 255)

    return apply
