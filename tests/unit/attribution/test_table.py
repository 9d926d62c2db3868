"""Saliency tables of one model and method, as the attribute rules write them: the clean
table (targets fixed from the clean image) and the perturbed table (the same targets),
their schema, rows and order, completeness columns, Parquet round trip and determinism,
and the comparison form ``tables.with_clean_rows`` builds from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from saliency_robustness.analysis.map_similarity import constant_maps as is_constant
from saliency_robustness.attribution import table as attribution_table
from saliency_robustness.attribution.maps import compute_maps, compute_maps_and_completeness
from saliency_robustness.attribution.registry import (
    METHODS,
    has_completeness,
    is_signed,
    method_params,
)
from saliency_robustness.attribution.table import (
    COMPLETENESS_COLUMNS,
    attribute_clean,
    attribute_perturbed,
    saliency_schema,
)
from saliency_robustness.evaluation import predict_proba
from saliency_robustness.tables import (
    maps_from_table,
    read_parquet,
    with_clean_rows,
    write_parquet,
)

NAMES = sorted(METHODS)
# Methods that cost a forward pass per channel of the CAM layer run on fewer images.
PER_CHANNEL = {"scorecam", "ablationcam"}
KEYS = {"dataset": "breastmnist", "arch": "resnet18", "fold": 2}


@pytest.fixture(scope="module")
def saliency_parts(model, small_set) -> tuple[pa.Table, pa.Table]:
    """One model's saliency maps as stored: the clean table and the perturbed table."""
    clean, labels, perturbed = small_set
    clean_table = attribute_clean(model, clean, labels, "saliency", {}, KEYS, batch_size=4)
    perturbed_table = attribute_perturbed(
        model, clean_table, perturbed, "saliency", {}, batch_size=4
    )
    return clean_table, perturbed_table


@pytest.fixture(scope="module")
def saliency_table(saliency_parts) -> pa.Table:
    """Both parts in one table (clean rows first), as a study's saliency files read back."""
    return pa.concat_tables(saliency_parts)


@pytest.fixture(scope="module")
def comparison(saliency_table) -> pd.DataFrame:
    """The comparison form: the clean rows as severity 0 of each perturbation."""
    return with_clean_rows(saliency_table.to_pandas())


def test_table_matches_the_saliency_schema(saliency_parts):
    clean_table, perturbed_table = saliency_parts
    base = saliency_schema(28, 28, 2)
    for table in saliency_parts:
        assert table.schema.equals(saliency_schema(28, 28, 2, completeness=True))
        # the columns every saliency table has (older ones too) come first
        assert table.schema.names[: len(base)] == base.names
        assert table.schema.names[len(base) :] == list(COMPLETENESS_COLUMNS)
    assert clean_table.num_rows == 6 and perturbed_table.num_rows == 6 * 3


def test_table_rows_and_order(saliency_table, comparison):
    levels = saliency_table.to_pandas()[["perturbation", "severity"]].drop_duplicates()
    assert levels.values.tolist() == [["none", 0], ["gaussian_noise", 1],
                                      ["gaussian_noise", 5], ["contrast", 3]]  # fmt: skip
    frame = comparison
    levels = frame[["perturbation", "severity"]].drop_duplicates().values.tolist()
    assert levels == [["gaussian_noise", 0], ["gaussian_noise", 1], ["gaussian_noise", 5],
                      ["contrast", 0], ["contrast", 3]]  # fmt: skip
    for _, group in frame.groupby(["perturbation", "severity"]):
        assert group["image_index"].tolist() == list(range(6))
    assert set(frame["dataset"]) == {"breastmnist"}
    assert set(frame["arch"]) == {"resnet18"}
    assert set(frame["fold"]) == {2}
    assert set(frame["method"]) == {"saliency"}
    assert not frame["signed"].any()
    assert set(frame["height"]) == {28} and set(frame["width"]) == {28}


def test_clean_rows_repeat_under_each_perturbation_with_equal_maps(model, comparison, small_set):
    clean, labels, _ = small_set
    frame = comparison
    clean_rows = frame[frame["severity"] == 0]
    noise = clean_rows[clean_rows["perturbation"] == "gaussian_noise"]
    contrast = clean_rows[clean_rows["perturbation"] == "contrast"]
    np.testing.assert_array_equal(maps_from_table(noise), maps_from_table(contrast))
    for column in ("predicted", "target", "target_probability", "label", "is_constant"):
        np.testing.assert_array_equal(noise[column].to_numpy(), contrast[column].to_numpy())
    probs = predict_proba(model, clean, 4)
    direct = compute_maps(model, clean, probs.argmax(axis=1), "saliency", {}, 4)
    np.testing.assert_allclose(maps_from_table(noise), direct, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(noise["label"], labels.reshape(-1))


def test_target_is_fixed_from_the_clean_prediction(model, comparison, small_set):
    clean, _, perturbed = small_set
    frame = comparison
    clean_probs = predict_proba(model, clean, 4)
    clean_predicted = clean_probs.argmax(axis=1)
    for _, group in frame.groupby(["perturbation", "severity"]):
        np.testing.assert_array_equal(group["target"].to_numpy(), clean_predicted)
    inverted = frame[(frame["perturbation"] == "gaussian_noise") & (frame["severity"] == 1)]
    probs = predict_proba(model, perturbed["gaussian_noise"][1][0], 4)
    np.testing.assert_array_equal(inverted["predicted"].to_numpy(), probs.argmax(axis=1))
    np.testing.assert_allclose(
        inverted["target_probability"].to_numpy(), probs[np.arange(6), clean_predicted], atol=1e-6
    )
    np.testing.assert_allclose(np.stack(inverted["probabilities"]), probs, atol=1e-6)


def test_table_is_nan_free(saliency_table):
    frame = saliency_table.to_pandas()
    assert np.isfinite(maps_from_table(frame)).all()
    assert np.isfinite(np.stack(frame["probabilities"])).all()
    assert np.isfinite(frame["target_probability"]).all()
    for column in saliency_table.column_names:
        # saliency has no completeness property: its completeness columns are all null
        nulls = saliency_table.num_rows if column in COMPLETENESS_COLUMNS else 0
        assert saliency_table.column(column).null_count == nulls, column


def test_is_constant_column_matches_the_maps(saliency_table):
    frame = saliency_table.to_pandas()
    np.testing.assert_array_equal(frame["is_constant"], is_constant(maps_from_table(frame)))


def test_table_round_trips_through_parquet(tmp_path, saliency_table):
    path = tmp_path / "saliency.parquet"
    write_parquet(saliency_table, path)
    frame = read_parquet(path)
    np.testing.assert_array_equal(
        maps_from_table(frame), maps_from_table(saliency_table.to_pandas())
    )
    assert frame["severity"].dtype == np.int8


def test_true_label_as_target(model, small_set):
    clean, labels, perturbed = small_set
    clean_table = attribute_clean(
        model, clean, labels, "saliency", {}, KEYS, target="label", batch_size=6
    )
    perturbed_table = attribute_perturbed(
        model, clean_table, {"contrast": perturbed["contrast"]}, "saliency", {}, batch_size=6
    )
    for table in (clean_table, perturbed_table):
        np.testing.assert_array_equal(table.column("target").to_numpy(), labels.reshape(-1))


@pytest.mark.parametrize("name", NAMES)
def test_every_method_builds_a_schema_conform_table(model, small_set, name, fast_params):
    clean, labels, perturbed = small_set
    n = 1 if name in PER_CHANNEL else 3
    params = fast_params(name)
    clean_table = attribute_clean(model, clean[:n], labels[:n], name, params, KEYS, batch_size=3)
    contrast = {"contrast": ([3], perturbed["contrast"][1][:, :n])}
    perturbed_table = attribute_perturbed(model, clean_table, contrast, name, params, batch_size=3)
    # filled for methods with a completeness property, null for every other one
    filled = has_completeness(name, params)
    assert name not in {"integrated_gradients", "deeplift"} or filled
    for table, severity in ((clean_table, 0), (perturbed_table, 3)):
        assert table.schema.equals(saliency_schema(28, 28, 2, completeness=True))
        frame = table.to_pandas()
        assert frame["severity"].tolist() == [severity] * n
        assert set(frame["signed"]) == {is_signed(name, params)}
        assert np.isfinite(maps_from_table(frame)).all()
        for column in COMPLETENESS_COLUMNS:
            assert table.column(column).null_count == (0 if filled else n), column


def test_no_perturbations_gives_clean_rows_named_none(model, small_set):
    clean, labels, _ = small_set
    frame = with_clean_rows(attribute_clean(model, clean, labels, "saliency", {}, KEYS).to_pandas())
    assert frame["perturbation"].unique().tolist() == ["none"]
    assert frame["severity"].unique().tolist() == [0]
    assert len(frame) == 6


def test_same_configuration_gives_the_same_table(model, small_set, saliency_parts):
    clean, labels, perturbed = small_set
    clean_table = attribute_clean(model, clean, labels, "saliency", {}, KEYS, batch_size=4)
    assert clean_table.equals(saliency_parts[0])
    again = attribute_perturbed(model, clean_table, perturbed, "saliency", {}, batch_size=4)
    assert again.equals(saliency_parts[1])


def test_same_configuration_gives_the_same_table_for_a_stochastic_method(
    model, small_set, fast_params
):
    clean, labels, perturbed = small_set
    params = fast_params("smoothgrad")
    contrast = {"contrast": ([3], perturbed["contrast"][1][:, :2])}

    def tables(batch_size: int) -> tuple[pa.Table, pa.Table]:
        options = {"batch_size": batch_size, "seed": 7}
        clean_table = attribute_clean(
            model, clean[:2], labels[:2], "smoothgrad", params, KEYS, **options
        )
        return clean_table, attribute_perturbed(
            model, clean_table, contrast, "smoothgrad", params, **options
        )

    first = tables(2)
    for part, again in zip(first, tables(2), strict=True):
        assert part.equals(again)
    # Maps do not depend on the batch size (probabilities may, in the last bits).
    for part, other_batch in zip(first, tables(1), strict=True):
        np.testing.assert_array_equal(
            maps_from_table(other_batch.to_pandas()), maps_from_table(part.to_pandas())
        )


# --- completeness columns -------------------------------------------------------------------


def test_methods_without_completeness_store_nulls(model, small_set, fast_params):
    clean, labels, _ = small_set
    for name in ("saliency", "input_x_gradient", "gradient_shap", "gradcam", "occlusion"):
        assert not has_completeness(name, fast_params(name)), name
        maps, check = compute_maps_and_completeness(
            model, clean[:2], np.zeros(2, int), name, fast_params(name), 2, seed=0
        )
        assert check is None and maps.shape == (2, 28, 28)
    table = attribute_clean(model, clean[:2], labels[:2], "input_x_gradient", {}, KEYS)
    for column in COMPLETENESS_COLUMNS:
        assert table.schema.field(column).type == pa.float32()
        assert table.column(column).null_count == 2
        assert np.isnan(table.column(column).to_pandas()).all()


def test_not_converged_integrated_gradients_is_logged(
    model, images, predicted, caplog, monkeypatch
):
    args = (model, images[:4], predicted[:4], "integrated_gradients")
    with caplog.at_level("WARNING", logger="saliency_robustness.attribution"):
        attribute_clean(*args, method_params(args[-1], {"n_steps": 64}), KEYS)
        assert "completeness error" not in caplog.text  # converged: 0.07 % on this model
        # this small model's path integral is smooth: 1 step gives about 10 %
        monkeypatch.setattr(attribution_table, "COMPLETENESS_WARNING", 0.01)
        attribute_clean(*args, method_params(args[-1], {"n_steps": 1}), KEYS)
    assert "median relative completeness error" in caplog.text
    assert "n_steps 1" in caplog.text


def test_an_old_saliency_table_without_the_completeness_columns_still_reads(
    tmp_path, saliency_table
):
    old = saliency_table.drop_columns(list(COMPLETENESS_COLUMNS))
    assert old.schema.equals(saliency_schema(28, 28, 2))
    write_parquet(old, tmp_path / "old.parquet")
    write_parquet(saliency_table, tmp_path / "new.parquet")
    frame = read_parquet([tmp_path / "old.parquet", tmp_path / "new.parquet"])
    assert len(frame) == 2 * saliency_table.num_rows
    assert frame["convergence_delta"].isna().all()
    np.testing.assert_array_equal(
        maps_from_table(frame), np.concatenate([maps_from_table(old.to_pandas())] * 2)
    )
