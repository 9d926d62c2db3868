"""Where the tests find real MedMNIST files: the way a user would (README "Tests")."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

# Real files the tests need (28 px), found the way a user would (README "Tests").
TEST_FLAGS = ("breastmnist", "pneumoniamnist")
DATA_ENV = "SALIENCY_ROBUSTNESS_TEST_DATA"  # a folder or http(s) URL holding the files
MEDMNIST_CACHE = Path.home() / ".medmnist"  # the medmnist package's default root
DOWNLOAD_CACHE = Path.home() / ".cache" / "saliency-robustness" / "medmnist"


def _verified(folder: Path) -> bool:
    """Every test file is in ``folder`` with the MD5 of the official release."""
    import hashlib

    from saliency_robustness.datasets.medmnist import file_name, source_url_and_md5

    for flag in TEST_FLAGS:
        path = folder / file_name(flag, 28)
        if not path.is_file():
            return False
        if hashlib.md5(path.read_bytes()).hexdigest() != source_url_and_md5(flag, 28)[1]:
            return False
    return True


def _fetch_all(target: Path, mirror: str | None) -> Path:
    """The workflow's own download (MD5-verified, atomic) of every test file into ``target``;
    ``mirror`` None is the official MedMNIST host."""
    from saliency_robustness.datasets.medmnist import download, file_name

    if not _verified(target):
        for flag in TEST_FLAGS:
            download(flag, 28, target / file_name(flag, 28), mirror=mirror)
    return target


def locate_medmnist(
    env_value: str | None,
    shared: Path,
    medmnist_cache: Path,
    download_cache: Path,
    official: str | None = None,
) -> tuple[Path, str]:
    """The folder of real MedMNIST test files and where it came from, first match wins:
    ``$SALIENCY_ROBUSTNESS_TEST_DATA`` (a folder, or a URL fetched into ``download_cache``),
    ``../shared/data/medmnist``, the medmnist package's cache folder, then the official URL
    through the workflow's own download code into ``download_cache``. ``official`` replaces
    the official host (tests of this order use a loopback server)."""
    if env_value:
        if env_value.startswith(("http://", "https://", "file://")):
            return _fetch_all(download_cache, env_value), f"{DATA_ENV} (URL)"
        folder = Path(env_value).expanduser()
        if not _verified(folder):
            raise FileNotFoundError(
                f"{DATA_ENV}={env_value} does not hold verified {', '.join(TEST_FLAGS)} files "
                "(28 px, official MD5); point it at a folder or URL that does, or unset it."
            )
        return folder, DATA_ENV
    for folder, name in ((shared, "../shared"), (medmnist_cache, "medmnist cache")):
        if _verified(folder):
            return folder, name
    return _fetch_all(download_cache, official), "official URL"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


def serve_folder(folder: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    """Serve ``folder`` on 127.0.0.1 (free port); returns (base URL, server)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server
