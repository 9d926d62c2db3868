"""Saliency-based robustness analysis of medical image classifiers.

One module per concept: ``data`` (download, load, folds), ``models`` (architecture
registry), ``training``, ``perturbations`` (perturbation registry), ``evaluation``
(classification metrics), ``attribution`` (saliency-method registry), ``metrics``
(saliency change), ``plots``, and ``tables`` (Parquet I/O). Modules import their heavy
dependencies themselves so that each workflow stage's environment needs only its own.
"""

__version__ = "0.1.0"
