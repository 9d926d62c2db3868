"""Config checks that need the library's registries (run by the Snakefile before any job)."""

from __future__ import annotations

import re


def _n_channels(dataset: str, data_config: dict) -> int | None:
    """Channel count of a dataset, None where dataset_info does not know it (then the
    RGB-only perturbation check is skipped rather than failing here)."""
    from saliency_robustness.data import dataset_info

    try:
        return dataset_info(dataset, data_config).n_channels
    except Exception:
        return None


def config_errors(config: dict) -> list[str]:
    """Every problem with registry names and cross-key constraints, one message each."""
    from medmnist import INFO

    from saliency_robustness.attribution import METHODS, method_params
    from saliency_robustness.perturbations import PERTURBATIONS, perturb_config_errors

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
            from saliency_robustness.custom_data import spec_errors

            errors += spec_errors(name, custom[name], config["folds"]["k"])
    errors += architecture_errors(config["train"])
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
    k = config["folds"]["k"]
    for fold in config["folds"]["run"] or []:
        if fold >= k:
            errors.append(
                f"folds.run: fold {fold} does not exist with folds.k = {k} (use 0..{k - 1})."
            )
    return errors


def top_k_target_errors(config: dict) -> list[str]:
    """``attribute.top_k_targets`` must not exceed a multi-label dataset's label count."""
    from saliency_robustness.data import dataset_info
    from saliency_robustness.evaluation import is_multi_label

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
    """Architecture names, ensembles (``train.ensembles``) and ImageNet weight files."""
    from saliency_robustness.models import (
        ARCHITECTURES,
        imagenet_weights_path,
        missing_weights_message,
    )

    errors = []
    ensembles = train.get("ensembles") or {}
    valid = sorted({*ARCHITECTURES, *ensembles})
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
            if member not in ARCHITECTURES:
                errors.append(
                    f"train.ensembles.{name}: unknown member '{member}' (members are "
                    f"architectures, not ensembles). Valid: {', '.join(sorted(ARCHITECTURES))}."
                )
    for arch in train.get("weights_files") or {}:
        if arch not in ARCHITECTURES:
            errors.append(f"train.weights_files: unknown architecture '{arch}'.")
    if train.get("weights") == "imagenet":
        trained = [a for a in train["architectures"] if a not in ensembles]
        trained += [m for a in train["architectures"] if a in ensembles for m in ensembles[a]]
        for arch in dict.fromkeys(a for a in trained if a in ARCHITECTURES):
            try:
                path = imagenet_weights_path(arch, (train.get("weights_files") or {}).get(arch))
            except ValueError as error:
                errors.append(f"train.weights: {error}")
                continue
            if not path.is_file():
                errors.append(f"train.weights: {missing_weights_message(arch, path)}")
    return errors
