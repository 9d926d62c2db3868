"""How saliency tables are stored: clean maps once per (model, method), perturbed maps per
perturbation, float16 or float32 maps written compactly, and read back in the comparison
form the metrics take. Real maps of a small trained ResNet-18 on real BreastMNIST images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from saliency_robustness.analysis.map_similarity import constant_maps
from saliency_robustness.analysis.saliency_change import CHANGE_COLUMNS, saliency_change
from saliency_robustness.attribution.table import (
    attribute_clean,
    attribute_perturbed,
    models_by_fold,
    saliency_schema,
)
from saliency_robustness.tables import (
    CLEAN,
    map_column_options,
    maps_from_table,
    read_saliency,
    saliency_folds,
    with_clean_rows,
    write_parquet,
    write_parquet_parts,
)

KEYS = {"dataset": "breastmnist", "arch": "resnet18", "fold": 0}
METHOD = "integrated_gradients"
PARAMS = {"n_steps": 8, "internal_batch_size": 64}
N = 6


@pytest.fixture(scope="module")
def images(clean_test_images) -> np.ndarray:
    return clean_test_images[:N]


@pytest.fixture(scope="module")
def perturbed(clean_test_images) -> dict:
    """Whole perturbed test sets, as the perturb rule writes them (S, N_test, H, W)."""
    test = clean_test_images.astype(np.int16)
    noise = np.random.default_rng(0).normal(0, 25, test.shape)
    return {
        "gaussian_noise": ([2], np.clip(test + noise, 0, 255).astype(np.uint8)[None]),
        "contrast": ([1, 4], np.stack([test // 2 + 64, test // 4 + 96]).astype(np.uint8)),
    }


@pytest.fixture(scope="module")
def stored(model, images, breast, perturbed, tmp_path_factory):
    """The workflow's layout for two folds (one model reused as both): per fold the clean
    table and one table per perturbation, written as the attribute rules do."""
    folder = tmp_path_factory.mktemp("saliency")
    labels = breast["test_labels"][:N]
    schema = saliency_schema(28, 28, 2, completeness=True, precision="float32")
    cleans = {
        fold: attribute_clean(model, images, labels, METHOD, PARAMS, {**KEYS, "fold": fold})
        for fold in (0, 1)
    }
    paths = [folder / "clean.parquet"]
    write_parquet_parts(cleans.values(), paths[0], schema, map_columns=["saliency"])
    for name, level in perturbed.items():
        paths.append(folder / f"{name}.parquet")
        parts = (
            attribute_perturbed(model, cleans[fold], {name: level}, METHOD, PARAMS)
            for fold in (0, 1)
        )
        write_parquet_parts(parts, paths[-1], schema, map_columns=["saliency"])
    return paths, labels


def test_stored_tables_read_back_in_the_comparison_form(model, images, perturbed, stored):
    """Clean table + per-perturbation tables, read with read_saliency, equal the comparison
    form of one model's tables computed at once: the split into jobs changes no map,
    probability or target."""
    paths, labels = stored
    clean = attribute_clean(model, images, labels, METHOD, PARAMS, KEYS)
    parts = [clean, attribute_perturbed(model, clean, perturbed, METHOD, PARAMS)]
    expected = with_clean_rows(pd.concat([part.to_pandas() for part in parts], ignore_index=True))
    frame = read_saliency(paths, fold=0)
    assert len(frame) == N * (2 + 1 + 2)  # clean under each of 2 perturbations + 3 levels
    pd.testing.assert_frame_equal(
        frame.drop(columns="saliency"), expected.drop(columns="saliency"), check_dtype=False
    )
    np.testing.assert_array_equal(maps_from_table(frame), maps_from_table(expected))


def test_clean_maps_are_stored_once_per_model(stored):
    paths, _ = stored
    table = ds.dataset(paths, format="parquet").to_table().to_pandas()
    clean = table[table["severity"] == 0]
    assert set(clean["perturbation"]) == {CLEAN}
    assert len(clean) == 2 * N  # two folds, once each
    assert not clean.duplicated(["fold", "image_index", "target"]).any()
    assert set(table.loc[table["severity"] > 0, "perturbation"]) == {"gaussian_noise", "contrast"}


def test_each_fold_is_read_alone(stored):
    paths, _ = stored
    assert saliency_folds(paths) == [0, 1]
    for fold in (0, 1):
        assert set(read_saliency(paths, fold=fold)["fold"]) == {fold}
    # one row group per fold in every file: a fold filter skips the other fold's maps
    for path in paths:
        metadata = pq.ParquetFile(path).metadata
        assert metadata.num_row_groups == 2


def test_perturbed_rows_keep_the_clean_targets_and_labels(stored):
    paths, labels = stored
    frame = read_saliency(paths, fold=1)
    clean = frame[frame["severity"] == 0].drop_duplicates("image_index")
    for _, group in frame.groupby(["perturbation", "severity"]):
        np.testing.assert_array_equal(group["target"], clean["target"])
        np.testing.assert_array_equal(group["label"], labels.reshape(-1))
        np.testing.assert_array_equal(group["image_index"], np.arange(N))


def test_saliency_change_from_the_stored_layout(stored):
    """The saliency-change metrics read the stored layout through read_saliency: every
    perturbed row is compared with its own clean map."""
    paths, _ = stored
    change = saliency_change(read_saliency(paths, fold=0), top_k_percent=10)
    assert len(change) == N * 3
    assert sorted(change["severity"].unique()) == [1, 2, 4]
    for column in CHANGE_COLUMNS:
        assert change[column].notna().all()


def test_perturbed_rows_without_clean_rows_are_an_error(stored):
    paths, _ = stored
    with pytest.raises(ValueError, match="no clean rows .* attribute_clean"):
        read_saliency(paths[1:])


def test_clean_rows_alone_stay_under_none(stored):
    paths, _ = stored
    frame = read_saliency(paths[0])
    assert set(frame["perturbation"]) == {CLEAN} and len(frame) == 2 * N


def test_with_clean_rows_orders_each_perturbation_after_its_reference(stored):
    paths, _ = stored
    frame = with_clean_rows(ds.dataset(paths, format="parquet").to_table().to_pandas())
    first = frame[frame["fold"] == 0]
    levels = first[["perturbation", "severity"]].drop_duplicates().values.tolist()
    assert levels == [["gaussian_noise", 0], ["gaussian_noise", 2],
                      ["contrast", 0], ["contrast", 1], ["contrast", 4]]  # fmt: skip


def test_attribute_perturbed_refuses_other_rows(model, stored, perturbed):
    paths, _ = stored
    clean = pq.read_table(paths[0]).to_pandas()
    with pytest.raises(ValueError, match="one model and method"):
        attribute_perturbed(model, clean, perturbed, METHOD, PARAMS)  # both folds
    one = clean[clean["fold"] == 0]
    with pytest.raises(ValueError, match="one model and method"):
        attribute_perturbed(model, one, perturbed, "saliency", {})
    short = {"contrast": ([1], perturbed["contrast"][1][:1, :3])}
    with pytest.raises(ValueError, match="holds 3 images.*rebuild the perturbed set"):
        attribute_perturbed(model, one, short, METHOD, PARAMS)


def test_models_by_fold_splits_members_per_fold():
    paths = ["f0/a", "f0/b", "f1/a", "f1/b"]
    assert models_by_fold(paths, [0, 1], ["a", "b"]) == [
        (0, ["f0/a", "f0/b"]),
        (1, ["f1/a", "f1/b"]),
    ]
    assert models_by_fold(["f3"], [3]) == [(3, ["f3"])]
    with pytest.raises(ValueError, match="3 model files for 2 folds"):
        models_by_fold(paths[:3], [0, 1])


# --- precision and encoding ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tables16_32(model, images, breast, perturbed):
    """One model's maps at both precisions, its clean and perturbed tables in one table."""
    labels = breast["test_labels"][:N]
    tables = {}
    for precision in ("float16", "float32"):
        clean = attribute_clean(model, images, labels, METHOD, PARAMS, KEYS, precision=precision)
        rows = attribute_perturbed(model, clean, perturbed, METHOD, PARAMS, precision=precision)
        tables[precision] = pa.concat_tables([clean, rows])
    return tables


def test_float16_maps_are_the_float32_maps_rounded(tables16_32):
    half, full = tables16_32["float16"], tables16_32["float32"]
    assert half.schema.equals(saliency_schema(28, 28, 2, completeness=True, precision="float16"))
    assert half.schema.field("saliency").type.value_type == pa.float16()
    maps16, maps32 = maps_from_table(half.to_pandas()), maps_from_table(full.to_pandas())
    np.testing.assert_array_equal(maps16, maps32.astype(np.float16).astype(np.float32))
    others = [name for name in half.column_names if name not in ("saliency", "is_constant")]
    assert half.select(others).equals(full.select(others))
    # is_constant describes the stored (rounded) maps
    np.testing.assert_array_equal(half.column("is_constant").to_numpy(), constant_maps(maps16))


def test_float16_moves_every_change_metric_by_little(tables16_32):
    """The change metrics on float16 maps stay within the bounds config/README.md states
    (measured on the default study: bench/saliency_storage.py)."""
    bounds = {"rmse": 1e-3, "ssim": 2e-3, "spearman": 1e-2, "topk_iou": 0.2}
    changes = {
        precision: saliency_change(with_clean_rows(table.to_pandas()), top_k_percent=10)
        for precision, table in tables16_32.items()
    }
    for column, bound in bounds.items():
        error = np.abs(changes["float16"][column] - changes["float32"][column]).max()
        assert error <= bound, (column, error)


def test_unknown_precision_is_refused(model, images, breast):
    with pytest.raises(ValueError, match="attribute.precision: unknown value 'bfloat16'"):
        attribute_clean(model, images, breast["test_labels"][:N], "saliency", {}, KEYS,
                        precision="bfloat16")  # fmt: skip


@pytest.mark.parametrize("precision", ["float16", "float32"])
def test_map_column_is_written_compactly(tables16_32, tmp_path, precision):
    """zstd, byte-stream split and no dictionary for the maps (dictionary pages of
    near-unique floats inflate them); the other columns keep their dictionaries."""
    table = tables16_32[precision]
    path = tmp_path / "maps.parquet"
    write_parquet(table, path, map_columns=["saliency"])
    group = pq.ParquetFile(path).metadata.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    maps = columns["saliency.list.element"]
    assert maps.compression == "ZSTD"
    assert not maps.has_dictionary_page
    assert "BYTE_STREAM_SPLIT" in maps.encodings
    assert columns["method"].has_dictionary_page
    default = tmp_path / "default.parquet"
    pq.write_table(table, default)
    assert path.stat().st_size < default.stat().st_size
    np.testing.assert_array_equal(
        maps_from_table(pq.read_table(path).to_pandas()), maps_from_table(table.to_pandas())
    )


def test_float16_halves_the_bytes_per_pixel(tables16_32, tmp_path):
    sizes = {}
    for precision, table in tables16_32.items():
        path = tmp_path / f"{precision}.parquet"
        write_parquet(table, path, map_columns=["saliency"])
        sizes[precision] = path.stat().st_size / (table.num_rows * 28 * 28)
    assert sizes["float16"] < 0.6 * sizes["float32"]


def test_map_column_options_name_the_leaf_column():
    schema = saliency_schema(28, 28, 2, completeness=True, precision="float32")
    options = map_column_options(schema, ["saliency"])
    assert options["use_byte_stream_split"] == ["saliency.list.element"]
    assert "saliency" not in options["use_dictionary"] and "method" in options["use_dictionary"]
    with pytest.raises(KeyError, match="maps"):
        map_column_options(schema, ["maps"])


def test_a_failed_part_leaves_no_file(tables16_32, tmp_path):
    table = tables16_32["float32"]
    path = tmp_path / "partial.parquet"

    def parts():
        yield table
        raise RuntimeError("job killed")

    with pytest.raises(RuntimeError, match="job killed"):
        write_parquet_parts(parts(), path, table.schema, map_columns=["saliency"])
    assert list(tmp_path.iterdir()) == []
