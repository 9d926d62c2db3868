"""Do the maps depend on the model at all? Randomisation sanity checks (Adebayo et al. 2018).

Cascading model-parameter randomisation (MPRT): starting from the trained model, the
parameters are re-initialised stage by stage from the output layer down (for a ResNet: fc,
layer4, layer3, layer2, layer1, bn1, conv1), each stage on top of the previous ones, and
the method's maps of the same images and target classes are compared with the trained
model's maps after every stage: SSIM, Spearman rank correlation, and the Pearson
correlation of their HOG descriptors (skimage), the three similarities of Adebayo et al.,
on maps normalised as everywhere else (|map| / max). A method passes when the similarity
after randomising the whole model lies below a threshold: its maps then depend on the
learned parameters. An edge detector (the ``sobel`` control) never changes and must fail.

``granularity='layers'`` re-initialises one parameterised module at a time, in reverse
registration order and with ``torch.manual_seed(seed + 1)`` before each reset: the order and
seeding of Quantus's MPRT (``layer_order='top_down'``), so the two can be compared; the
default ``'stages'`` re-initialises the model's top-level children (far fewer map
computations on deep models).

Data randomisation (``data_randomisation``): the same comparison between the trained model
and the same architecture trained on permuted labels (``shuffled_labels``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from skimage.feature import hog
from torch import nn

from saliency_robustness.analysis.map_similarity import normalise_maps, spearman, ssim
from saliency_robustness.attribution.maps import compute_maps

GRANULARITIES = ("stages", "layers")


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def randomisation_order(model: nn.Module, granularity: str = "stages") -> list[str]:
    """Names of the modules re-initialised one after another, output side first.

    'stages': top-level children with parameters, in reverse registration order (the
    forward order of torchvision's ResNets). 'layers': every module with
    ``reset_parameters``, in reverse registration order (as Quantus's MPRT).
    """
    if granularity == "stages":
        names = [name for name, child in model.named_children() if _has_parameters(child)]
    elif granularity == "layers":
        names = [
            name
            for name, module in model.named_modules()
            if name and hasattr(module, "reset_parameters")
        ]
    else:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")
    if not names:
        raise ValueError("The model has no parameterised modules to randomise.")
    return names[::-1]


def cascading_randomisation(
    model: nn.Module, granularity: str = "stages", seed: int = 0
) -> Iterator[tuple[str, nn.Module]]:
    """Yield (module name, model copy) with that module and all before it re-initialised.

    The trained ``model`` is left untouched (one deep copy is randomised in place)."""
    randomised = copy.deepcopy(model)
    for name in randomisation_order(model, granularity):
        torch.manual_seed(seed + 1)
        stage = randomised.get_submodule(name)
        for module in stage.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        yield name, randomised.eval()


def hog_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of the HOG descriptors of each pair of [0, 1] maps; NaN where a
    descriptor is constant (e.g. a constant map). Cells of a quarter of the map's side."""
    height, width = a.shape[1:]
    cell = (max(1, height // 4), max(1, width // 4))

    def descriptor(image: np.ndarray) -> np.ndarray:
        return hog(image, orientations=9, pixels_per_cell=cell, cells_per_block=(2, 2))

    values = []
    for x, y in zip(a, b, strict=True):
        hx, hy = descriptor(x), descriptor(y)
        if hx.std() == 0 or hy.std() == 0:
            values.append(np.nan)
        else:
            values.append(float(np.corrcoef(hx, hy)[0, 1]))
    return np.array(values, dtype=np.float64)


def similarities(original: np.ndarray, randomised: np.ndarray) -> dict[str, np.ndarray]:
    """SSIM, Spearman and HOG similarity of normalised maps, per image."""
    a, b = normalise_maps(original), normalise_maps(randomised)
    return {"ssim": ssim(a, b), "spearman": spearman(a, b), "hog": hog_similarity(a, b)}


def model_randomisation(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    method: str,
    params: dict,
    granularity: str = "stages",
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Cascading randomisation of ``model``: per stage and image, the similarity of the
    method's map to the trained model's map (targets fixed), and the maps themselves.

    Row ``stage_index`` 0 (``stage`` 'none') holds the trained model's maps (similarity 1);
    stage i > 0 has the first i modules of ``randomisation_order`` re-initialised.
    """
    targets = np.asarray(targets).reshape(-1)

    def maps_of(net: nn.Module) -> np.ndarray:
        torch.manual_seed(seed)  # stochastic methods: the same noise for every stage
        return compute_maps(net, images, targets, method, params, batch_size, device, seed)

    original = maps_of(model)
    stages = [("none", original)]
    stages += [
        (name, maps_of(net)) for name, net in cascading_randomisation(model, granularity, seed)
    ]
    return _stage_table(stages, targets)


def data_randomisation(
    model: nn.Module,
    shuffled_model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    method: str,
    params: dict,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Data randomisation test: the method's maps of a model trained on shuffled labels
    (``shuffled_labels``) against the trained model's, same images and targets. Rows as in
    ``model_randomisation``: stage 0 'none' (the trained model), stage 1 'shuffled labels'.
    """
    targets = np.asarray(targets).reshape(-1)

    def maps_of(net: nn.Module) -> np.ndarray:
        torch.manual_seed(seed)
        return compute_maps(net, images, targets, method, params, batch_size, device, seed)

    original = maps_of(model)
    return _stage_table([("none", original), ("shuffled labels", maps_of(shuffled_model))], targets)


def _stage_table(stages: list[tuple[str, np.ndarray]], targets: np.ndarray) -> pd.DataFrame:
    """Per stage and image: similarity of the stage's maps to stage 0's, and the maps."""
    original = stages[0][1]
    frames = []
    for index, (name, maps) in enumerate(stages):
        values = similarities(original, maps)
        frames.append(
            pd.DataFrame(
                {
                    "stage_index": np.int16(index),
                    "stage": name,
                    "image_index": np.arange(len(maps), dtype=np.int32),
                    "target": targets.astype(np.int16),
                    **values,
                    "saliency": list(maps.reshape(len(maps), -1).astype(np.float32)),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def shuffled_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    """The data-randomisation test's labels: a seeded permutation of the training labels
    (the class balance is kept, the image-label link is destroyed)."""
    return np.random.default_rng(seed).permutation(np.asarray(labels))
