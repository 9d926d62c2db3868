"""Resumable training: a run killed with SIGKILL after epoch 2 of 4 and rerun gives the same
weights and history as an uninterrupted run, bit for bit on CPU; broken or foreign checkpoints
are detected and training starts over.

Everything is real: real BreastMNIST images, real models trained on CPU, a real child process
killed with SIGKILL. The child only pauses after the epoch-2 checkpoint is on disk (it wraps
the real save), so that the kill lands at the same point every time.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import saliency_robustness.training as training
from saliency_robustness.training import (
    TrainResult,
    TrainSettings,
    checkpoint_path,
    train_classifier,
    training_fingerprint,
)

REPO = Path(__file__).resolve().parents[2]
N_TRAIN, N_VAL = 16, 8
EPOCHS, KILL_AFTER = 4, 2
# The lr milestone after the kill checks the scheduler's state; with seed 0 the best
# validation AUC is epoch 1, so the best-epoch weights must come from the checkpoint.
SETTINGS = TrainSettings(epochs=EPOCHS, batch_size=8, lr=1e-3, milestones=(3,), gamma=0.5, seed=0)
# resnet18 has BatchNorm buffers; squeezenet1_1 has dropout, i.e. draws from torch's RNG.
ARCHS = ("resnet18", "squeezenet1_1")
DETERMINISTIC = ["epoch", "train_loss", "val_loss", "val_acc", "val_auc", "lr"]
LOGGER = "saliency_robustness.training"

CHILD = """
import sys
import numpy as np
import torch
import saliency_robustness.training as training

torch.set_num_threads(1)
arch, npz, checkpoint = sys.argv[1:4]
data = np.load(npz, allow_pickle=False)
n_train, n_val = {n_train}, {n_val}
real_save = training._save_checkpoint


def save_then_wait(path, state):
    real_save(path, state)
    if state["epoch"] == {kill_after}:
        print("saved", state["epoch"], flush=True)
        sys.stdin.read()  # wait here for the SIGKILL


training._save_checkpoint = save_then_wait
training.train_classifier(
    arch,
    (data["train_images"][:n_train], data["train_labels"][:n_train]),
    (data["val_images"][:n_val], data["val_labels"][:n_val]),
    2,
    training.TrainSettings(**{settings}),
    "cpu",
    checkpoint=checkpoint,
)
print("finished", flush=True)  # never reached: the test fails if it is
"""


def _sets(breast) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return (
        (breast["train_images"][:N_TRAIN], breast["train_labels"][:N_TRAIN]),
        (breast["val_images"][:N_VAL], breast["val_labels"][:N_VAL]),
    )


def _train(breast, arch: str, settings: TrainSettings = SETTINGS, **kwargs) -> TrainResult:
    train, val = _sets(breast)
    return train_classifier(arch, train, val, 2, settings, torch.device("cpu"), **kwargs)


def _assert_same_run(actual: TrainResult, expected: TrainResult) -> None:
    expected_state, actual_state = expected.model.state_dict(), actual.model.state_dict()
    assert actual_state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        assert torch.equal(actual_state[key], value), key
    pd.testing.assert_frame_equal(
        actual.history[DETERMINISTIC], expected.history[DETERMINISTIC], check_exact=True
    )
    assert (actual.best_epoch, actual.best_val) == (expected.best_epoch, expected.best_val)


@pytest.fixture(scope="module")
def uninterrupted(breast) -> dict[str, TrainResult]:
    results = {arch: _train(breast, arch) for arch in ARCHS}
    for arch, result in results.items():  # the premise of checking the best epoch's restore
        assert result.best_epoch <= KILL_AFTER, (arch, result.history)
    return results


@pytest.fixture(scope="module")
def killed_checkpoints(breast_path, tmp_path_factory) -> dict[str, Path]:
    """Per arch, the checkpoint a real training process left when SIGKILLed after epoch 2."""
    child = CHILD.format(
        n_train=N_TRAIN,
        n_val=N_VAL,
        kill_after=KILL_AFTER,
        settings=repr(
            {
                "epochs": SETTINGS.epochs,
                "batch_size": SETTINGS.batch_size,
                "lr": SETTINGS.lr,
                "milestones": SETTINGS.milestones,
                "gamma": SETTINGS.gamma,
                "seed": SETTINGS.seed,
            }
        ),
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    checkpoints = {}
    for arch in ARCHS:
        folder = tmp_path_factory.mktemp(f"killed_{arch}")
        checkpoint = checkpoint_path(folder / "model.pt")
        process = subprocess.Popen(
            [sys.executable, "-c", child, arch, str(breast_path), str(checkpoint)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            line = process.stdout.readline()
            assert line == f"saved {KILL_AFTER}\n", (line, process.stderr.read()[-3000:])
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=60) == -signal.SIGKILL
        finally:
            process.kill()
            process.wait()
        assert checkpoint.is_file()
        checkpoints[arch] = checkpoint
    return checkpoints


def _copy(checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy at the place the run would use (each test damages its own)."""
    target = checkpoint_path(tmp_path / "model.pt")
    shutil.copyfile(checkpoint, target)
    return target


def test_checkpoint_sits_beside_the_model_and_is_not_the_model():
    assert checkpoint_path("results/models/b/r/fold0/model.pt") == Path(
        "results/models/b/r/fold0/model.checkpoint.pt"
    )
    assert checkpoint_path("x/fold1/shuffled_labels.pt").name == "shuffled_labels.checkpoint.pt"


def test_killed_checkpoint_loads_with_weights_only_and_holds_the_whole_state(killed_checkpoints):
    state = torch.load(killed_checkpoints["resnet18"], map_location="cpu", weights_only=True)
    assert state["epoch"] == KILL_AFTER
    assert {"model", "optimiser", "scheduler", "scaler", "rng", "history", "best"} <= set(state)
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda", "generator"}
    assert [row["epoch"] for row in state["history"]] == [1, 2]
    # best epoch 1 is not the checkpoint's epoch: its weights are stored separately
    assert state["best"]["epoch"] == 1 and state["best"]["state"] is not None


@pytest.mark.parametrize("arch", ARCHS)
def test_rerun_after_sigkill_resumes_to_the_uninterrupted_weights(
    arch, breast, killed_checkpoints, uninterrupted, tmp_path, caplog
):
    checkpoint = _copy(killed_checkpoints[arch], tmp_path)
    caplog.set_level(logging.INFO, logger=LOGGER)
    resumed = _train(breast, arch, checkpoint=checkpoint)
    assert f"resuming from checkpoint {checkpoint}: epoch 2 of 4 done" in caplog.text
    # only epochs 3 and 4 were trained here
    messages = [record.getMessage() for record in caplog.records]
    assert [m.split()[1] for m in messages if m.startswith("epoch ")] == ["3/4", "4/4"]
    _assert_same_run(resumed, uninterrupted[arch])
    # milestone 3: the scheduler, restored at step 2, halves the lr for epoch 4
    assert resumed.history["lr"].tolist() == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])
    assert not checkpoint.exists()  # a finished run leaves only its outputs


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bit_flipped(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside a tensor's bytes; torch.load does not notice
    path.write_bytes(bytes(data))


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _weights_file(path: Path) -> None:
    torch.save({"conv1.weight": torch.zeros(3)}, path)  # a torch file, but no checkpoint


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncated, "is unreadable"),
        (_empty, "is unreadable"),
        (_garbage, "is unreadable"),
        (_bit_flipped, "is corrupt (its content does not match its digest)"),
        (_weights_file, "is not a training checkpoint"),
    ],
)
def test_broken_checkpoint_is_detected_and_training_starts_from_epoch_0(
    damage, message, breast, killed_checkpoints, uninterrupted, tmp_path, caplog
):
    checkpoint = _copy(killed_checkpoints["squeezenet1_1"], tmp_path)
    damage(checkpoint)
    caplog.set_level(logging.INFO, logger=LOGGER)
    result = _train(breast, "squeezenet1_1", checkpoint=checkpoint)
    assert f"checkpoint {checkpoint} {message}" in caplog.text
    assert "training starts from epoch 0" in caplog.text
    assert "resuming" not in caplog.text
    _assert_same_run(result, uninterrupted["squeezenet1_1"])
    assert not checkpoint.exists()


def test_checkpoint_of_other_settings_is_not_resumed(breast, killed_checkpoints, tmp_path, caplog):
    other = TrainSettings(**{**SETTINGS.__dict__, "lr": 2e-3})
    checkpoint = _copy(killed_checkpoints["squeezenet1_1"], tmp_path)
    caplog.set_level(logging.INFO, logger=LOGGER)
    result = _train(breast, "squeezenet1_1", other, checkpoint=checkpoint)
    assert "was written for other settings or data" in caplog.text
    assert "resuming" not in caplog.text
    _assert_same_run(result, _train(breast, "squeezenet1_1", other))


def test_checkpoint_that_does_not_fit_the_model_starts_over(
    breast, killed_checkpoints, uninterrupted, tmp_path, caplog
):
    """Intact and with the right fingerprint, but a tensor of the wrong shape (e.g. edited by
    hand): caught before training, and everything is rebuilt from the seed."""
    state = torch.load(killed_checkpoints["squeezenet1_1"], map_location="cpu", weights_only=True)
    del state["digest"]
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(1)
    checkpoint = checkpoint_path(tmp_path / "model.pt")
    training._save_checkpoint(checkpoint, state)
    caplog.set_level(logging.INFO, logger=LOGGER)
    result = _train(breast, "squeezenet1_1", checkpoint=checkpoint)
    assert "does not fit this model" in caplog.text
    _assert_same_run(result, uninterrupted["squeezenet1_1"])


def test_fingerprint_changes_with_every_setting_arch_and_data(breast):
    train, val = _sets(breast)
    arrays = (*train, *val)

    def fingerprint(arch="resnet18", settings=SETTINGS, arrays=arrays, device="cpu") -> str:
        return training_fingerprint(arch, settings, 2, False, torch.device(device), arrays)

    reference = fingerprint()
    assert fingerprint() == reference
    for change in ({"epochs": 5}, {"lr": 2e-3}, {"seed": 1}, {"milestones": (2,)}):
        assert fingerprint(settings=TrainSettings(**{**SETTINGS.__dict__, **change})) != reference
    assert fingerprint(arch="squeezenet1_1") != reference
    assert fingerprint(device="cuda") != reference
    other_images = train[0].copy()
    other_images[0, 0, 0] ^= 1
    assert fingerprint(arrays=(other_images, *arrays[1:])) != reference
    assert training_fingerprint("resnet18", SETTINGS, 2, True, torch.device("cpu"), arrays) != (
        reference
    )


@pytest.mark.parametrize(("every", "saved"), [(1, [1, 2, 3]), (3, [3]), (0, [])])
def test_checkpoint_every_n_epochs(every, saved, breast, tmp_path, monkeypatch):
    """Saved after every N-th epoch but the last (deleted at once anyway); 0 saves none and
    removes a stale file."""
    epochs = []
    real_save = training._save_checkpoint

    def recording_save(path, state):
        epochs.append(state["epoch"])
        real_save(path, state)

    monkeypatch.setattr(training, "_save_checkpoint", recording_save)
    checkpoint = checkpoint_path(tmp_path / "model.pt")
    checkpoint.write_bytes(b"stale")
    _train(breast, "squeezenet1_1", checkpoint=checkpoint, checkpoint_every=every)
    assert epochs == saved
    assert not checkpoint.exists()


def test_negative_checkpoint_every_is_rejected(breast, tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every must be >= 0"):
        _train(breast, "squeezenet1_1", checkpoint=tmp_path / "c.pt", checkpoint_every=-1)
