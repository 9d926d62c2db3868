"""What a dataset is, without reading its images: task, label names, channel count and
split sizes (``DatasetInfo``), from MedMNIST's table or a ``data.custom`` entry. Standard
library only, for the Snakemake process and every job."""

from __future__ import annotations

from dataclasses import dataclass

from saliency_robustness.datasets.medmnist_info import INFO

SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)


class DataError(RuntimeError):
    """A dataset file is missing, corrupt, or does not match its checksum."""


def is_multi_label(task: str) -> bool:
    """Whether a dataset task (``DatasetInfo.task``) has independent 0/1 labels."""
    return task.startswith("multi-label")


@dataclass(frozen=True)
class DatasetInfo:
    """What the workflow needs to know about one MedMNIST flag."""

    flag: str
    task: str
    n_channels: int
    labels: dict[str, str]

    @property
    def n_classes(self) -> int:
        return len(self.labels)


def dataset_info(flag: str, data_config: dict | None = None) -> DatasetInfo:
    """Metadata of a dataset: a ``data.custom`` entry of ``data_config`` (the config's ``data``
    section) when ``flag`` names one, else the MedMNIST flag from ``medmnist.INFO``; unknown
    names list the valid ones."""
    custom = (data_config or {}).get("custom") or {}
    if flag in custom:
        return custom_info(flag, custom[flag])
    if flag not in INFO:
        valid = ", ".join(sorted(k for k in INFO if not k.endswith("3d")))
        extra = f" Custom datasets (data.custom): {', '.join(custom)}." if custom else ""
        raise DataError(f"Unknown MedMNIST dataset '{flag}'. Valid 2D datasets: {valid}.{extra}")
    info = INFO[flag]
    return DatasetInfo(
        flag=flag, task=info["task"], n_channels=info["n_channels"], labels=info["label"]
    )


# Custom datasets (data.custom; built by datasets/custom.py). The spec helpers live here, free of
# image libraries, because every stage's script needs dataset_info and nothing more.
SYNTHETIC_KINDS = ("blob", "ring", "bar")

CUSTOM_DEFAULTS: dict = {
    "task": "multi-class",
    "channels": 1,
    "test_fraction": 0.2,
    "splits": {"train": 600, "val": 150, "test": 150},
}


def resolve_spec(spec: dict) -> dict:
    """A ``data.custom`` entry with defaults filled in."""
    out = {**CUSTOM_DEFAULTS, **spec}
    out["splits"] = {**CUSTOM_DEFAULTS["splits"], **(spec.get("splits") or {})}
    return out


def synthetic_labels(task: str) -> dict[str, str]:
    """Label names (``medmnist.INFO`` form) of the synthetic set: presence for binary-class,
    the lesion kinds otherwise."""
    if task == "binary-class":
        return {"0": "no lesion", "1": "lesion"}
    return {str(i): kind for i, kind in enumerate(SYNTHETIC_KINDS)}


def label_names(spec: dict) -> list[str]:
    """Class (or label) names of a custom dataset, in label-index order."""
    spec = resolve_spec(spec)
    if spec["source"] == "synthetic":
        return list(synthetic_labels(spec["task"]).values())
    return [str(name) for name in spec.get("labels") or []]


def custom_info(name: str, spec: dict) -> DatasetInfo:
    """``DatasetInfo`` (task, channels, labels) of a ``data.custom`` entry."""
    spec = resolve_spec(spec)
    labels = {str(i): label for i, label in enumerate(label_names(spec))}
    return DatasetInfo(flag=name, task=spec["task"], n_channels=spec["channels"], labels=labels)
