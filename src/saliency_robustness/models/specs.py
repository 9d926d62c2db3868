"""What a name in ``train.architectures`` trains: its base and its effective train settings.

A name is an architecture (``registry.ARCHITECTURES``), a variant (``train.variants``: a base
architecture or combined model with some train settings overridden), a combined model
(``train.combined``: backbones whose pooled features feed one shared classification layer)
or an ensemble (``train.ensembles``: separately trained members averaged; resolved per
member). ``model_settings`` gives the settings every job that builds, trains or loads the
model uses; ``train_params`` the narrow, stable form a train job's params hold.

Standard library only: the Snakemake main process imports this to plan the jobs.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Collection, Mapping
from typing import Any

# Keys of ``train`` that describe the study, not one model's training: never part of a
# model's settings (weights_files is narrowed to the model's own architectures).
STUDY_KEYS = (
    "architectures",
    "ensembles",
    "variants",
    "combined",
    "weights_files",
    "checkpoint_every",
)
# Train keys added after results existed, with the defaults that keep today's results. A
# train job's params hold them only when they differ, so finished jobs keep their params.
OPTION_DEFAULTS: dict[str, Any] = {
    "freeze_backbone": False,
    "head": None,
    "grid": {},
    "augment": {"rotation": 0, "flip": False},
    "mask_background": False,
}
HEAD_DEFAULTS: dict[str, Any] = {"dropout": 0.5}
# What a variant may override (besides its base, "arch").
OVERRIDE_KEYS = ("epochs", "batch_size", "lr", "milestones", "gamma", "weights", *OPTION_DEFAULTS)
NAME_PATTERN = r"[a-z0-9_]+"  # the {arch} wildcard's constraint (common.smk)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# Hyper-parameters a grid (``train.grid``) may vary: key -> (check, what a value must be).
GRID_KEYS: dict[str, tuple[Any, str]] = {
    "lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "batch_size": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "gamma": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "milestones": (
        lambda v: isinstance(v, list) and all(_is_int(m) and m >= 1 for m in v),
        "a list of epochs (integers >= 1)",
    ),
    "freeze_backbone": (lambda v: isinstance(v, bool), "true or false"),
    "head.hidden": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "head.dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "augment.rotation": (lambda v: _is_number(v) and 0 <= v <= 180, "degrees in [0, 180]"),
    "augment.flip": (lambda v: isinstance(v, bool), "true or false"),
}


def _variants(train: Mapping) -> Mapping:
    return train.get("variants") or {}


def _combined(train: Mapping) -> Mapping:
    return train.get("combined") or {}


def base_of(name: str, train: Mapping) -> str:
    """The architecture or combined model that ``name`` builds: a variant's ``arch``, else
    ``name`` itself (or the ``arch`` that ``train_params`` recorded)."""
    if name in _variants(train):
        return _variants(train)[name]["arch"]
    return train.get("arch", name)


def backbones_of(name: str, train: Mapping) -> list[str] | None:
    """The backbone architectures of a combined model (or a variant of one), else None."""
    if "backbones" in train:  # train_params' narrow form
        return list(train["backbones"])
    members = _combined(train).get(base_of(name, train))
    return list(members) if members is not None else None


def _filled(key: str, value: Any) -> Any:
    """A setting's value with its nested defaults (a head's dropout, augmentation fields)."""
    if key == "head" and value is not None:
        return {"hidden": value.get("hidden"), **HEAD_DEFAULTS, **value}
    if key == "augment":
        return {**OPTION_DEFAULTS["augment"], **(value or {})}
    return value


def model_settings(name: str, train: Mapping) -> dict[str, Any]:
    """Effective train settings of the model ``name``: ``train`` (the validated config
    section, or a train job's ``train_params``) with a variant's overrides, every option
    filled with its default, plus ``arch`` (the base architecture or combined model),
    ``backbones`` (a combined model's architectures, else None) and ``weights_files``
    narrowed to the model's own architectures. A variant's value replaces the train value
    as a whole (a variant's ``head`` does not inherit ``train.head``'s fields)."""
    overrides = dict(_variants(train).get(name, {}))
    overrides.pop("arch", None)
    settings = {
        key: copy.deepcopy(value)
        for key, value in train.items()
        if key not in STUDY_KEYS and key not in ("arch", "backbones")
    }
    for key, default in OPTION_DEFAULTS.items():
        settings.setdefault(key, copy.deepcopy(default))
    settings.update(copy.deepcopy(overrides))
    settings = {key: _filled(key, value) for key, value in settings.items()}
    base = base_of(name, train)
    backbones = backbones_of(name, train)
    files = train.get("weights_files") or {}
    settings["arch"] = base
    settings["backbones"] = backbones
    settings["weights_files"] = {a: files[a] for a in (backbones or [base]) if files.get(a)}
    return settings


def train_params(name: str, train: Mapping) -> dict[str, Any]:
    """``model_settings`` in the form a train job's params hold: only this model's settings
    (adding another model, variant or weights file changes nothing here), an option only
    when it differs from its default, ``arch`` only for a variant and ``backbones`` only
    for a combined model. For a plain architecture with default options this is exactly
    the params of the train jobs before the options existed, so finished jobs stay
    finished. ``model_settings(name, train_params(name, train))`` equals
    ``model_settings(name, train)``."""
    settings = model_settings(name, train)
    params: dict[str, Any] = {}
    order = [k for k in train if k not in STUDY_KEYS and k not in ("arch", "backbones")]
    order += [k for k in settings if k not in order]
    for key in order:
        if key in ("arch", "backbones", "weights_files"):
            continue
        if key in OPTION_DEFAULTS and settings[key] == _filled(key, OPTION_DEFAULTS[key]):
            continue
        params[key] = settings[key]
    if settings["arch"] != name:
        params["arch"] = settings["arch"]
    if settings["backbones"] is not None:
        params["backbones"] = settings["backbones"]
    params["weights_files"] = settings["weights_files"]
    return params


def trained_names(train: Mapping) -> list[str]:
    """Names that train jobs produce: listed non-ensembles and every listed ensemble's
    members (an ensemble itself is never trained)."""
    ensembles = train.get("ensembles") or {}
    listed = train["architectures"]
    names = [a for a in listed if a not in ensembles]
    names += [m for a in listed if a in ensembles for m in ensembles[a]]
    return list(dict.fromkeys(names))


def grid_points(grid: Mapping[str, list]) -> list[dict[str, Any]]:
    """Every combination of a grid (``{key: [values]}``), the first key varying slowest;
    ``[{}]`` for an empty grid (one point: the settings as they are)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def _grid_errors(where: str, settings: Mapping) -> list[str]:
    grid = settings.get("grid") or {}
    errors = []
    for key, values in grid.items():
        if key not in GRID_KEYS:
            errors.append(f"{where}.grid: unknown key '{key}'. Grid keys: {', '.join(GRID_KEYS)}.")
            continue
        check, expected = GRID_KEYS[key]
        if not isinstance(values, list) or not values:
            errors.append(f"{where}.grid.{key}: give a non-empty list of values.")
            continue
        bad = [v for v in values if not check(v)]
        if bad:
            errors.append(
                f"{where}.grid.{key}: {bad[0]!r} is not valid; each value must be {expected}."
            )
        elif len({repr(v) for v in values}) < len(values):
            errors.append(f"{where}.grid.{key}: values repeat ({values}); list each once.")
        if key.startswith("head.") and settings.get("head") is None:
            errors.append(
                f"{where}.grid.{key}: varies the classifier head, but there is none; set "
                f"{where}.head (e.g. {{hidden: 256, dropout: 0.5}}) or drop '{key}'."
            )
    return errors


def _settings_errors(where: str, settings: Mapping) -> list[str]:
    """Cross-key problems of one model's effective settings (``where``: the config key)."""
    errors = _grid_errors(where, settings)
    frozen_values = [settings.get("freeze_backbone")]
    frozen_values += (settings.get("grid") or {}).get("freeze_backbone") or []
    if True in frozen_values and settings.get("weights") is None:
        errors.append(
            f"{where}.freeze_backbone: a frozen backbone with weights null keeps random "
            "features and trains only the head. Set weights: imagenet (ImageNet features) "
            "or freeze_backbone: false."
        )
    return errors


def spec_errors(train: Mapping, architectures: Collection[str]) -> list[str]:
    """Problems with variants (``train.variants``) and the per-model settings of every
    trained model; ``architectures``: the valid architecture names (the registry)."""
    errors = []
    ensembles = train.get("ensembles") or {}
    combined = _combined(train)
    bases = sorted({*architectures, *combined})
    for name, members in combined.items():
        if not re.fullmatch(NAME_PATTERN, name):
            errors.append(f"train.combined: name '{name}' must use only a-z, 0-9 and _.")
        for kind, names in (("an architecture", architectures), ("an ensemble", ensembles)):
            if name in names:
                errors.append(f"train.combined: '{name}' is {kind}; name it otherwise.")
        for member in members:
            if member not in architectures:
                errors.append(
                    f"train.combined.{name}: unknown backbone '{member}' (backbones are "
                    f"architectures). Valid: {', '.join(sorted(architectures))}."
                )
    for name, variant in _variants(train).items():
        where = f"train.variants.{name}"
        if not re.fullmatch(NAME_PATTERN, name):
            errors.append(f"train.variants: name '{name}' must use only a-z, 0-9 and _.")
        for kind, names in (
            ("an architecture", architectures),
            ("an ensemble", ensembles),
            ("a combined model", combined),
        ):
            if name in names:
                errors.append(f"train.variants: '{name}' is {kind}; name the variant otherwise.")
        if not isinstance(variant, Mapping):
            errors.append(f"{where}: give a mapping with arch and the overridden train keys.")
            continue
        base = variant.get("arch")
        if base is None:
            errors.append(f"{where}: arch is missing; name the base architecture.")
        elif base not in bases:
            errors.append(
                f"{where}.arch: unknown base '{base}' (a variant's base is an architecture or "
                f"a combined model, not a variant or ensemble). Valid: {', '.join(bases)}."
            )
        unknown = [key for key in variant if key != "arch" and key not in OVERRIDE_KEYS]
        for key in unknown:
            errors.append(
                f"{where}: '{key}' cannot be overridden. Keys a variant sets: arch, "
                f"{', '.join(OVERRIDE_KEYS)}."
            )
    shared = model_settings("__train__", train)  # what every plain architecture trains with
    errors += _settings_errors("train", shared)
    for name, variant in _variants(train).items():
        if isinstance(variant, Mapping) and variant.get("arch") in bases:
            where = f"train.variants.{name}"
            # a problem the variant inherits from train is reported once, under train
            inherited = _settings_errors(where, shared)
            errors += [
                error
                for error in _settings_errors(where, model_settings(name, train))
                if error not in inherited
            ]
    return errors
