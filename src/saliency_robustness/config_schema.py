"""Config validation against workflow/schemas/config.schema.yaml with short messages.

Snakemake's ``validate`` reports a violation together with the whole schema (about 700
lines for an unknown key). The Snakefile runs these checks first, so a user sees one line per
problem: where it is, what is wrong, and for unknown keys the nearest valid key. Snakemake's
``validate`` still runs afterwards to fill in the schema's defaults. Standard library,
jsonschema and pyyaml only: the Snakemake main process imports this.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping

import jsonschema
import yaml


def load_schema(path: str | os.PathLike) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _location(path) -> str:
    return ".".join(str(part) for part in path) or "config"


def _unknown_key_messages(error: jsonschema.ValidationError) -> list[str]:
    """One message per unexpected key, with the nearest valid key when one is close."""
    allowed = sorted(error.schema.get("properties", {}))
    instance = error.instance if isinstance(error.instance, Mapping) else {}
    messages = []
    for key in sorted(set(instance) - set(allowed), key=str):
        where = _location([*error.absolute_path, key])
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        messages.append(
            f"{where}: unknown key.{hint} Valid keys here: {', '.join(allowed)} "
            "(config/README.md documents each)."
        )
    return messages


def _alternatives_message(error: jsonschema.ValidationError) -> str:
    """A oneOf/anyOf violation (e.g. ``train.head``: null or {hidden, dropout}) as the reason
    inside the alternative whose type fits the value, rather than jsonschema's "is not valid
    under any of the given schemas"; without one, every alternative's type is listed."""
    inner = [sub for sub in error.context if sub.validator != "type"]
    if inner:
        deepest = max(inner, key=lambda sub: len(sub.absolute_path))
        return f"{_location(deepest.absolute_path)}: {deepest.message}."
    types = "; ".join(dict.fromkeys(sub.message for sub in error.context))
    return f"{_location(error.absolute_path)}: {types}." if types else f"{error.message}."


def schema_errors(config: Mapping, schema: Mapping) -> list[str]:
    """Every schema violation of ``config``, one short line each (empty when valid)."""
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    messages = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path))):
        if error.validator == "additionalProperties" and error.schema.get("properties"):
            messages += _unknown_key_messages(error)
        elif error.validator in ("oneOf", "anyOf") and error.context:
            messages.append(_alternatives_message(error))
        else:
            messages.append(f"{_location(error.absolute_path)}: {error.message}.")
    return list(dict.fromkeys(messages))
