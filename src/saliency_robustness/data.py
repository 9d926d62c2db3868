"""MedMNIST download with MD5 verification, loading, and stratified k folds."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)
_CHUNK = 1 << 20


class DataError(RuntimeError):
    """A dataset file is missing, corrupt, or does not match its checksum."""


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
    from saliency_robustness.medmnist_info import INFO

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


# Custom datasets (data.custom; built by custom_data.py). The spec helpers live here, free of
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


def source_url_and_md5(flag: str, size: int) -> tuple[str, str]:
    """Official URL and MD5 of a MedMNIST file (``medmnist.INFO``; sizes > 28 are MedMNIST+)."""
    from saliency_robustness.medmnist_info import INFO

    dataset_info(flag)  # clear error for unknown flags
    if size not in SIZES:
        raise DataError(f"Unknown MedMNIST size {size}. Valid sizes: {SIZES}.")
    suffix = "" if size == 28 else f"_{size}"
    info = INFO[flag]
    return info[f"url{suffix}"], info[f"MD5{suffix}"]


def file_name(flag: str, size: int) -> str:
    """File name MedMNIST uses for a flag and size, e.g. ``breastmnist_64.npz``."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def resolve_source(url: str, flag: str, size: int, mirror: str | None) -> str:
    """Where to fetch from: the official URL, or the same file name under ``mirror``."""
    if not mirror:
        return url
    name = file_name(flag, size)
    if urllib.parse.urlparse(mirror).scheme in ("http", "https", "file"):
        return mirror.rstrip("/") + "/" + name
    return str(Path(mirror) / name)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https", "file")


class _Progress:
    """Progress lines in the rule's log every 10% (or every 64 MiB without a known size)."""

    def __init__(self, source: str, total: int, done: int) -> None:
        self.source, self.total, self.done = source, total, done
        self.next_report = done

    def add(self, n: int) -> None:
        self.done += n
        if self.done < self.next_report:
            return
        if self.total:
            log.info(
                "downloaded %d / %d bytes (%.0f%%)",
                self.done,
                self.total,
                100 * self.done / self.total,
            )
            self.next_report = self.done + max(self.total // 10, 1)
        else:
            log.info("downloaded %d bytes", self.done)
            self.next_report = self.done + (64 << 20)


def _fetch_once(source: str, part: Path) -> bool:
    """One attempt to complete ``part`` from ``source``; True when the transfer finished.

    An HTTP(S) attempt asks for the missing tail only (``Range``) when ``part`` already holds
    bytes; a server that answers with the whole file (200) restarts it from byte 0.
    """
    have = part.stat().st_size if part.exists() else 0
    if not _is_url(source):
        if not Path(source).is_file():
            raise DataError(
                f"Mirror file {source} does not exist. Put the MedMNIST file there "
                "or fix the 'mirror' setting in the config."
            )
        stream, total, have = open(source, "rb"), Path(source).stat().st_size, 0  # noqa: SIM115
    else:
        request = urllib.request.Request(source)
        if have and urllib.parse.urlparse(source).scheme != "file":
            request.add_header("Range", f"bytes={have}-")
        try:
            stream = urllib.request.urlopen(request, timeout=60)  # noqa: S310 (scheme checked)
        except urllib.error.HTTPError as error:
            if error.code != 416:  # 416: the part is not a prefix of the file any more
                raise
            log.warning("server refused to resume %s (HTTP 416); restarting", source)
            part.unlink()
            return False
        length = int(stream.headers.get("Content-Length") or 0)
        if getattr(stream, "status", 200) == 206:
            log.info("resuming %s at byte %d", source, have)
            total = have + length if length else 0
        else:
            if have:
                log.info("server sent the whole file; restarting %s from byte 0", source)
            have, total = 0, length
    progress = _Progress(source, total, have)
    with stream, open(part, "ab" if have else "wb") as out:
        while chunk := stream.read(_CHUNK):
            out.write(chunk)
            progress.add(len(chunk))
    if total and progress.done != total:
        log.warning("transfer of %s stopped at %d of %d bytes", source, progress.done, total)
        return False
    return True


def _fetch(source: str, part: Path, attempts: int) -> int:
    """Complete ``part`` from ``source`` in up to ``attempts`` tries; returns its size."""
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            if _fetch_once(source, part):
                return part.stat().st_size
            last_error = None
        except (OSError, http.client.HTTPException) as error:  # dropped connection, timeout
            if isinstance(error, urllib.error.HTTPError) and error.code == 404:
                raise DataError(
                    f"Could not fetch {source}: {error}. Check the network or set 'mirror' in "
                    "the config to a folder or URL that holds the MedMNIST files."
                ) from error
            last_error = error
        log.warning("attempt %d/%d of %s did not finish", attempt, attempts, source)
    have = part.stat().st_size if part.exists() else 0
    reason = f": {last_error}" if last_error else ""
    if have == 0:  # never connected, or connected and got nothing: there is nothing to resume
        part.unlink(missing_ok=True)
        raise DataError(
            f"Could not fetch {source} in {attempts} attempts{reason}; nothing was downloaded. "
            "Check that the URL is right and its server is running, check the network, or set "
            "'mirror' in the config to a folder or URL that holds the MedMNIST files."
        )
    raise DataError(
        f"Could not fetch {source}; the transfer was interrupted or truncated {attempts} times "
        f"({have} bytes kept in {part}){reason}. Run again to resume, check the network, or set "
        "'mirror' in the config to a folder or URL that holds the MedMNIST files."
    )


def download(
    flag: str,
    size: int,
    target: str | os.PathLike,
    mirror: str | None = None,
    attempts: int = 3,
) -> Path:
    """Fetch one MedMNIST file, verify its MD5 and npz structure, then move it to ``target``.

    The bytes stream into ``<target>.part``. An interrupted transfer keeps the part file and
    is resumed (HTTP Range) by the next attempt or the next run; a server without Range
    support restarts it. A part whose MD5 does not match is deleted, so the next run
    starts clean. ``target`` appears only when complete and verified.
    """
    url, expected_md5 = source_url_and_md5(flag, size)
    source = resolve_source(url, flag, size, mirror)
    target = Path(target)
    part = target.with_name(target.name + ".part")
    log.info("fetching %s (size %d) from %s", flag, size, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    n_bytes = _fetch(source, part, attempts)
    actual_md5 = _md5(part)
    try:
        if actual_md5 != expected_md5:
            raise DataError(
                f"MD5 mismatch for {file_name(flag, size)} from {source}: expected "
                f"{expected_md5}, got {actual_md5} ({n_bytes} bytes). The file is corrupt or "
                "truncated; replace it at the source (mirror) and run again."
            )
        load_npz(part, flag)  # structural check before the file becomes visible
    except DataError:
        part.unlink(missing_ok=True)  # a bad part must not be resumed
        raise
    # Same folder, so the rename is atomic (as tables.atomic_path does for other outputs).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(part, 0o666 & ~umask)
    os.replace(part, target)
    log.info("verified %s (%d bytes, MD5 %s)", target, n_bytes, actual_md5)
    return target


def load_npz(path: str | os.PathLike, flag: str = "") -> dict[str, np.ndarray]:
    """Load a MedMNIST npz without pickle; checks the expected keys and dtypes."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise DataError(
            f"{path} is not a readable MedMNIST npz file ({error}). Delete it and download again."
        ) from error
    for split in SPLITS:
        for kind in ("images", "labels"):
            key = f"{split}_{kind}"
            if key not in arrays:
                raise DataError(
                    f"{path} lacks the array '{key}'; it is not a MedMNIST {flag} file."
                )
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DataError(f"{path}: {split} images and labels differ in length.")
        if arrays[f"{split}_images"].dtype != np.uint8:
            raise DataError(f"{path}: {split}_images must be uint8.")
    return arrays


def local_medmnist_file(flag: str, size: int, mirror: str | None = None) -> Path | None:
    """The dataset's file where it already is on this machine: downloaded into the working
    directory, or in a local mirror folder; None when it must still be fetched."""
    candidates = [Path("resources") / "medmnist" / f"{flag}_{size}.npz"]
    if mirror and not _is_url(mirror):
        candidates.append(Path(mirror) / file_name(flag, size))
    return next((path for path in candidates if path.is_file()), None)


def _fold_strata(labels: np.ndarray) -> np.ndarray:
    """The class each image is stratified by: its label, or a multi-label set's first label
    (an uncertain first label, -1 in own data, counts with the absent ones)."""
    labels = np.asarray(labels)
    strata = labels[:, 0] if labels.ndim == 2 else labels
    return np.maximum(strata.astype(int), 0)


def rarest_class_count(path: str | os.PathLike) -> int:
    """Images of the rarest stratification class over train + val (reads only the labels)."""
    with np.load(path, allow_pickle=False) as npz:
        labels = np.concatenate([npz["train_labels"], npz["val_labels"]])
    counts = np.bincount(_fold_strata(labels))
    return int(counts[counts > 0].min())


def make_folds(labels: np.ndarray, sources: np.ndarray, k: int, seed: int) -> pd.DataFrame:
    """Stratified k-fold assignment over the pooled train+val images.

    Returns one row per pooled image: ``pool_index``, ``source_split`` (train/val),
    ``source_index`` (index within that split), ``label``, and ``fold`` (0..k-1, the fold
    in which the image is used for validation).
    """
    from sklearn.model_selection import StratifiedKFold

    strata = _fold_strata(labels)  # multi-label: stratified on the first label column only
    counts = np.bincount(strata)
    smallest = counts[counts > 0].min()
    if k < 2 or smallest < k:
        raise DataError(
            f"Cannot make {k} stratified folds: the rarest class has {smallest} images. "
            "Set folds.k between 2 and that number."
        )
    fold = np.empty(len(strata), dtype=np.int16)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold_id, (_, val_idx) in enumerate(splitter.split(np.zeros(len(strata)), strata)):
        fold[val_idx] = fold_id
    source_index = np.concatenate(
        [np.arange((sources == s).sum()) for s in ("train", "val")]
    ).astype(np.int32)
    return pd.DataFrame(
        {
            "pool_index": np.arange(len(strata), dtype=np.int32),
            "source_split": sources,
            "source_index": source_index,
            "label": strata.astype(np.int16),
            "fold": fold,
        }
    )


def folds_from_column(
    fold_column: np.ndarray, labels: np.ndarray, sources: np.ndarray, k: int
) -> pd.DataFrame:
    """The fold table (as ``make_folds``) from a dataset's own fold column (custom CSV)."""
    fold = np.asarray(fold_column).astype(np.int16)
    used = sorted(set(fold.tolist()))
    if used != list(range(k)):
        raise DataError(
            f"The dataset's fold column uses folds {used}, but folds.k = {k} needs each of "
            f"0..{k - 1}; set folds.k to match the CSV's fold column."
        )
    labels = np.asarray(labels)
    source_index = np.concatenate(
        [np.arange((sources == s).sum()) for s in ("train", "val")]
    ).astype(np.int32)
    return pd.DataFrame(
        {
            "pool_index": np.arange(len(fold), dtype=np.int32),
            "source_split": sources,
            "source_index": source_index,
            "label": labels[:, 0].astype(np.int16),
            "fold": fold,
        }
    )


def pooled_train_val(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels and source-split names of train+val concatenated (train first)."""
    images = np.concatenate([arrays["train_images"], arrays["val_images"]])
    labels = np.concatenate([arrays["train_labels"], arrays["val_labels"]])
    sources = np.array(
        ["train"] * len(arrays["train_images"]) + ["val"] * len(arrays["val_images"])
    )
    return images, labels, sources


def fold_split(
    arrays: dict[str, np.ndarray], folds: pd.DataFrame, fold: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Training and validation arrays for one fold, plus the held-out official test split."""
    images, labels, _ = pooled_train_val(arrays)
    if len(folds) != len(images):
        raise DataError(
            f"Fold table has {len(folds)} rows but the dataset has {len(images)} train+val "
            "images; rerun the folds rule (snakemake --forcerun folds)."
        )
    is_val = folds["fold"].to_numpy() == fold
    if not is_val.any() or is_val.all():
        raise DataError(
            f"Fold {fold} is empty or holds every image; check folds.k and folds.run in the config."
        )
    return {
        "train": (images[~is_val], labels[~is_val]),
        "val": (images[is_val], labels[is_val]),
        "test": (arrays["test_images"], arrays["test_labels"]),
    }


def folds_in_paths(paths: Sequence[str]) -> list[int]:
    """The folds of per-fold files (``.../fold<k>/...``), ascending and without repeats: an
    attribution job's folds are those of its model files, so they need no params."""
    folds = set()
    for path in paths:
        match = re.search(r"(?:^|/)fold(\d+)/", str(path))
        if match is None:
            raise ValueError(f"{path} is not a per-fold file (no fold<k>/ folder in its path).")
        folds.add(int(match[1]))
    return sorted(folds)


def load_perturbed(paths: list[str]) -> dict[str, tuple[list[int], np.ndarray]]:
    """Perturbed test sets written by the perturb stage, keyed by perturbation name.

    Each value is (severities, images of shape (S, N, H, W[, C])).
    """
    out = {}
    for path in paths:
        with np.load(path, allow_pickle=False) as npz:
            out[Path(path).stem] = (npz["severities"].tolist(), npz["images"])
    return out
