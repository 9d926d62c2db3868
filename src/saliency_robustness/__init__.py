"""Saliency-based robustness analysis of medical image classifiers.

One module or subpackage per concept: ``datasets`` (MedMNIST download, npz files, folds,
own data, the synthetic set), ``models`` (architecture registry, builders, loading),
``training``, ``perturbations`` (perturbation registry, one module per backend),
``evaluation`` (predictions and classification metrics), ``attribution`` (saliency-method
registry and implementations, saliency tables), ``analysis`` (map similarity, saliency
change, detection, agreement, faithfulness, sanity, localisation, robustness, statistics),
``plots``, ``tables`` (Parquet I/O, key columns), ``config_schema`` and ``config_checks``.
Registries are plain data that name their implementations as "module:function" text, so
the Snakemake process and the table and plot jobs import no torch; each module imports its
heavy dependencies itself, so each workflow stage's environment needs only its own.
"""

import os
import site
import sys

__version__ = "0.1.0"


def _drop_foreign_site_packages() -> None:
    """Keep a conda job to its own env's packages.

    Snakemake's script preamble appends the Snakemake process's whole ``sys.path`` to the
    job's (snakemake.common.get_snakemake_searchpaths), its virtualenv's site-packages
    included, so that the job can unpickle the ``snakemake`` object. A package missing from
    the job's env would then be imported silently from Snakemake's environment, at its
    version. By the time a script imports this package the preamble is done, so every
    site-packages folder outside this interpreter's own prefixes is dropped (the user's site
    folder and ``PYTHONPATH`` entries, asked for explicitly, stay).
    """
    own = tuple(os.path.realpath(p) + os.sep for p in {sys.prefix, sys.base_prefix})
    kept = {os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    if site.ENABLE_USER_SITE:
        kept.add(os.path.realpath(site.getusersitepackages()))

    def foreign(path: str) -> bool:
        real = os.path.realpath(path)
        return (
            os.path.basename(real) in ("site-packages", "dist-packages")
            and not (real + os.sep).startswith(own)
            and real not in kept
        )

    sys.path[:] = [path for path in sys.path if not foreign(path)]


_drop_foreign_site_packages()
