"""Lookup shared by the architecture, perturbation and saliency-method registries."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def lookup(registry: dict[str, T], name: str, kind: str) -> T:
    """``registry[name]``, or a KeyError that lists the valid names."""
    if name not in registry:
        valid = ", ".join(sorted(registry))
        raise KeyError(f"Unknown {kind} '{name}'. Valid {kind}s: {valid}.")
    return registry[name]
