"""torchio transforms for MRI acquisition artifacts (motion, ghosting, spike, bias field),
always through the fixed-parameter transforms, every random parameter drawn from a NumPy
Generator seeded per image (never torch's global RNG)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torchio as tio

from saliency_robustness.perturbations.images import Transform, _hwc, _like, _scale, _to_uint8


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
        hwc = _hwc(image).astype(np.float32)
        chw = hwc.transpose(2, 0, 1)
        volume = chw[:, :, None, :] if motion_layout else chw[..., None]
        subject = tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(volume)))
        transform = transform_for(hwc, np.random.default_rng(seed))
        out = transform(subject).data.numpy()
        out = out[:, :, 0, :] if motion_layout else out[..., 0]
        return _like(_to_uint8(out.transpose(1, 2, 0)), image)

    return apply


def mri_motion(degrees: float) -> Transform:
    def transform_for(image: np.ndarray, rng: np.random.Generator):
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


def ghosting(intensity: float) -> Transform:
    def transform_for(image: np.ndarray, rng: np.random.Generator):
        # Phase-encoding direction (axis) and ghost count are random per image.
        return tio.Ghosting(
            num_ghosts=int(rng.integers(2, 5)),
            axis=int(rng.integers(0, 2)),
            intensity=intensity,
            restore=0.02,
        )

    return _torchio(transform_for)


def spike(intensity: float) -> Transform:
    def transform_for(image: np.ndarray, rng: np.random.Generator):
        # One spike in k-space, away from the centre (a spike at DC only changes brightness):
        # distance 0.1..0.4 of the spectrum from the centre, random angle. Positions are
        # fractions of the spectrum shape (torchio's convention); the third axis has size 1.
        radius = rng.uniform(0.1, 0.4)
        angle = rng.uniform(0, 2 * np.pi)
        position = np.array([[0.5 + radius * np.cos(angle), 0.5 + radius * np.sin(angle), 0.0]])
        return tio.Spike(spikes_positions=np.clip(position, 0, 0.999), intensity=intensity)

    return _torchio(transform_for)


def bias_field(magnitude: float) -> Transform:
    def transform_for(image: np.ndarray, rng: np.random.Generator):
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
