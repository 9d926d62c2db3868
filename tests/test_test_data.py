"""Tests find real MedMNIST files the way a user would, in a fixed order (README "Tests"):
$SALIENCY_ROBUSTNESS_TEST_DATA, ../shared, the medmnist cache, the official URL. Proven here
with loopback servers only; the "official host" is a loopback server too."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_sources import TEST_FLAGS, locate_medmnist, serve_folder


def _copy(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for flag in TEST_FLAGS:
        shutil.copy(source / f"{flag}.npz", target / f"{flag}.npz")
    return target


@pytest.fixture
def places(tmp_path, shared_medmnist):
    return {
        "shared": _copy(shared_medmnist, tmp_path / "shared"),
        "cache": _copy(shared_medmnist, tmp_path / "medmnist_cache"),
        "downloads": tmp_path / "downloads",
        "missing": tmp_path / "missing",
    }


def test_environment_variable_folder_comes_first(places):
    folder, source = locate_medmnist(
        str(places["cache"]), places["shared"], places["missing"], places["downloads"]
    )
    assert (folder, source) == (places["cache"], "SALIENCY_ROBUSTNESS_TEST_DATA")


def test_environment_variable_url_is_fetched_and_verified(places):
    url, server = serve_folder(places["shared"])
    try:
        folder, source = locate_medmnist(url, places["missing"], places["missing"],
                                         places["downloads"])  # fmt: skip
    finally:
        server.shutdown()
    assert folder == places["downloads"] and source.endswith("(URL)")
    assert sorted(p.name for p in folder.iterdir()) == [f"{f}.npz" for f in TEST_FLAGS]


def test_shared_then_medmnist_cache(places):
    assert locate_medmnist(None, places["shared"], places["cache"], places["downloads"])[1] == (
        "../shared"
    )
    assert locate_medmnist(None, places["missing"], places["cache"], places["downloads"]) == (
        places["cache"],
        "medmnist cache",
    )


def test_a_corrupt_cached_file_is_skipped_for_the_official_url(places):
    (places["cache"] / "breastmnist.npz").write_bytes(b"truncated")
    official, server = serve_folder(places["shared"])  # stands in for the MedMNIST host
    try:
        folder, source = locate_medmnist(
            None, places["missing"], places["cache"], places["downloads"], official=official
        )
    finally:
        server.shutdown()
    assert (folder, source) == (places["downloads"], "official URL")


def test_a_wrong_environment_folder_names_the_fix(places):
    with pytest.raises(FileNotFoundError, match="SALIENCY_ROBUSTNESS_TEST_DATA"):
        locate_medmnist(str(places["missing"]), places["shared"], places["cache"],
                        places["downloads"])  # fmt: skip
