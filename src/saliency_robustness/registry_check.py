"""Config checks that need the library's registries (run by the Snakefile before any job)."""

from __future__ import annotations


def config_errors(config: dict) -> list[str]:
    """Every problem with registry names and cross-key constraints, one message each."""
    from medmnist import INFO

    from saliency_robustness.attribution import METHODS, method_params
    from saliency_robustness.models import ARCHITECTURES
    from saliency_robustness.perturbations import PERTURBATIONS

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
    unknown("train.architectures", config["train"]["architectures"], ARCHITECTURES)
    unknown("perturb.perturbations", config["perturb"]["perturbations"], PERTURBATIONS)
    unknown("perturb.params", list(config["perturb"]["params"]), PERTURBATIONS)
    unknown("attribute.methods", config["attribute"]["methods"], METHODS)
    unknown("attribute.params", list(config["attribute"]["params"]), METHODS)
    for name, params in config["attribute"]["params"].items():
        if name in METHODS:
            try:
                method_params(name, params)
            except ValueError as error:
                errors.append(str(error))
    k = config["folds"]["k"]
    for fold in config["folds"]["run"] or []:
        if fold >= k:
            errors.append(
                f"folds.run: fold {fold} does not exist with folds.k = {k} (use 0..{k - 1})."
            )
    return errors
