"""Do the maps matter to the model? Faithfulness metrics of saliency maps.

Per image (clean or perturbed) and its stored map:

- confidence change by two covering modes (``analysis.faithfulness.covering``): ``darken``,
  the image darkened by the map (pytorch-grad-cam's ``CamMultImageConfidenceChange``;
  ``drop_in_confidence`` and ``increase_in_confidence`` as in its ``DropInConfidence`` /
  ``IncreaseInConfidence``: the salient pixels are kept, so a small drop is faithful), and
  ``binary_mask``, the pixels whose normalised map is >= ``binary_threshold`` set to black
  (the same columns with the suffix ``_binary_mask``: the salient pixels are removed, so a
  large drop is faithful),
- deletion and insertion curves (Petsiuk et al. 2018) of the target's probability (softmax;
  sigmoid for multi-label) as the most salient pixels are removed (set to black) or inserted
  into a black image, with their area under the curve,
- ROAD (Rong et al. 2022): pytorch-grad-cam's noisy-linear-imputation classes, most relevant
  first (MoRF) and least relevant first (LeRF), averaged over percentiles,
- captum's ``infidelity`` and ``sensitivity_max``.

Every metric except infidelity uses the map after the pipeline's one normalisation
(``map_similarity.normalise_maps``: |map| / max), so pixel order is by magnitude.
Infidelity needs the attribution's sign and scale and takes the raw map (captum rescales
it, ``normalize=True``).
All perturbation metrics are batched: one forward pass per step for a whole batch of images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from captum.metrics import infidelity, sensitivity_max
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy.integrate import trapezoid
from torch import nn

from saliency_robustness.analysis.map_similarity import normalise_maps
from saliency_robustness.attribution.inputs import BLACK
from saliency_robustness.attribution.maps import input_maps
from saliency_robustness.models.tensors import images_to_tensor
from saliency_robustness.tables import CONDITION_KEYS, MAP_KEYS, maps_from_table

# Confidence-change covering modes and the suffix of their columns.
COVERING = {"darken": "", "binary_mask": "_binary_mask"}


@dataclass(frozen=True)
class FaithfulnessSettings:
    """How much work each faithfulness metric does (config ``analysis.faithfulness``)."""

    steps: int = 8
    road_percentiles: tuple[int, ...] = (20, 50, 80)
    infidelity_samples: int = 4
    infidelity_sigma: float = 0.1
    sensitivity_samples: int = 2
    sensitivity_radius: float = 0.02
    # sensitivity_max recomputes the maps (n_samples times the method's cost): by default
    # only on clean images, where it asks whether the map is stable to imperceptible noise.
    sensitivity_on_perturbed: bool = False
    multi_label: bool = False  # sigmoid instead of softmax probabilities
    batch_size: int = 128
    seed: int = 0
    covering: tuple[str, ...] = ("darken",)
    binary_threshold: float = 0.5

    def __post_init__(self) -> None:
        unknown = [mode for mode in self.covering if mode not in COVERING]
        if unknown or not self.covering:
            raise ValueError(
                f"analysis.faithfulness.covering: unknown or no modes {unknown or '[]'}; "
                f"list one or more of {', '.join(COVERING)}."
            )
        if not 0 < self.binary_threshold <= 1:
            raise ValueError(
                "analysis.faithfulness.binary_threshold must lie in (0, 1] (the normalised "
                f"map's range), got {self.binary_threshold}."
            )
        if self.steps < 1:
            raise ValueError(f"faithfulness steps must be >= 1, got {self.steps}.")
        if any(not 0 < p < 100 for p in self.road_percentiles):
            raise ValueError(
                "ROAD percentiles must lie strictly between 0 and 100, "
                f"got {self.road_percentiles}."
            )
        if self.batch_size < 1:
            raise ValueError(f"faithfulness batch_size must be >= 1, got {self.batch_size}.")


class ProbabilityModel(nn.Module):
    """The model's class probabilities: softmax, or per-label sigmoid for multi-label
    models. Every metric here reads the target's probability from this output."""

    def __init__(self, model: nn.Module, multi_label: bool = False) -> None:
        super().__init__()
        self.model = model
        self.multi_label = multi_label

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs)
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)


def probability_model(model: nn.Module, multi_label: bool = False) -> ProbabilityModel:
    """``model`` wrapped to output probabilities (unchanged if it already does)."""
    if isinstance(model, ProbabilityModel):
        return model
    return ProbabilityModel(model, multi_label).eval()


class UnitRangeModel(nn.Module):
    """The model on images scaled to [0, 1]: darkening an image by a map in [0, 1] (what
    pytorch-grad-cam's ``CamMultImageConfidenceChange`` does to its input) then means
    darkening towards black, not towards the mid-grey that 0 is in model-input space."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs * 2.0 - 1.0)


def _probability_targets(targets: np.ndarray) -> list[ClassifierOutputTarget]:
    # pytorch-grad-cam targets that read one class of a ProbabilityModel's output
    return [ClassifierOutputTarget(int(t)) for t in targets]


@torch.no_grad()
def target_probability(model: nn.Module, inputs: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """Probability of each image's target class (one forward pass; a plain model is
    read through its softmax)."""
    probabilities = probability_model(model)(inputs)
    index = torch.as_tensor(np.asarray(targets), device=inputs.device).long()
    return probabilities[torch.arange(len(inputs), device=inputs.device), index].cpu().numpy()


def pixel_order(maps: np.ndarray) -> np.ndarray:
    """Pixel indices from most to least salient; ties keep row-major order (stable sort)."""
    return np.argsort(-maps.reshape(len(maps), -1), axis=1, kind="stable")


def step_counts(n_pixels: int, steps: int) -> np.ndarray:
    """Pixels removed (or inserted) after each of ``steps`` equal steps, from 0 to all."""
    return np.round(np.linspace(0, n_pixels, steps + 1)).astype(int)


def deletion_insertion_curves(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: np.ndarray,
    targets: np.ndarray,
    steps: int,
    baseline: float = BLACK,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves, each (N, steps + 1), for one batch.

    Deletion: the target's probability as the most salient pixels (all channels) are set to
    ``baseline``, in ``steps`` equal steps from none to all. Insertion: the same pixels are
    copied into a ``baseline`` image. Point 0 is the unperturbed (deletion) or all-baseline
    (insertion) image. One forward pass per step and curve for the whole batch.
    """
    n, channels, height, width = inputs.shape
    if maps.shape != (n, height, width):
        raise ValueError(f"maps of shape {maps.shape} do not match inputs {tuple(inputs.shape)}.")
    order = torch.as_tensor(pixel_order(maps), device=inputs.device)
    counts = step_counts(height * width, steps)
    flat = inputs.reshape(n, channels, height * width)
    background = torch.full_like(flat, baseline)
    deletion, insertion = [], []
    for count in counts:
        # rank of each pixel in the order; pixels ranked below `count` are the salient ones
        chosen = torch.zeros((n, height * width), dtype=torch.bool, device=inputs.device)
        chosen.scatter_(1, order[:, :count], True)
        chosen = chosen[:, None, :]
        deleted = torch.where(chosen, background, flat).reshape_as(inputs)
        inserted = torch.where(chosen, flat, background).reshape_as(inputs)
        deletion.append(target_probability(model, deleted, targets))
        insertion.append(target_probability(model, inserted, targets))
    return np.stack(deletion, axis=1), np.stack(insertion, axis=1)


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """Area under each curve over the removed fraction 0..1 (trapezoid rule)."""
    return trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), axis=1)


def confidence_change(
    model: nn.Module, inputs: torch.Tensor, maps: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """Change of the target's probability when the image (in [0, 1]) is multiplied
    by its [0, 1] map (pytorch-grad-cam's ``CamMultImageConfidenceChange``): after - before."""
    metric = CamMultImageConfidenceChange()
    unit = (inputs + 1.0) / 2.0
    cams = maps.astype(np.float32)
    return metric(
        unit, cams, _probability_targets(targets), UnitRangeModel(probability_model(model))
    ).reshape(-1)


def binary_mask_confidence_change(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: np.ndarray,
    targets: np.ndarray,
    threshold: float,
) -> np.ndarray:
    """Change of the target's probability when the pixels (all channels) whose [0, 1] map
    is >= ``threshold`` are set to black: after - before. pytorch-grad-cam's
    ``CamMultImageConfidenceChange`` with the cam 1 - mask (the kept pixels), so both
    covering modes share one implementation."""
    keep = (maps < threshold).astype(np.float32)
    return confidence_change(model, inputs, keep, targets)


def _confidence_columns(change: np.ndarray, suffix: str) -> dict[str, np.ndarray]:
    return {
        f"confidence_change{suffix}": change.astype(np.float64),
        f"drop_in_confidence{suffix}": np.maximum(-change, 0).astype(np.float64),
        f"increase_in_confidence{suffix}": change > 0,
    }


def road_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: np.ndarray,
    targets: np.ndarray,
    percentiles: tuple[int, ...],
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """ROAD MoRF and LeRF (pytorch-grad-cam): change of the target's probability after
    removing the pixels above (MoRF) or below (LeRF) each percentile of the map by noisy
    linear imputation, averaged over ``percentiles``. Returns (morf, lerf)."""
    targets_ = _probability_targets(targets)
    cams = maps.astype(np.float32)
    net = probability_model(model)
    # pytorch-grad-cam's ROAD*Average classes forward the untouched batch again for every
    # percentile and direction; the same classes per percentile with return_diff=False and
    # one shared forward of the untouched batch give the same values in 2 x P + 1 passes.
    before = target_probability(net, inputs, targets)
    scores = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the imputer adds noise from torch's global generator
        with torch.no_grad():
            for name, road in (("morf", ROADMostRelevantFirst), ("lerf", ROADLeastRelevantFirst)):
                after = [
                    np.asarray(road(p)(inputs, cams, targets_, net, return_diff=False))
                    for p in percentiles
                ]
                scores[name] = (np.mean(after, axis=0).reshape(-1) - before).astype(np.float32)
    return scores["morf"], scores["lerf"]


def infidelity_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    raw_maps: np.ndarray,
    targets: np.ndarray,
    n_samples: int,
    sigma: float,
    seed: int,
) -> np.ndarray:
    """captum's infidelity of each raw map (broadcast over channels) under Gaussian input
    noise of standard deviation ``sigma`` (model-input units), on the target's probability."""

    def perturb(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(batch) * sigma
        return noise, batch - noise

    attributions = torch.as_tensor(raw_maps, dtype=inputs.dtype, device=inputs.device)
    attributions = attributions[:, None].expand_as(inputs).contiguous()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            values = infidelity(
                probability_model(model),
                perturb,
                inputs,
                attributions,
                target=torch.as_tensor(targets, device=inputs.device).long(),
                n_perturb_samples=n_samples,
                normalize=True,
            )
    return values.detach().cpu().numpy().astype(np.float64)


def explanation_function(
    model: nn.Module, method: str, params: dict, seed: int
) -> Callable[..., tuple[torch.Tensor]]:
    """A captum-style ``explanation_func(inputs, target=...)`` giving the method's maps,
    normalised as everywhere else (|map| / max), shaped (N, 1, H, W)."""

    def explain(inputs: torch.Tensor, target: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        if isinstance(inputs, tuple):  # captum passes perturbed inputs as a 1-tuple
            (inputs,) = inputs
        inputs = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            result = input_maps(model, inputs, target.reshape(-1).long(), method, params, seed)
        maps = normalise_maps(result)
        # a 1-tuple: captum iterates over the explanation as over a tuple of inputs
        return (torch.as_tensor(maps, dtype=inputs.dtype, device=inputs.device)[:, None],)

    return explain


def sensitivity_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: np.ndarray,
    method: str,
    params: dict,
    n_samples: int,
    radius: float,
    seed: int,
) -> np.ndarray:
    """captum's ``sensitivity_max``: the largest relative change of the (normalised) map
    over ``n_samples`` uniform input perturbations of L-inf radius ``radius``."""
    explain = explanation_function(model, method, params, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        values = sensitivity_max(
            explain,
            inputs,
            perturb_radius=radius,
            n_perturb_samples=n_samples,
            target=torch.as_tensor(targets, device=inputs.device).long(),
        )
    return values.detach().cpu().numpy().astype(np.float64)


def faithfulness(
    model: nn.Module,
    images: np.ndarray,
    raw_maps: np.ndarray,
    targets: np.ndarray,
    settings: FaithfulnessSettings,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """The map-based faithfulness metrics for uint8 ``images`` (N, H, W[, C]) and their
    stored maps (all but ``sensitivity_max``, which needs the method: ``sensitivity``).

    One row per image; the deletion and insertion curves are list columns. Infidelity is
    NaN when ``settings.infidelity_samples`` is 0.
    """
    if len(images) != len(raw_maps) or len(images) != len(targets):
        raise ValueError(
            f"{len(images)} images, {len(raw_maps)} maps and {len(targets)} targets: "
            "give one map and one target per image."
        )
    model = probability_model(model, settings.multi_label)
    maps = normalise_maps(raw_maps).astype(np.float32)
    frames = []
    for start in range(0, len(images), settings.batch_size):
        stop = start + settings.batch_size
        inputs = images_to_tensor(images[start:stop]).to(device)
        batch_maps, batch_raw, batch_targets = (
            maps[start:stop],
            raw_maps[start:stop],
            targets[start:stop],
        )
        deletion, insertion = deletion_insertion_curves(
            model, inputs, batch_maps, batch_targets, settings.steps
        )
        confidence = {}
        if "darken" in settings.covering:
            change = confidence_change(model, inputs, batch_maps, batch_targets)
            confidence.update(_confidence_columns(change, COVERING["darken"]))
        if "binary_mask" in settings.covering:
            change = binary_mask_confidence_change(
                model, inputs, batch_maps, batch_targets, settings.binary_threshold
            )
            confidence.update(_confidence_columns(change, COVERING["binary_mask"]))
        morf, lerf = road_scores(
            model, inputs, batch_maps, batch_targets, settings.road_percentiles, settings.seed
        )
        nan = np.full(len(inputs), np.nan)
        infid = (
            infidelity_scores(
                model,
                inputs,
                batch_raw,
                batch_targets,
                settings.infidelity_samples,
                settings.infidelity_sigma,
                settings.seed,
            )
            if settings.infidelity_samples > 0
            else nan
        )
        frames.append(
            pd.DataFrame(
                {
                    **confidence,
                    "deletion_auc": curve_auc(deletion),
                    "insertion_auc": curve_auc(insertion),
                    "road_morf": morf.astype(np.float64),
                    "road_lerf": lerf.astype(np.float64),
                    "road_combined": ((lerf - morf) / 2).astype(np.float64),
                    "infidelity": infid,
                    "deletion_curve": list(deletion.astype(np.float32)),
                    "insertion_curve": list(insertion.astype(np.float32)),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def sensitivity(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    method: str,
    method_params: dict,
    settings: FaithfulnessSettings,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """``sensitivity_scores`` for uint8 images in batches of ``settings.batch_size``."""
    values = [
        sensitivity_scores(
            model,
            images_to_tensor(images[start : start + settings.batch_size]).to(device),
            targets[start : start + settings.batch_size],
            method,
            method_params,
            settings.sensitivity_samples,
            settings.sensitivity_radius,
            settings.seed,
        )
        for start in range(0, len(images), settings.batch_size)
    ]
    return np.concatenate(values) if values else np.zeros(0)


def faithfulness_table(
    model: nn.Module,
    saliency: pd.DataFrame,
    images: dict[tuple[str, int], np.ndarray],
    settings: FaithfulnessSettings,
    method: str,
    method_params: dict,
    severities: list[int] | None = None,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Faithfulness of one model's maps (a saliency table) on the images they explain.

    ``images`` maps (perturbation, severity) to the uint8 images, indexed by
    ``image_index``; severity 0 is the clean set. ``severities`` (None: all) selects the
    severities to evaluate; clean maps (repeated under each perturbation in the saliency
    table) are evaluated once and reported under perturbation ``none``.
    """
    table = saliency
    if severities is not None:
        table = table[table["severity"].isin([0, *severities])]
    clean = table[table["severity"] == 0].drop_duplicates("image_index").assign(perturbation="none")
    table = pd.concat([clean, table[table["severity"] > 0]], ignore_index=True)
    stack = []
    for (perturbation, severity), group in table.groupby(["perturbation", "severity"], sort=False):
        key = ("none", 0) if severity == 0 else (perturbation, int(severity))
        if key not in images:
            raise KeyError(f"No images for perturbation {key[0]!r} at severity {key[1]}.")
        stack.append(images[key][group["image_index"].to_numpy()])
    all_images = np.concatenate(stack)
    table = pd.concat(
        [g for _, g in table.groupby(["perturbation", "severity"], sort=False)], ignore_index=True
    )
    targets = table["target"].to_numpy()
    scores = faithfulness(model, all_images, maps_from_table(table), targets, settings, device)
    scores["sensitivity_max"] = np.nan
    if settings.sensitivity_samples > 0:
        rows = np.ones(len(table), bool)
        if not settings.sensitivity_on_perturbed:
            rows = table["severity"].to_numpy() == 0
        scores.loc[rows, "sensitivity_max"] = sensitivity(
            model, all_images[rows], targets[rows], method, method_params, settings, device
        )
    keys = [*MAP_KEYS, *CONDITION_KEYS, "image_index"]
    keys += ["label", "target", "predicted"]
    return pd.concat([table[keys].reset_index(drop=True), scores], axis=1)
