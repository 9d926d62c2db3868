"""Atomic Parquet I/O and every figure, from small hand-made tables."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from saliency_robustness import plots
from saliency_robustness.analysis.detection import detection_by_family, misclassification_detection
from saliency_robustness.analysis.saliency_change import summarise_change
from saliency_robustness.tables import atomic_path, maps_from_table, read_parquet, write_parquet

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- atomic writes and Parquet ----------------------------------------------------------------


def test_atomic_path_exception_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "table.parquet"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half written")
        raise RuntimeError("boom")
    assert files_in(target.parent) == []


def test_atomic_path_exception_keeps_the_previous_file(tmp_path):
    target = tmp_path / "table.parquet"
    write_parquet(pd.DataFrame({"x": [1, 2]}), target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"garbage")
        raise RuntimeError("crash while writing")
    assert read_parquet(target)["x"].tolist() == [1, 2]
    assert files_in(tmp_path) == ["table.parquet"]


def test_write_parquet_failure_inside_the_write_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "table.parquet"
    with pytest.raises((TypeError, AttributeError, pa.ArrowException)):
        write_parquet({"not": "a table"}, target)  # fails inside pq.write_table
    assert files_in(target.parent) == []


def test_write_parquet_round_trip_keeps_types_and_leaves_no_temp_file(tmp_path):
    frame = pd.DataFrame(
        {
            "perturbation": ["gaussian_noise", "contrast"],
            "severity": np.array([0, 5], dtype=np.int8),
            "wrong": [True, False],
            "probabilities": [np.array([0.2, 0.8], np.float32), np.array([1.0, 0.0], np.float32)],
        }
    )
    path = tmp_path / "nested" / "table.parquet"
    write_parquet(frame, path)
    assert files_in(path.parent) == ["table.parquet"]
    back = read_parquet(path)
    assert back["severity"].dtype == np.int8
    assert back["wrong"].dtype == bool
    assert back["perturbation"].tolist() == ["gaussian_noise", "contrast"]
    np.testing.assert_array_equal(np.stack(back["probabilities"]), np.stack(frame["probabilities"]))


def test_atomic_writes_get_the_same_permissions_as_ordinary_files(tmp_path):
    """Outputs in a shared project folder must be readable by the group like any other file
    the user creates (the umask decides), not private to the user."""
    ordinary = tmp_path / "ordinary.txt"
    ordinary.write_text("x")
    target = tmp_path / "table.parquet"
    write_parquet(pd.DataFrame({"x": [1]}), target)
    expected = stat.S_IMODE(ordinary.stat().st_mode)
    assert oct(stat.S_IMODE(target.stat().st_mode)) == oct(expected)


def test_write_parquet_accepts_arrow_tables(tmp_path):
    table = pa.table({"a": pa.array([1, 2, 3], pa.int16())})
    write_parquet(table, tmp_path / "t.parquet")
    assert read_parquet(tmp_path / "t.parquet")["a"].dtype == np.int16


def test_read_parquet_concatenates_a_list(tmp_path):
    write_parquet(pd.DataFrame({"fold": [0, 0], "v": [1.0, 2.0]}), tmp_path / "a.parquet")
    write_parquet(pd.DataFrame({"fold": [1], "v": [3.0]}), tmp_path / "b.parquet")
    both = read_parquet([tmp_path / "a.parquet", str(tmp_path / "b.parquet")])
    assert both["fold"].tolist() == [0, 0, 1]
    assert both.index.tolist() == [0, 1, 2]
    assert read_parquet([]).empty


def test_maps_from_table_restores_map_shape():
    maps = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    table = pd.DataFrame({"height": [3, 3], "width": [4, 4], "saliency": list(maps.reshape(2, -1))})
    out = maps_from_table(table)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, maps)
    assert maps_from_table(table.iloc[:0]).shape == (0, 0, 0)


# --- figures ----------------------------------------------------------------------------------


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 2000
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 50 and image.shape[1] > 50
    assert image.std() > 0  # something was drawn
    assert files_in(path.parent) == [path.name]  # no temporary file left beside it


@pytest.fixture
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)


def test_perturbation_preview(tmp_path, images):
    stack = np.stack([images // 2, images // 4])
    path = tmp_path / "preview.png"
    plots.perturbation_preview_figure(images, stack, [1, 5], "gaussian_noise", path, n_images=2)
    assert_png(path)


def test_training_curves(tmp_path):
    history = pd.DataFrame(
        [
            {
                "arch": arch, "fold": fold, "epoch": epoch,
                "train_loss": 1.0 / epoch, "val_loss": 1.2 / epoch + 0.1 * fold,
                "val_acc": 0.5 + 0.1 * epoch, "val_auc": 0.6 + 0.05 * epoch,
                "lr": 1e-3, "seconds": 1.0,
            }
            for arch in ("resnet18", "resnet50")
            for fold in (0, 1)
            for epoch in (1, 2, 3)
        ]
    )  # fmt: skip
    path = tmp_path / "training_curves.png"
    plots.training_curves_figure(history, path, dpi=60)
    assert_png(path)


def test_classification_vs_severity(tmp_path):
    metrics = pd.DataFrame(
        [
            {
                "dataset": "breastmnist", "arch": "resnet18", "fold": fold,
                "perturbation": name, "severity": severity,
                "acc": 0.8 - 0.1 * severity + 0.01 * fold, "balanced_acc": 0.7 - 0.1 * severity,
                "auc": 0.9 - 0.1 * severity, "precision": 0.5, "recall": 0.5, "f1": 0.5,
            }
            for fold in (0, 1)
            for name in ("gaussian_noise", "contrast")
            for severity in (0, 1, 3)
        ]
    ).astype({"severity": "int8"})  # fmt: skip
    path = tmp_path / "classification.png"
    plots.classification_vs_severity_figure(metrics, path, dpi=60)
    assert_png(path)


def _change_table() -> pd.DataFrame:
    rows = []
    for fold in (0, 1):
        for method in ("saliency", "gradcam"):
            for name in ("gaussian_noise", "contrast"):
                for severity in (1, 3, 5):
                    for image in range(4):
                        wrong = image < 1 + severity // 3
                        rows.append(
                            {
                                "dataset": "breastmnist", "arch": "resnet18", "fold": fold,
                                "method": method, "perturbation": name, "severity": severity,
                                "image_index": image, "wrong": wrong, "flipped": wrong,
                                "rmse": 0.05 * severity + 0.3 * wrong,
                                "ssim": 1 - 0.1 * severity - 0.2 * wrong,
                                "spearman": 1 - 0.1 * severity - 0.1 * image,
                                "topk_iou": 1 - 0.15 * severity,
                                "confidence_drop": 0.02 * severity + 0.4 * wrong,
                                "clean_wrong": image == 0, "induced": wrong and image > 0,
                                "msp": 0.9 - 0.3 * wrong, "collapsed": False,
                                "is_constant": False, "map_entropy": 0.5 + 0.01 * image,
                                "map_gini": 0.5 - 0.01 * severity,
                            }
                        )  # fmt: skip
    return pd.DataFrame(rows)


def test_saliency_change_vs_severity_from_a_real_summary(tmp_path):
    summary = summarise_change(_change_table())
    path = tmp_path / "saliency_change.png"
    plots.saliency_change_vs_severity_figure(summary, path, dpi=60)
    assert_png(path)


def test_misclassification_detection_from_real_detection_table(tmp_path):
    detection = misclassification_detection(_change_table())
    assert detection["auroc"].notna().any()
    path = tmp_path / "detection.png"
    plots.misclassification_detection_figure(detection, path, dpi=60)
    assert_png(path)


def test_detection_by_family_from_a_real_detection_table(tmp_path):
    families = {"gaussian_noise": "noise", "contrast": "contrast"}
    detection, _ = detection_by_family(_change_table(), families, n_splits=2, n_resamples=100)
    path = tmp_path / "detection_by_family.png"
    plots.detection_by_family_figure(detection, path, dpi=60)
    assert_png(path)


def test_misclassification_detection_without_any_auroc_explains(tmp_path):
    change = _change_table().assign(wrong=False)
    detection = misclassification_detection(change)
    path = tmp_path / "detection.png"
    with pytest.raises(ValueError, match="No AUROC is defined"):
        plots.misclassification_detection_figure(detection, path)
    assert files_in(tmp_path) == []


def test_saliency_examples(tmp_path, images):
    perturbed = {
        "gaussian_noise": ([1, 5], np.stack([images // 2, images // 4])),
        "contrast": ([3], np.stack([images // 3])),
    }
    rng = np.random.default_rng(1)
    maps = {
        method: {
            (name, severity): rng.normal(size=(3, 28, 28)).astype(np.float32)
            for name, (severities, _) in perturbed.items()
            for severity in (0, *severities)
        }
        for method in ("saliency", "integrated_gradients")
    }
    path = tmp_path / "examples.png"
    plots.saliency_examples_figure(images, perturbed, maps, image_indices=[0, 2], path=path, dpi=60)
    assert_png(path)


def test_robustness_scores_figure(tmp_path):
    table = pd.DataFrame(
        [
            {"arch": arch, "fold": fold, "perturbation": name, "be": 0.3 + 0.1 * k + 0.01 * fold,
             "be_clean": 0.2 + 0.05 * (arch == "resnet50")}
            for arch in ("resnet18", "resnet50")
            for fold in (0, 1)
            for k, name in enumerate(("gaussian_noise", "contrast", "blur"))
        ]
    )  # fmt: skip
    path = tmp_path / "robustness.png"
    plots.robustness_scores_figure(table, path, dpi=60)
    assert_png(path)


def _calibration_table(names: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"perturbation": name, "severity": severity, "ssim": 1 - 0.15 * severity,
             "psnr": 40 - 4 * severity - k}
            for k, name in enumerate(names)
            for severity in (1, 3, 5)
        ]
    ).astype({"severity": "int8"})  # fmt: skip


def test_perturbation_calibration_figure(tmp_path):
    path = tmp_path / "perturbation_calibration.png"
    plots.perturbation_calibration_figure(
        _calibration_table(("gaussian_noise", "contrast")), path, dpi=60
    )
    assert_png(path)


def test_perturbation_grid_figure(tmp_path, images):
    perturbed = {"gaussian_noise": np.stack([images[0] // 2, images[0] // 4]),
                 "contrast": np.stack([images[0] // 3, images[0] // 5])}  # fmt: skip
    path = tmp_path / "perturbation_grid.png"
    plots.perturbation_grid_figure(images[0], perturbed, [1, 5], path, "test image 0", dpi=60)
    assert_png(path)


# --- the figure registry and the one plot rule -------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def _plot_table_uses() -> dict[str, dict[str, str]]:
    """Rule name -> its figure param and PNG name (``figure_file(name)``), for each use of
    plot_table in plots.smk."""
    text = (REPO / "workflow" / "rules" / "plots.smk").read_text()
    uses = {}
    for block in re.split(r"^use rule ", text, flags=re.M)[1:]:
        header = re.match(r"plot_table from plot_template as (\w+) with:", block)
        assert header, f"unexpected use rule: {block.splitlines()[0]}"
        uses[header[1]] = {
            "figure": re.search(r'figure="(\w+)"', block)[1],
            "png": re.search(r'figure_file\("(\w+)"\)', block)[1],
        }
    return uses


def test_every_table_figure_has_one_plot_rule_and_every_rule_a_figure():
    uses = _plot_table_uses()
    figures = [use["figure"] for use in uses.values()]
    assert sorted(figures) == sorted(plots.FIGURES)  # each registered figure drawn once
    for rule, use in uses.items():
        # rule plot_<figure> writes figure_file("<figure>"): results/plots/{dataset}/<figure>.png
        assert rule == f"plot_{use['figure']}"
        assert use["png"] == use["figure"]


def test_an_unknown_figure_names_the_known_ones():
    assert plots.table_figure("robustness") is plots.robustness_scores_figure
    with pytest.raises(ValueError, match=r"Unknown figure 'robustness_scores'.*sanity"):
        plots.table_figure("robustness_scores")


def test_the_plot_script_draws_its_figure_from_several_tables(tmp_path):
    """workflow/scripts/plot.py as Snakemake runs it: inputs concatenated, the figure by name,
    the log written."""
    inputs = []
    for name in ("gaussian_noise", "contrast"):
        inputs.append(str(tmp_path / f"{name}.parquet"))
        write_parquet(_calibration_table((name,)), inputs[-1])
    out = tmp_path / "plots" / "perturbation_calibration.png"
    log = tmp_path / "plot.log"
    code = (
        "import runpy, sys\n"
        "from types import SimpleNamespace\n"
        f"snakemake = SimpleNamespace(input={inputs!r}, output=[{str(out)!r}],\n"
        f"    log=[{str(log)!r}], params=SimpleNamespace(figure='perturbation_calibration',\n"
        "    dpi=60))\n"
        f"runpy.run_path({str(REPO / 'workflow' / 'scripts' / 'plot.py')!r},\n"
        "    init_globals={'snakemake': snakemake})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_png(out)
    assert log.exists()
    # The same pixels as the figure of both tables together, not as that of the first alone.
    both, first = tmp_path / "both" / "figure.png", tmp_path / "first" / "figure.png"
    plots.perturbation_calibration_figure(read_parquet(inputs), both, dpi=60)
    plots.perturbation_calibration_figure(read_parquet(inputs[0]), first, dpi=60)
    drawn = matplotlib.image.imread(out)
    assert np.array_equal(drawn, matplotlib.image.imread(both))
    first_alone = matplotlib.image.imread(first)
    assert drawn.shape != first_alone.shape or not np.array_equal(drawn, first_alone)
