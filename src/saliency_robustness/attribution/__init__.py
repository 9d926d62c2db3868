"""Saliency maps: the method registry, the implementations, and the saliency tables.

Light modules (no torch; the Snakemake process and the config check import them):
``registry`` (every method as plain data: library, sign, ``ChannelReduction``, parameters
and defaults, and the "module:function" of its implementation, imported on first use).
Heavy modules: the implementations, ``gradients`` (captum's gradient methods),
``perturbation_methods`` (captum's occlusion, LIME and Kernel SHAP, and the SLIC
superpixels), ``shap_methods`` (the shap package's explainers), ``cam`` (pytorch-grad-cam)
and ``controls`` (Sobel and random maps); what they share: ``inputs`` (black baseline,
per-image seeds), ``completeness`` (convergence deltas), ``cam_layer`` (the default CAM
layer and member averaging for ensembles) and ``surgery`` (the unshared model copy DeepLift
and the guided methods need); ``maps`` (runs a method on batches of images and applies its
channel reduction) and ``table`` (the clean and perturbed saliency tables).

Adding a method: a function in the implementation module of its kind that returns the
attributions (N, C, H, W) (or maps (N, H, W) when nothing is reduced), and one
``SaliencyMethod`` entry in ``registry.METHODS`` naming it, with its ``channel_reduction``,
sign and defaults. This package imports none of its modules here, so that importing the
registry stays light.
"""
