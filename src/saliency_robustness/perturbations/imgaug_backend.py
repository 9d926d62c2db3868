"""imgaug transforms (the original study's backend): noise, motion blur, contrast, gamma,
JPEG and elastic deformation, each seeded per image."""

from __future__ import annotations

import imgaug.augmenters as iaa
import numpy as np

from saliency_robustness.perturbations.images import Transform, _scale


def _imgaug(augmenter) -> Transform:
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        augmenter.seed_(seed)
        return augmenter.augment_image(image)

    return apply


def gaussian_noise(sigma: float) -> Transform:
    return _imgaug(iaa.AdditiveGaussianNoise(loc=0, scale=sigma * 255))


def motion_blur(kernel: float) -> Transform:
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        # imgaug's MotionBlur is only deterministic with a fixed angle and direction.
        k = max(3, int(round(_scale(kernel, image))))
        augmenter = iaa.MotionBlur(k=k, angle=45, direction=0.0)
        augmenter.seed_(seed)
        return augmenter.augment_image(image)

    return apply


def contrast(alpha: float) -> Transform:
    return _imgaug(iaa.LinearContrast(alpha=alpha))


def gamma(gamma: float) -> Transform:
    return _imgaug(iaa.GammaContrast(gamma=gamma))


def jpeg(compression: float) -> Transform:
    return _imgaug(iaa.JpegCompression(compression=compression))


def elastic(alpha: float) -> Transform:
    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        # Displacement (alpha) and its smoothness (sigma) are lengths: scale with the side.
        # order=3 (bicubic): imgaug 0.4.0's default, which imaug changed to 0 (nearest).
        augmenter = iaa.ElasticTransformation(
            alpha=_scale(alpha, image), sigma=_scale(1.5, image), mode="reflect", order=3
        )
        augmenter.seed_(seed)
        return augmenter.augment_image(image)

    return apply
