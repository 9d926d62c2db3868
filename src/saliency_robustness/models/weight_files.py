"""Where an architecture's ImageNet weights are read from, and the messages when they are
missing or damaged, without importing torch: the config check reports a missing file
before any job runs. ``weights.load_imagenet_weights`` reads the file these name.

The default place is torchvision's cache, ``<torch hub dir>/checkpoints/<file name>``
(``torch_hub_dir``: ``$TORCH_HOME/hub``, the folder torchvision downloads to); the file
name is the registry's ``Architecture.imagenet_file``, the last part of torchvision's
download URL. A configured file (``train.weights_files.<arch>``) replaces it. Weights never
come from the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from saliency_robustness.models.registry import get_architecture

TORCHVISION_DOWNLOADS = "https://download.pytorch.org/models/"


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` as torch computes it by default: ``$TORCH_HOME/hub``, where
    ``TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch`` and that to ``~/.cache/torch``
    (the study never calls ``torch.hub.set_dir``)."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(home) / "hub"


def imagenet_weights_url(name: str) -> str:
    """URL of torchvision's default ImageNet weights for architecture ``name``."""
    file = get_architecture(name).imagenet_file
    if file is None:
        raise ValueError(
            f"torchvision has no ImageNet weights for '{name}'; use train.weights: null, or "
            f"set train.weights_files.{name} to a state_dict file of this architecture."
        )
    return TORCHVISION_DOWNLOADS + file


def imagenet_weights_path(name: str, weights_file: str | os.PathLike | None = None) -> Path:
    """Where the ImageNet weights of ``name`` are read from: ``weights_file`` when given,
    else torchvision's cache, ``torch_hub_dir()/checkpoints/<file name of the URL>``."""
    if weights_file is not None:
        return Path(weights_file).expanduser()
    url = imagenet_weights_url(name)
    return torch_hub_dir() / "checkpoints" / url.rsplit("/", 1)[-1]


def missing_weights_message(name: str, path: Path) -> str:
    """What to do when the ImageNet weights of ``name`` are not at ``path``."""
    try:
        source = f"Download {imagenet_weights_url(name)} and save it as {path}"
    except ValueError as error:
        source = str(error)
    return (
        f"ImageNet weights for '{name}' not found at {path}. {source} (torchvision's cache "
        f"is $TORCH_HOME/hub/checkpoints; TORCH_HOME={os.environ.get('TORCH_HOME')!r}), or "
        f"set train.weights_files.{name} to a local copy. There is no fallback to random "
        "weights."
    )


def replace_weights_hint(name: str, path: str | os.PathLike) -> str:
    """How to replace a damaged ImageNet weights file."""
    try:
        source = f"download {imagenet_weights_url(name)} again and save it as {path}"
    except ValueError:
        source = f"replace {path} with an intact copy"
    return f"Fix: {source}, or point train.weights_files.{name} at an intact copy."
