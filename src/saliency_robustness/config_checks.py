"""Config checks that need the library's registries (run by the Snakefile before any job)."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping

from saliency_robustness.attribution.registry import METHODS, method_params
from saliency_robustness.datasets.custom import custom_dataset_errors, has_masks
from saliency_robustness.datasets.folds import rarest_class_count
from saliency_robustness.datasets.info import dataset_info, is_multi_label
from saliency_robustness.datasets.labels import uncertain_range_errors
from saliency_robustness.datasets.medmnist import local_medmnist_file
from saliency_robustness.datasets.medmnist_info import INFO
from saliency_robustness.models.registry import ARCHITECTURES, has_layer, top_level_layers
from saliency_robustness.models.specs import base_of, model_settings, spec_errors, trained_names
from saliency_robustness.models.weight_files import (
    imagenet_weights_path,
    missing_weights_message,
    replace_weights_hint,
)
from saliency_robustness.perturbations.registry import PERTURBATIONS, perturb_config_errors


def _n_channels(dataset: str, data_config: dict) -> int | None:
    """Channel count of a dataset, None where dataset_info does not know it (then the
    RGB-only perturbation check is skipped rather than failing here)."""
    try:
        return dataset_info(dataset, data_config).n_channels
    except Exception:
        return None


def config_errors(config: dict) -> list[str]:
    """Every problem with registry names and cross-key constraints, one message each."""
    errors = []

    def unknown(key: str, names: list[str], valid) -> None:
        for name in names:
            if name not in valid:
                errors.append(
                    f"{key}: unknown name '{name}'. Valid names: {', '.join(sorted(valid))}."
                )

    flags_2d = [flag for flag in INFO if not flag.endswith("3d")]
    custom = config["data"].get("custom") or {}
    unknown("data.datasets", config["data"]["datasets"], flags_2d + list(custom))
    for name in custom:
        if name in INFO:
            errors.append(f"data.custom: '{name}' is a MedMNIST name; give the dataset another.")
        elif name in config["data"]["datasets"]:  # unused entries are not checked (may be stale)
            errors += custom_dataset_errors(name, custom[name], config["folds"]["k"])
    errors += architecture_errors(config["train"])
    errors += mask_background_errors(config)
    errors += perturb_config_errors(
        config["perturb"],
        config["data"]["datasets"],
        config["train"]["architectures"],
        lambda dataset: _n_channels(dataset, config["data"]),
    )
    unknown("perturb.params", list(config["perturb"]["params"]), PERTURBATIONS)
    unknown("attribute.methods", config["attribute"]["methods"], METHODS)
    unknown("attribute.params", list(config["attribute"]["params"]), METHODS)
    for name, params in config["attribute"]["params"].items():
        if name in METHODS:
            try:
                method_params(name, params)
            except ValueError as error:
                errors.append(str(error))
    errors += top_k_target_errors(config)
    errors += faithfulness_severity_errors(config)
    errors += cam_layer_errors(config)
    errors += fold_count_errors(config)
    errors += uncertain_range_errors(config)
    errors += graded_hit_config_errors(config)
    k = config["folds"]["k"]
    for fold in config["folds"]["run"] or []:
        if fold >= k:
            errors.append(
                f"folds.run: fold {fold} does not exist with folds.k = {k} (use 0..{k - 1})."
            )
    return errors


def faithfulness_severity_errors(config: dict) -> list[str]:
    """Faithfulness severities must be perturbed at all, else its tables hold clean images only."""
    analysis = config.get("analysis") or {}
    wanted = (analysis.get("faithfulness") or {}).get("severities")
    if "faithfulness" not in (analysis.get("run") or []) or wanted is None:
        return []
    perturbed = config["perturb"]["severities"]
    missing = [s for s in wanted if s not in perturbed]
    if not missing:
        return []
    return [
        f"analysis.faithfulness.severities: {missing} not in perturb.severities {perturbed}, so "
        "faithfulness would score those severities' images that are never made. List "
        "severities from perturb.severities there (or null for all of them), or add "
        f"{missing} to perturb.severities."
    ]


def cam_layer_errors(config: dict) -> list[str]:
    """A configured ``cam_layer`` must exist in every trained architecture (else attribution
    fails after training). The layer names come from the registry's snapshot
    (``models.registry.layer_names``): no model is built, torch is not imported."""
    ensembles = config["train"].get("ensembles") or {}
    # a variant uses its base architecture's layers
    bases = [base_of(a, config["train"]) for a in config["train"]["architectures"]]
    archs = list(dict.fromkeys(a for a in bases if a in ARCHITECTURES))
    errors = []
    for method, params in (config["attribute"].get("params") or {}).items():
        layer = (params or {}).get("cam_layer")
        spec = METHODS.get(method)
        if spec is None or not spec.uses_cam_layer or layer in (None, "auto"):
            continue
        if method not in config["attribute"]["methods"]:
            continue
        combined = [a for a in bases if a in (config["train"].get("combined") or {})]
        if combined:
            errors.append(
                f"attribute.params.{method}.cam_layer: cannot be set with the combined model "
                f"'{combined[0]}' (train.combined), whose CAM maps average each backbone's "
                "default layer; remove cam_layer."
            )
        if archs == [] and ensembles:
            continue
        for arch in archs:
            if not has_layer(arch, config["data"]["size"], layer):
                top = ", ".join(top_level_layers(arch, config["data"]["size"]))
                errors.append(
                    f"attribute.params.{method}.cam_layer: '{layer}' is not a layer of {arch} "
                    f"(its top-level layers: {top}). Use a dotted module path such as "
                    "'layer4' or 'layer4.1', or remove cam_layer to use each architecture's "
                    "default."
                )
    return errors


def fold_count_errors(config: dict) -> list[str]:
    """``folds.k`` must not exceed the rarest class of a MedMNIST dataset whose file is
    already here (downloaded, or in a local mirror folder); otherwise the folds job checks."""
    k = config["folds"]["k"]
    custom = config["data"].get("custom") or {}
    errors = []
    for name in config["data"]["datasets"]:
        if name in custom:
            continue  # datasets.custom.custom_dataset_errors counts the CSV's classes
        path = local_medmnist_file(name, config["data"]["size"], config.get("mirror"))
        if path is None:
            continue
        try:
            smallest = rarest_class_count(path)
        except Exception:  # unreadable files are the download rule's to report
            continue
        if smallest < k:
            errors.append(
                f"folds.k: {k} stratified folds need at least {k} images of every class, but "
                f"the rarest class of {name} (train + val) has {smallest}. Set folds.k between "
                f"2 and {smallest}."
            )
    return errors


def top_k_target_errors(config: dict) -> list[str]:
    """``attribute.top_k_targets`` must not exceed a multi-label dataset's label count."""
    k = config["attribute"].get("top_k_targets", 1)
    errors = []
    for name in config["data"]["datasets"]:
        try:
            info = dataset_info(name, config["data"])
        except Exception:  # unknown names and bad custom entries are reported elsewhere
            continue
        if is_multi_label(info.task) and k > info.n_classes:
            errors.append(
                f"attribute.top_k_targets: {k} targets per image, but {name} has only "
                f"{info.n_classes} labels; set it between 1 and {info.n_classes}."
            )
    return errors


def architecture_errors(train: dict) -> list[str]:
    """Architecture names, variants (``train.variants``), ensembles (``train.ensembles``),
    per-model train options (``models.specs.spec_errors``) and ImageNet weight files."""
    errors = []
    ensembles = train.get("ensembles") or {}
    variants = train.get("variants") or {}
    combined = train.get("combined") or {}
    models = sorted({*ARCHITECTURES, *variants, *combined})  # what trains: members too
    valid = sorted({*models, *ensembles})
    for name in train["architectures"]:
        if name not in valid:
            errors.append(
                f"train.architectures: unknown name '{name}'. Valid names: {', '.join(valid)}."
            )
    for name, members in ensembles.items():
        if name in ARCHITECTURES:
            errors.append(f"train.ensembles: '{name}' is an architecture; name it otherwise.")
        if not re.fullmatch(r"[a-z0-9_]+", name):
            errors.append(f"train.ensembles: name '{name}' must use only a-z, 0-9 and _.")
        for member in members:
            if member not in models:
                errors.append(
                    f"train.ensembles.{name}: unknown member '{member}' (members are "
                    "architectures, variants or combined models, not ensembles). Valid: "
                    f"{', '.join(models)}."
                )
    for arch in train.get("weights_files") or {}:
        if arch not in ARCHITECTURES:
            errors.append(f"train.weights_files: unknown architecture '{arch}'.")
    errors += spec_errors(train, ARCHITECTURES)
    # ImageNet files of every trained model whose (possibly overridden) weights are imagenet
    pretrained = {}
    for name in trained_names(train):
        if name not in models:
            continue
        settings = model_settings(name, train)
        if settings.get("weights") == "imagenet":  # raw train dicts may lack it
            key = "train.weights" if name not in variants else f"train.variants.{name}.weights"
            for arch in settings["backbones"] or [settings["arch"]]:
                if arch in ARCHITECTURES:
                    pretrained.setdefault(arch, key)
    for arch, weights_key in pretrained.items():
        try:
            path = imagenet_weights_path(arch, (train.get("weights_files") or {}).get(arch))
        except ValueError as error:
            errors.append(f"{weights_key}: {error}")
            continue
        key = (
            f"train.weights_files.{arch}"
            if arch in (train.get("weights_files") or {})
            else weights_key
        )
        if not path.is_file():
            errors.append(f"{key}: {missing_weights_message(arch, path)}")
        elif problem := weights_file_problem(path):
            errors.append(f"{key}: {path} {problem}. {replace_weights_hint(arch, path)}")
    return errors


def mask_background_errors(config: dict) -> list[str]:
    """``mask_background`` (train or a variant) needs every dataset of the study to have
    masks (the synthetic set, folder datasets with a mask column)."""
    train = config["train"]
    variants = train.get("variants") or {}
    keys = []
    for name in trained_names(train):
        if name in variants and "mask_background" in variants[name]:
            key = f"train.variants.{name}.mask_background"
        else:
            key = "train.mask_background"
        if model_settings(name, train)["mask_background"] and key not in keys:
            keys.append(key)
    custom = config["data"].get("custom") or {}
    errors = []
    for dataset in config["data"]["datasets"]:
        try:
            masked = dataset in custom and has_masks(custom[dataset])
        except Exception:  # an unreadable CSV is reported by datasets.custom.custom_dataset_errors
            continue
        if not masked:
            errors += [
                f"{key}: dataset '{dataset}' has no masks, so its background cannot be "
                "removed (masks come with the synthetic set and folder datasets whose CSV "
                "has a mask column). Set it to false or study only datasets with masks."
                for key in keys
            ]
    return errors


def weights_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a PyTorch weights file, or None. Reads the file's zip structure
    and CRCs (torch.save's format) without importing torch or unpickling anything."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            return f"is a damaged or truncated zip archive ({error})"
        if damaged is not None:
            return f"is damaged: its member {damaged} fails the CRC check"
        if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            return "is a zip archive but not a PyTorch file (no data.pkl inside)"
        return None
    if head[:1] == b"\x80":  # torch.save's legacy (pickle) format; the job reads it safely
        return None
    return "is not a PyTorch weights file (neither torch.save's zip nor its legacy format)"


def graded_hit_config_errors(config: Mapping) -> list[str]:
    """Config-time check: a synthetic set with ``ring_width`` > 0 has mask level 2, which
    ``localisation.graded_hit_scores`` must score (own-data levels are known only once the
    masks are read: the localisation job names a level without a score)."""
    # absent only where the schema's defaults were not applied; the default scores level 2
    scores = (config.get("localisation") or {}).get("graded_hit_scores")
    data = config.get("data") or {}
    custom = data.get("custom") or {}
    if scores is None or len(scores) >= 2:
        return []
    return [
        f"localisation.graded_hit_scores lists {len(scores)} score(s) but "
        f"data.custom.{name}.ring_width makes mask level 2 (the ring); list a score for level 2 "
        "as well, e.g. [3, 2]."
        for name in data.get("datasets") or []
        if (custom.get(name) or {}).get("source") == "synthetic"
        and ((custom.get(name) or {}).get("ring_width") or 0) > 0
    ]
