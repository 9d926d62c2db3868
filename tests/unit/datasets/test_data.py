"""Download with MD5 verification, npz loading, stratified folds and perturbed-set loading."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from saliency_robustness.datasets.folds import (
    fold_split,
    folds_in_paths,
    make_folds,
    pooled_train_val,
)
from saliency_robustness.datasets.info import DataError, dataset_info
from saliency_robustness.datasets.medmnist import download, source_url_and_md5
from saliency_robustness.datasets.npz import load_npz, load_perturbed

BREAST_MD5 = "750601b1f35ba3300ea97c75c52ff8f6"  # official MedMNIST v2 MD5 of breastmnist.npz


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Announces the full file size but sends only the first half, then hangs up."""

    payload = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[: len(self.payload) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


def _serve(handler) -> tuple[str, http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


@pytest.fixture
def http_mirror(medmnist_dir: Path) -> Iterator[str]:
    """The real MedMNIST folder served over loopback HTTP."""
    url, server = _serve(functools.partial(_QuietHandler, directory=str(medmnist_dir)))
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture
def mirror(tmp_path: Path, breast_path: Path) -> Path:
    """A local-folder mirror holding a private copy of the real BreastMNIST file."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    shutil.copyfile(breast_path, folder / "breastmnist.npz")
    return folder


# --- download ---------------------------------------------------------------------------


def test_download_from_local_folder_mirror_verifies_and_writes_target(tmp_path, mirror):
    target = tmp_path / "out" / "breastmnist.npz"
    result = download("breastmnist", 28, target, mirror=str(mirror))
    assert Path(result) == target
    assert md5(target) == BREAST_MD5 == source_url_and_md5("breastmnist", 28)[1]
    assert sorted(p.name for p in target.parent.iterdir()) == ["breastmnist.npz"]
    arrays = load_npz(target)
    assert arrays["train_images"].shape == (546, 28, 28)
    assert arrays["test_labels"].shape == (156, 1)


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_flip_bytes, _truncate], ids=["corrupted", "truncated"])
def test_download_of_damaged_mirror_copy_raises_md5_mismatch_and_leaves_nothing(
    tmp_path, mirror, damage
):
    damage(mirror / "breastmnist.npz")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="MD5 mismatch") as excinfo:
        download("breastmnist", 28, out / "breastmnist.npz", mirror=str(mirror))
    assert BREAST_MD5 in str(excinfo.value)
    assert list(out.iterdir()) == []  # neither the target nor a temporary file


def test_failed_download_keeps_an_existing_good_target(tmp_path, mirror, breast_path):
    target = tmp_path / "out" / "breastmnist.npz"
    target.parent.mkdir()
    shutil.copyfile(breast_path, target)
    _flip_bytes(mirror / "breastmnist.npz")
    with pytest.raises(DataError, match="MD5 mismatch"):
        download("breastmnist", 28, target, mirror=str(mirror))
    assert md5(target) == BREAST_MD5
    assert sorted(p.name for p in target.parent.iterdir()) == ["breastmnist.npz"]


def test_download_from_missing_local_mirror_file_names_it(tmp_path):
    empty = tmp_path / "empty_mirror"
    empty.mkdir()
    out = tmp_path / "out"
    with pytest.raises(DataError, match="does not exist") as excinfo:
        download("breastmnist", 28, out / "breastmnist.npz", mirror=str(empty))
    assert str(empty / "breastmnist.npz") in str(excinfo.value)
    assert list(out.iterdir()) == []


def test_download_from_http_mirror(tmp_path, http_mirror):
    target = tmp_path / "out" / "breastmnist.npz"
    download("breastmnist", 28, target, mirror=http_mirror)
    assert md5(target) == BREAST_MD5
    assert sorted(p.name for p in target.parent.iterdir()) == ["breastmnist.npz"]


def test_download_from_http_mirror_with_trailing_slash(tmp_path, http_mirror):
    target = tmp_path / "breastmnist.npz"
    download("breastmnist", 28, target, mirror=http_mirror + "/")
    assert md5(target) == BREAST_MD5


def test_download_from_file_url_mirror(tmp_path, mirror):
    target = tmp_path / "out" / "breastmnist.npz"
    download("breastmnist", 28, target, mirror=mirror.as_uri())
    assert md5(target) == BREAST_MD5


def test_http_mirror_without_the_file_raises_data_error(tmp_path):
    empty = tmp_path / "served"
    empty.mkdir()
    url, server = _serve(functools.partial(_QuietHandler, directory=str(empty)))
    out = tmp_path / "out"
    try:
        with pytest.raises(DataError, match="Could not fetch"):
            download("breastmnist", 28, out / "breastmnist.npz", mirror=url)
    finally:
        server.shutdown()
        server.server_close()
    assert list(out.iterdir()) == []


def test_closed_port_mirror_says_nothing_was_downloaded(tmp_path):
    """Connection refused: no part file exists, so the message must not claim one."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago, now closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out"
    with pytest.raises(DataError) as caught:
        download("breastmnist", 28, out / "breastmnist.npz", mirror=f"http://127.0.0.1:{port}/")
    message = str(caught.value)
    assert "nothing was downloaded" in message and "Connection refused" in message
    assert ".part" not in message and "bytes kept" not in message
    assert not out.exists() or list(out.iterdir()) == []


def test_truncated_http_transfer_raises_data_error_and_leaves_nothing(tmp_path, breast_path):
    handler = type("Handler", (_TruncatingHandler,), {"payload": breast_path.read_bytes()})
    url, server = _serve(handler)
    out = tmp_path / "out"
    try:
        with pytest.raises(DataError, match="interrupted or truncated 3 times"):
            download("breastmnist", 28, out / "breastmnist.npz", mirror=url)
    finally:
        server.shutdown()
        server.server_close()
    # No target; only the part file, kept for the next run to resume.
    assert [p.name for p in out.iterdir()] == ["breastmnist.npz.part"]
    assert (out / "breastmnist.npz.part").stat().st_size == breast_path.stat().st_size // 2


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``payload`` with HTTP Range support; the first ``drops`` responses hang up
    after ``cut`` bytes (a real socket closing mid-file). Records each request's Range."""

    payload = b""
    cut = 0
    drops = 0
    ranges: list = []

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        body = self.payload[start:]
        self.send_response(206 if header else 200)
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/*")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).drops > 0:
            type(self).drops -= 1
            body = body[: self.cut]
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


def _range_server(breast_path: Path, drops: int, cut: int):
    attrs = {"payload": breast_path.read_bytes(), "drops": drops, "cut": cut, "ranges": []}
    handler = type("Handler", (_RangeHandler,), attrs)
    url, server = _serve(handler)
    return url, server, handler


def test_dropped_connection_is_resumed_with_http_range(tmp_path, breast_path):
    cut = 100_000
    url, server, handler = _range_server(breast_path, drops=2, cut=cut)
    target = tmp_path / "out" / "breastmnist.npz"
    try:
        download("breastmnist", 28, target, mirror=url)
    finally:
        server.shutdown()
        server.server_close()
    assert md5(target) == BREAST_MD5
    # First request whole, then two resumes, each at the end of what had arrived.
    assert handler.ranges == [None, f"bytes={cut}-", f"bytes={2 * cut}-"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["breastmnist.npz"]


def test_interrupted_run_is_resumed_by_the_next_run(tmp_path, breast_path):
    cut = 250_000
    url, server, handler = _range_server(breast_path, drops=10, cut=cut)
    target = tmp_path / "out" / "breastmnist.npz"
    try:
        with pytest.raises(DataError, match="Run again to resume"):
            download("breastmnist", 28, target, mirror=url, attempts=1)
        assert not target.exists()
        handler.drops = 0  # the network is back
        download("breastmnist", 28, target, mirror=url)
    finally:
        server.shutdown()
        server.server_close()
    assert handler.ranges == [None, f"bytes={cut}-"]
    assert md5(target) == BREAST_MD5


def test_server_without_range_support_restarts_cleanly(tmp_path, breast_path, http_mirror):
    """SimpleHTTPRequestHandler ignores Range and sends the whole file: the part restarts."""
    target = tmp_path / "breastmnist.npz"
    part = tmp_path / "breastmnist.npz.part"
    part.write_bytes(b"stale bytes from an older run" * 1000)
    download("breastmnist", 28, target, mirror=http_mirror)
    assert md5(target) == BREAST_MD5
    assert not part.exists()


def test_part_file_of_another_file_is_discarded_after_md5_mismatch(tmp_path, breast_path):
    url, server, _ = _range_server(breast_path, drops=0, cut=0)
    target = tmp_path / "breastmnist.npz"
    part = tmp_path / "breastmnist.npz.part"
    part.write_bytes(b"x" * 1000)  # not a prefix of the real file: resuming gives garbage
    try:
        with pytest.raises(DataError, match="MD5 mismatch"):
            download("breastmnist", 28, target, mirror=url)
        assert not part.exists() and not target.exists()
        download("breastmnist", 28, target, mirror=url)  # the next run starts clean
    finally:
        server.shutdown()
        server.server_close()
    assert md5(target) == BREAST_MD5


# --- dataset metadata ---------------------------------------------------------------------


def test_dataset_info_of_breastmnist():
    info = dataset_info("breastmnist")
    assert info.task == "binary-class"
    assert info.n_channels == 1
    assert info.n_classes == 2


def test_unknown_dataset_flag_lists_valid_names():
    with pytest.raises(DataError, match="Unknown MedMNIST dataset 'breastmnst'") as excinfo:
        dataset_info("breastmnst")
    message = str(excinfo.value)
    for valid in ("breastmnist", "pneumoniamnist", "pathmnist"):
        assert valid in message
    assert "organmnist3d" not in message  # only 2D datasets are valid here


def test_download_with_unknown_flag_raises_before_touching_the_target(tmp_path, mirror):
    with pytest.raises(DataError, match="Valid 2D datasets"):
        download("nosuchmnist", 28, tmp_path / "out" / "x.npz", mirror=str(mirror))
    assert not (tmp_path / "out").exists()


def test_unknown_size_lists_valid_sizes():
    with pytest.raises(DataError, match="Valid sizes"):
        source_url_and_md5("breastmnist", 32)


# --- load_npz -------------------------------------------------------------------------------


def test_load_npz_reads_the_real_file(breast_path):
    arrays = load_npz(breast_path, "breastmnist")
    sizes = {split: len(arrays[f"{split}_images"]) for split in ("train", "val", "test")}
    assert sizes == {"train": 546, "val": 78, "test": 156}
    assert arrays["train_images"].dtype == np.uint8
    assert set(np.unique(arrays["train_labels"])) == {0, 1}


@pytest.mark.parametrize("content", [b"this is not a zip file\n" * 10, b""], ids=["text", "empty"])
def test_load_npz_on_a_non_zip_file_raises_data_error_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        load_npz(path, "breastmnist")
    assert str(path) in str(excinfo.value)


def test_load_npz_on_a_truncated_zip_raises_data_error(tmp_path, breast_path):
    path = tmp_path / "breastmnist.npz"
    path.write_bytes(breast_path.read_bytes()[:200_000])
    with pytest.raises(DataError, match=str(path)):
        load_npz(path)


def test_load_npz_without_a_medmnist_key_names_it(tmp_path, breast):
    path = tmp_path / "partial.npz"
    arrays = {k: v for k, v in breast.items() if k != "val_labels"}
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="val_labels"):
        load_npz(path, "breastmnist")


def test_load_npz_rejects_non_uint8_images(tmp_path, breast):
    path = tmp_path / "float.npz"
    arrays = dict(breast)
    arrays["test_images"] = arrays["test_images"].astype(np.float32)
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="uint8"):
        load_npz(path)


# --- folds ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pooled(breast):
    return pooled_train_val(breast)


def test_make_folds_is_stratified(pooled):
    _, labels, sources = pooled
    k = 5
    folds = make_folds(labels, sources, k=k, seed=0)
    class_counts = np.bincount(labels.reshape(-1))
    for fold_id in range(k):
        in_fold = folds.loc[folds["fold"] == fold_id, "label"].to_numpy()
        per_class = np.bincount(in_fold, minlength=len(class_counts))
        expected = class_counts / k
        assert np.all(np.abs(per_class - expected) <= 1), (fold_id, per_class, expected)


def test_make_folds_covers_every_image_exactly_once(pooled):
    images, labels, sources = pooled
    k = 5
    folds = make_folds(labels, sources, k=k, seed=0)
    assert len(folds) == len(images) == 546 + 78
    assert folds["pool_index"].tolist() == list(range(len(images)))
    assert set(folds["fold"]) == set(range(k))
    assert folds["fold"].value_counts().sum() == len(images)
    np.testing.assert_array_equal(folds["label"].to_numpy(), labels.reshape(-1))
    assert list(folds.columns) == ["pool_index", "source_split", "source_index", "label", "fold"]


def test_make_folds_source_columns_point_back_to_the_original_split(breast, pooled):
    images, labels, sources = pooled
    folds = make_folds(labels, sources, k=5, seed=0)
    for row in folds.iloc[[0, 545, 546, 623]].itertuples():
        original = breast[f"{row.source_split}_images"][row.source_index]
        np.testing.assert_array_equal(images[row.pool_index], original)
    assert (folds["source_split"] == "val").sum() == 78
    assert folds.loc[folds["source_split"] == "val", "source_index"].tolist() == list(range(78))


def test_make_folds_is_seeded(pooled):
    _, labels, sources = pooled
    first = make_folds(labels, sources, k=5, seed=0)
    again = make_folds(labels, sources, k=5, seed=0)
    other = make_folds(labels, sources, k=5, seed=1)
    pd.testing.assert_frame_equal(first, again)
    assert not np.array_equal(first["fold"].to_numpy(), other["fold"].to_numpy())


def test_make_folds_rejects_more_folds_than_the_rarest_class():
    labels = np.array([0] * 10 + [1] * 3, dtype=np.uint8).reshape(-1, 1)
    sources = np.array(["train"] * 13)
    folds = make_folds(labels, sources, k=3, seed=0)  # k equal to the rarest count is fine
    assert sorted(folds.loc[folds["label"] == 1, "fold"]) == [0, 1, 2]
    with pytest.raises(DataError, match="rarest class has 3 images"):
        make_folds(labels, sources, k=4, seed=0)


def test_make_folds_rejects_fewer_than_two_folds(pooled):
    _, labels, sources = pooled
    with pytest.raises(DataError):
        make_folds(labels, sources, k=1, seed=0)


def test_fold_split_shapes(breast, pooled):
    images, labels, sources = pooled
    folds = make_folds(labels, sources, k=5, seed=0)
    for fold_id in (0, 4):
        split = fold_split(breast, folds, fold_id)
        n_val = int((folds["fold"] == fold_id).sum())
        train_x, train_y = split["train"]
        val_x, val_y = split["val"]
        test_x, test_y = split["test"]
        assert train_x.shape == (len(images) - n_val, 28, 28)
        assert train_y.shape == (len(images) - n_val, 1)
        assert val_x.shape == (n_val, 28, 28)
        assert val_y.shape == (n_val, 1)
        assert test_x.shape == (156, 28, 28)
        assert test_y.shape == (156, 1)
        np.testing.assert_array_equal(val_x, images[folds["fold"].to_numpy() == fold_id])


def test_fold_split_rejects_a_fold_table_of_another_dataset(breast, pooled):
    _, labels, sources = pooled
    folds = make_folds(labels, sources, k=5, seed=0)
    with pytest.raises(DataError, match="rerun the folds rule"):
        fold_split(breast, folds.iloc[:-1], 0)


def test_fold_split_rejects_a_missing_fold(breast, pooled):
    _, labels, sources = pooled
    folds = make_folds(labels, sources, k=5, seed=0)
    with pytest.raises(DataError, match="Fold 7"):
        fold_split(breast, folds, 7)


# --- perturbed sets ---------------------------------------------------------------------------


def test_load_perturbed_round_trip(tmp_path, breast):
    clean = breast["test_images"][:5]
    written = {}
    for name, severities in (("gaussian_noise", [1, 3, 5]), ("contrast", [2])):
        stack = np.stack([np.roll(clean, s, axis=1) for s in severities])
        with open(tmp_path / f"{name}.npz", "wb") as handle:
            np.savez_compressed(handle, images=stack, severities=np.asarray(severities))
        written[name] = (severities, stack)
    loaded = load_perturbed([str(tmp_path / "gaussian_noise.npz"), str(tmp_path / "contrast.npz")])
    assert list(loaded) == ["gaussian_noise", "contrast"]
    for name, (severities, stack) in written.items():
        got_severities, got_stack = loaded[name]
        assert got_severities == severities
        assert all(type(s) is int for s in got_severities)
        assert got_stack.dtype == np.uint8
        np.testing.assert_array_equal(got_stack, stack)


def test_folds_in_paths_reads_the_fold_folders():
    paths = [f"results/models/d/a/fold{k}/model.pt" for k in (3, 0, 3)]
    assert folds_in_paths(paths) == [0, 3]
    with pytest.raises(ValueError, match="not a per-fold file"):
        folds_in_paths(["results/models/d/a/model.pt"])


def test_medmnist_info_snapshot_equals_the_installed_package():
    """The plain-data copy of medmnist.INFO (read by the main process and light jobs) is the
    installed package's table; regenerate it after a medmnist upgrade (its docstring)."""
    import medmnist

    from saliency_robustness.datasets import medmnist_info

    assert medmnist.__version__ == medmnist_info.MEDMNIST_VERSION
    assert medmnist_info.INFO == medmnist.INFO
