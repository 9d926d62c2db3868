"""The study's classifiers: which architectures exist and how a named model is built,
trained-for, saved and read back.

Light modules (no torch; the Snakemake process and the config check import them):
``registry`` (the architectures as plain data: builder, default CAM layer, head, ImageNet
file, and a snapshot of every architecture's layer names), ``weight_files`` (where ImageNet
weights are read from, and the messages when they are missing) and ``specs`` (what a name
in ``train.architectures`` trains: variants, combined models, ensembles, per-model
settings). Heavy modules: ``architectures`` (the builders and ViT helpers), ``build``,
``heads``, ``combined``, ``ensemble``, ``weights``, ``loading`` and ``tensors``.

Adding an architecture: a builder ``build_<name>`` in ``architectures.py``, one entry in
``registry.ARCHITECTURES``, and the layer-name snapshot regenerated (see ``registry``).
This package imports none of its modules here, so that importing a light one stays light.
"""
