"""MedMNIST files: the official URL and MD5 of each flag and size, a mirror in its place,
and a resumable download verified by MD5 and a structural read before the file appears."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from saliency_robustness.datasets.info import SIZES, DataError, dataset_info
from saliency_robustness.datasets.medmnist_info import INFO
from saliency_robustness.datasets.npz import load_npz

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def source_url_and_md5(flag: str, size: int) -> tuple[str, str]:
    """Official URL and MD5 of a MedMNIST file (``medmnist.INFO``; sizes > 28 are MedMNIST+)."""
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


def local_medmnist_file(flag: str, size: int, mirror: str | None = None) -> Path | None:
    """The dataset's file where it already is on this machine: downloaded into the working
    directory, or in a local mirror folder; None when it must still be fetched."""
    candidates = [Path("resources") / "medmnist" / f"{flag}_{size}.npz"]
    if mirror and not _is_url(mirror):
        candidates.append(Path(mirror) / file_name(flag, size))
    return next((path for path in candidates if path.is_file()), None)
