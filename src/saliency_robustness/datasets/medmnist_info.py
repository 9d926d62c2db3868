"""MedMNIST's dataset table (``medmnist.INFO``: URLs, MD5s, task, labels, channels, sizes) as
plain data, so that the Snakemake main process and the light jobs read it without importing
the medmnist package: ``from medmnist import INFO`` imports torch and torchvision through
medmnist's ``__init__`` (9.6 s measured on the 2-core CI machine, against 1.5 s for numpy and
pandas), and installing medmnist pulls unpinned torch into every env that lists it.

``medmnist_info.json`` is ``medmnist.INFO`` of the version pinned in requirements.txt,
dumped as is; tests/unit/datasets/test_data.py checks that it still equals the installed
package's table. After a medmnist upgrade, regenerate it with::

    .venv/bin/python -c "import json, medmnist; from pathlib import Path; Path(
    'src/saliency_robustness/datasets/medmnist_info.json').write_text(json.dumps({
    'medmnist_version': medmnist.__version__, 'INFO': medmnist.INFO}, indent=1,
    ensure_ascii=False) + chr(10))"
"""

from __future__ import annotations

import json
from pathlib import Path

_PATH = Path(__file__).with_suffix(".json")
_SNAPSHOT = json.loads(_PATH.read_text(encoding="utf-8"))

MEDMNIST_VERSION: str = _SNAPSHOT["medmnist_version"]
INFO: dict[str, dict] = _SNAPSHOT["INFO"]
