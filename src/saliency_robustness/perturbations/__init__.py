"""Perturbations: realistic image degradations at severities 1..5.

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
``colour_test_images`` makes the RGB images they are checked on.

Every image gets its own random state from (seed, perturbation, severity, image index), so
results do not depend on batch size or order. Spatial parameters are given for a 28 px
image and scaled with the image side, so a severity means the same degradation at 28, 64,
128 and 224 px.

Modules: ``registry`` (the ``PERTURBATIONS`` table as plain data, light: read by the
Snakemake process and the table jobs), one module per backend (``imgaug_backend``,
``torchio_backend``, ``numpy_backend``) with the transform factories the registry names,
``images`` (pixel helpers the backends share), ``apply`` (seeded application to image
arrays, calibration) and ``colour_test_images``. Adding a perturbation is one registry
entry plus its factory in its backend's module."""
