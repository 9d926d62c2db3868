"""Logging set-up for workflow scripts: everything to the rule's log file."""

from __future__ import annotations

import logging
import os
import sys
import warnings


def log_to_file(path: str | os.PathLike | None) -> None:
    """Send stderr, warnings and ``logging`` (INFO and up) to ``path``."""
    if path:
        sys.stderr = open(path, "w", buffering=1)  # noqa: SIM115 (lives as long as the job)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.captureWarnings(True)
    warnings.simplefilter("default")
