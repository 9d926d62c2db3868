"""Saliency methods on a small ResNet-18 trained on real BreastMNIST images."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from captum.attr import DeepLift, IntegratedGradients
from skimage.filters import sobel

from saliency_robustness import attribution
from saliency_robustness.attribution import (
    BLACK,
    COMPLETENESS_COLUMNS,
    METHODS,
    attribute_clean_and_perturbed,
    compute_maps,
    compute_maps_and_completeness,
    default_cam_layer,
    has_completeness,
    is_signed,
    method_params,
    saliency_schema,
    superpixels,
    top_k_targets,
    unshared_copy,
)
from saliency_robustness.evaluation import predict_proba
from saliency_robustness.metrics import constant_maps as is_constant
from saliency_robustness.models import (
    build_model,
    get_architecture,
    get_layer,
    images_to_tensor,
)
from saliency_robustness.tables import maps_from_table, read_parquet, write_parquet

NAMES = sorted(METHODS)
STOCHASTIC = sorted(name for name, method in METHODS.items() if method.stochastic)
CAM_LAYER = get_architecture("resnet18").cam_layer
# Few steps, samples and windows where a test is about shapes, batching and seeds, not
# accuracy; chunk sizes below the sample counts so that the chunking runs too.
FAST = {
    "integrated_gradients": {"n_steps": 4},
    "gradient_shap": {"n_samples": 4, "internal_batch_size": 3},
    "smoothgrad": {"nt_samples": 4, "internal_batch_size": 3},
    "deeplift": {"internal_batch_size": 3},
    "occlusion": {"window": 14, "stride": 7, "perturbations_per_eval": 4},
    "lime": {"n_samples": 8, "perturbations_per_eval": 4},
    "kernel_shap": {"n_samples": 8, "perturbations_per_eval": 4},
    # One forward pass per channel of the CAM layer and image: layer1 has the fewest (64).
    "scorecam": {"cam_layer": "layer1", "batch_size": 64},
    "ablationcam": {"cam_layer": "layer1", "batch_size": 64},
    "shap_partition": {"max_evals": 64},
    "shap_gradient": {"n_samples": 4, "batch_size": 3},
    "shap_kernel": {"n_samples": 64, "batch_size": 16},
}
# Methods that cost a forward pass per channel of the CAM layer run on fewer images.
PER_CHANNEL = {"scorecam", "ablationcam"}
KEYS = {"dataset": "breastmnist", "arch": "resnet18", "fold": 2}


def fast_params(name: str) -> dict:
    return method_params(name, FAST.get(name), CAM_LAYER)


@pytest.fixture(scope="module")
def images(clean_test_images) -> np.ndarray:
    return clean_test_images[:8]


@pytest.fixture(scope="module")
def predicted(model, images) -> np.ndarray:
    return predict_proba(model, images).argmax(axis=1)


@pytest.mark.parametrize("name", NAMES)
def test_maps_are_finite_with_input_shape_and_independent_of_batch_size(
    model, images, predicted, name, capsys
):
    n = 2 if name in PER_CHANNEL else 8
    params = fast_params(name)
    batched = compute_maps(model, images[:n], predicted[:n], name, params, batch_size=8, seed=3)
    single = compute_maps(model, images[:n], predicted[:n], name, params, batch_size=1, seed=3)
    assert batched.shape == (n, 28, 28)
    assert batched.dtype == np.float32
    assert np.isfinite(batched).all()
    scale = np.abs(batched).max()
    assert scale > 0
    np.testing.assert_allclose(single, batched, rtol=1e-4, atol=1e-5 * scale)
    if not is_signed(name, params):
        assert (batched >= 0).all()
    assert not is_constant(batched).all()
    err = capsys.readouterr().err
    assert "it/s" not in err and "%|" not in err, err  # no progress bars (ScoreCAM, ...)


def test_every_method_documents_its_channel_rule():
    for name, method in METHODS.items():
        assert method.channel_reduction.strip(), name
        assert method.library in {"captum", "pytorch-grad-cam", "shap", "control"}, name


def test_integrated_gradients_completeness(model, images, predicted):
    """Sum of attributions = logit(x) - logit(black baseline) for the target class."""
    x, targets = images[:2], predicted[:2]
    params = method_params("integrated_gradients", {"n_steps": 50}, CAM_LAYER)
    maps = compute_maps(model, x, targets, "integrated_gradients", params, batch_size=2)
    inputs = images_to_tensor(x)
    rows = np.arange(len(x))
    with torch.no_grad():
        logits = model(inputs).numpy()[rows, targets]
        baseline = model(torch.full_like(inputs, BLACK)).numpy()[rows, targets]
    expected = logits - baseline
    total = maps.reshape(len(x), -1).sum(axis=1)
    assert np.all(np.abs(expected) > 1e-3), expected  # a meaningful difference to explain
    np.testing.assert_allclose(total, expected, rtol=0.03, atol=1e-3)


def test_gradcam_at_the_default_layer_is_not_constant(model, clean_test_images):
    images = clean_test_images[:12]
    targets = predict_proba(model, images).argmax(axis=1)
    params = method_params("gradcam", {}, CAM_LAYER)
    maps = compute_maps(model, images, targets, "gradcam", params, batch_size=12)
    assert maps.shape == (12, 28, 28)
    constant = is_constant(maps)
    assert constant.mean() < 0.5, f"{constant.sum()} of 12 Grad-CAM maps are constant"
    varied = maps[~constant]
    assert (varied.min(axis=(1, 2)) >= 0).all() and (varied.max(axis=(1, 2)) <= 1 + 1e-6).all()


# The ResNets here; every registered architecture (after one training step, at 28 and 64 px)
# in tests/unit/test_architectures.py: untrained MobileNetV2 saturates its ReLU6 in eval
# mode and gives constant maps, which says nothing about the CAM layer.
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_gradcam_at_the_default_layer_is_not_constant_for_every_architecture(
    arch, model, clean_test_images
):
    """The trained ResNet-18 fixture, and an untrained (seeded) model for the others."""
    images = clean_test_images[:4]
    if arch == "resnet18":
        net = model
    else:
        torch.manual_seed(0)
        net = build_model(arch, 1, 2, 28).eval()
    targets = predict_proba(net, images).argmax(axis=1)
    params = method_params("gradcam", {}, None)  # None: default_cam_layer per batch
    maps = compute_maps(net, images, targets, "gradcam", params, batch_size=4)
    assert maps.shape == (4, 28, 28)
    assert not is_constant(maps).any()


def _output_size(net: torch.nn.Module, layer: str, size: int) -> tuple[int, int]:
    shapes = []
    handle = get_layer(net, layer).register_forward_hook(
        lambda _m, _i, output: shapes.append(tuple(output.shape[-2:]))
    )
    with torch.no_grad():
        net(torch.zeros(1, 1, size, size))
    handle.remove()
    return shapes[-1]


@pytest.mark.parametrize(
    ("arch", "size", "expected"),
    [
        ("resnet18", 28, "layer4"),  # CIFAR stem: layer4 4x4 (layer3 7x7)
        ("resnet50", 28, "layer4"),
        ("resnet18", 64, "layer4"),  # 8x8
        ("resnet50", 64, "layer4"),
        ("resnet18", 16, "layer3"),  # layer4 would be 2x2
        ("resnet18", 96, "layer3"),  # ImageNet stem: layer4 3x3, layer3 6x6
    ],
)
def test_default_cam_layer_keeps_at_least_4x4(arch, size, expected):
    torch.manual_seed(0)
    net = build_model(arch, 1, 2, size).eval()
    for preferred in (arch, None):  # the architecture's layer, or the walk over all layers
        layer = default_cam_layer(net, preferred, size)
        assert layer == expected
        assert min(_output_size(net, layer, size)) >= 4
    assert not net.training


def test_gradcam_rejects_an_unknown_layer(model, images, predicted):
    params = method_params("gradcam", {"cam_layer": "layer9"}, CAM_LAYER)
    with pytest.raises(KeyError, match="layer9"):
        compute_maps(model, images[:2], predicted[:2], "gradcam", params, 2)


# --- method parameters ------------------------------------------------------------------------


def test_method_params_merges_defaults_and_config():
    assert method_params("saliency", None, CAM_LAYER) == {}
    merged = method_params("integrated_gradients", {"n_steps": 20}, CAM_LAYER)
    assert merged == {**METHODS["integrated_gradients"].defaults, "n_steps": 20}
    assert method_params("gradcam", None, "layer3") == {"cam_layer": "layer3"}
    assert method_params("gradcam", {"cam_layer": "layer2"}, "layer4") == {"cam_layer": "layer2"}
    assert method_params("scorecam", None) == {**METHODS["scorecam"].defaults, "cam_layer": None}


def test_method_params_checks_named_values_and_sign_follows_the_base():
    with pytest.raises(ValueError, match=r"smoothgrad\.base: unknown value 'occlusion'"):
        method_params("smoothgrad", {"base": "occlusion"}, None)
    assert not is_signed("smoothgrad", method_params("smoothgrad", None))
    for base in ("input_x_gradient", "integrated_gradients"):
        assert is_signed("smoothgrad", method_params("smoothgrad", {"base": base}))
    assert is_signed("integrated_gradients") and not is_signed("saliency")


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("saliency", {"n_steps": 5}),
        ("integrated_gradients", {"steps": 5}),
        ("integrated_gradients", {"cam_layer": "layer4"}),
        ("gradcam", {"n_steps": 5}),
    ],
)
def test_method_params_rejects_unknown_keys(name, params):
    with pytest.raises(ValueError, match=rf"attribute\.params\.{name}: unknown keys") as excinfo:
        method_params(name, params, CAM_LAYER)
    assert repr(next(iter(params))) in str(excinfo.value)


def test_unknown_method_lists_valid_names():
    with pytest.raises(KeyError) as excinfo:
        method_params("deconvolution", None, CAM_LAYER)
    for name in NAMES:
        assert name in str(excinfo.value)


# --- is_constant ------------------------------------------------------------------------------


def test_is_constant_flags_constant_maps():
    maps = np.zeros((5, 28, 28), np.float32)
    maps[1] = 3.5
    maps[2, 10, 10] = 1.0
    maps[3] = 1e6
    maps[3, 0, 0] += 1.0
    maps[4] = np.random.default_rng(0).normal(size=(28, 28))
    assert is_constant(maps).tolist() == [True, True, False, False, False]


# --- clean and perturbed table ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_set(clean_test_images, breast):
    clean = clean_test_images[:6]
    labels = breast["test_labels"][:6]
    perturbed = {
        "gaussian_noise": ([1, 5], np.stack([255 - clean, clean // 4])),
        "contrast": ([3], np.stack([clean // 2 + 64])),
    }
    return clean, labels, perturbed


@pytest.fixture(scope="module")
def saliency_table(model, small_set) -> pa.Table:
    clean, labels, perturbed = small_set
    return attribute_clean_and_perturbed(
        model, clean, labels, perturbed, "saliency", {}, KEYS, batch_size=4
    )


def test_table_matches_the_saliency_schema(saliency_table):
    assert saliency_table.schema.equals(saliency_schema(28, 28, 2, completeness=True))
    # the columns every saliency table has (older ones too) come first
    base = saliency_schema(28, 28, 2)
    assert saliency_table.schema.names[: len(base)] == base.names
    assert saliency_table.schema.names[len(base) :] == list(COMPLETENESS_COLUMNS)
    assert saliency_table.num_rows == 6 * (2 + 3)


def test_table_rows_and_order(saliency_table):
    frame = saliency_table.to_pandas()
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


def test_clean_rows_repeat_under_each_perturbation_with_equal_maps(
    model, saliency_table, small_set
):
    clean, labels, _ = small_set
    frame = saliency_table.to_pandas()
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


def test_target_is_fixed_from_the_clean_prediction(model, saliency_table, small_set):
    clean, _, perturbed = small_set
    frame = saliency_table.to_pandas()
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
    table = attribute_clean_and_perturbed(
        model, clean, labels, {"contrast": perturbed["contrast"]}, "saliency", {}, KEYS,
        target="label", batch_size=6,
    )  # fmt: skip
    frame = table.to_pandas()
    for _, group in frame.groupby("severity"):
        np.testing.assert_array_equal(group["target"].to_numpy(), labels.reshape(-1))


@pytest.mark.parametrize("name", NAMES)
def test_every_method_builds_a_schema_conform_table(model, small_set, name):
    clean, labels, perturbed = small_set
    n = 1 if name in PER_CHANNEL else 3
    table = attribute_clean_and_perturbed(
        model, clean[:n], labels[:n], {"contrast": ([3], perturbed["contrast"][1][:, :n])},
        name, fast_params(name), KEYS, batch_size=3,
    )  # fmt: skip
    assert table.schema.equals(saliency_schema(28, 28, 2, completeness=True))
    frame = table.to_pandas()
    assert frame["severity"].tolist() == [0] * n + [3] * n
    assert set(frame["signed"]) == {is_signed(name, fast_params(name))}
    assert np.isfinite(maps_from_table(frame)).all()
    # filled for methods with a completeness property, null for every other one
    filled = has_completeness(name, fast_params(name))
    assert name not in {"integrated_gradients", "deeplift"} or filled
    for column in COMPLETENESS_COLUMNS:
        assert table.column(column).null_count == (0 if filled else len(frame)), column


def test_no_perturbations_gives_clean_rows_named_none(model, small_set):
    clean, labels, _ = small_set
    table = attribute_clean_and_perturbed(model, clean, labels, {}, "saliency", {}, KEYS)
    frame = table.to_pandas()
    assert frame["perturbation"].unique().tolist() == ["none"]
    assert frame["severity"].unique().tolist() == [0]
    assert len(frame) == 6


def test_same_configuration_gives_the_same_table(model, small_set, saliency_table):
    clean, labels, perturbed = small_set
    again = attribute_clean_and_perturbed(
        model, clean, labels, perturbed, "saliency", {}, KEYS, batch_size=4
    )
    assert again.equals(saliency_table)


# --- completeness: convergence delta and relative error ---------------------------------------


def _logit_gap(model, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """f(x) - f(black) of the target logits, from forward passes here."""
    inputs = images_to_tensor(x)
    rows = np.arange(len(x))
    with torch.no_grad():
        logits = model(inputs).double().numpy()[rows, targets]
        baseline = model(torch.full_like(inputs, BLACK)).double().numpy()[rows, targets]
    return logits - baseline


def test_integrated_gradients_convergence_delta_is_the_residual_of_the_unreduced_map(
    model, images, predicted
):
    """Known answer: the stored delta is sum(captum's attributions before the channel
    sum) - (f(x) - f(black)), f the target logit; the error is |delta| / |that gap|."""
    x, targets = images[:3], predicted[:3]
    params = method_params("integrated_gradients", {"n_steps": 8})
    maps, check = compute_maps_and_completeness(
        model, x, targets, "integrated_gradients", params, batch_size=2
    )
    np.testing.assert_array_equal(
        maps, compute_maps(model, x, targets, "integrated_gradients", params, batch_size=2)
    )
    inputs = images_to_tensor(x).requires_grad_(True)
    attributions, captum_delta = IntegratedGradients(model).attribute(
        inputs, baselines=torch.full_like(inputs, BLACK), target=torch.as_tensor(targets),
        n_steps=8, return_convergence_delta=True,
    )  # fmt: skip
    total = attributions.detach().double().sum(dim=(1, 2, 3)).numpy()
    gap = _logit_gap(model, x, targets)
    np.testing.assert_allclose(check.gap, gap, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(check.delta, total - gap, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(check.delta, captum_delta.double().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(check.error, np.abs(total - gap) / np.abs(gap), rtol=1e-3)
    assert np.all(np.abs(check.delta) > 1e-6)  # 8 steps leave a residual to measure
    # the table stores the same values per row (clean rows)
    table = attribute_clean_and_perturbed(
        model, x, np.zeros(3, int), {}, "integrated_gradients", params, KEYS, batch_size=2
    ).to_pandas()
    np.testing.assert_allclose(table["convergence_delta"], check.delta, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(table["completeness_error"], check.error, rtol=1e-5)


def test_completeness_error_shrinks_with_more_integrated_gradients_steps(model, images, predicted):
    x, targets = images[:6], predicted[:6]
    errors = {}
    for steps in (4, 64):
        params = method_params("integrated_gradients", {"n_steps": steps})
        _, check = compute_maps_and_completeness(
            model, x, targets, "integrated_gradients", params, batch_size=6
        )
        errors[steps] = check.error
    assert np.isfinite(errors[4]).all() and np.isfinite(errors[64]).all()
    assert np.median(errors[64]) < np.median(errors[4]) / 4, errors
    assert errors[64].max() < errors[4].max(), errors
    assert np.median(errors[64]) < 0.05, errors


@pytest.mark.filterwarnings("ignore::UserWarning")  # captum's notices on the direct call
def test_deeplift_convergence_delta_equals_captums(model, images, predicted):
    x, targets = images[:3], predicted[:3]
    params = method_params("deeplift", {"internal_batch_size": 2})
    maps, check = compute_maps_and_completeness(model, x, targets, "deeplift", params, 3)
    inputs = images_to_tensor(x)
    attributions, captum_delta = DeepLift(unshared_copy(model, inputs)).attribute(
        inputs, baselines=torch.full_like(inputs, BLACK), target=torch.as_tensor(targets),
        return_convergence_delta=True,
    )  # fmt: skip
    np.testing.assert_allclose(maps, attributions.detach().sum(dim=1).numpy(), atol=1e-6)
    np.testing.assert_allclose(check.gap, _logit_gap(model, x, targets), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(check.delta, captum_delta.double().numpy(), atol=1e-4)
    assert np.all(check.error < 1e-3)  # summation-to-delta holds at 28 px


def test_smoothgrad_over_integrated_gradients_stores_the_mean_delta(model, images, predicted):
    x, targets = images[:2], predicted[:2]
    params = method_params(
        "smoothgrad",
        {"base": "integrated_gradients", "nt_samples": 3, "n_steps": 4, "internal_batch_size": 8},
    )
    assert has_completeness("smoothgrad", params)
    assert not has_completeness("smoothgrad", fast_params("smoothgrad"))  # base saliency
    maps, check = compute_maps_and_completeness(model, x, targets, "smoothgrad", params, 2, seed=1)
    np.testing.assert_array_equal(
        maps, compute_maps(model, x, targets, "smoothgrad", params, 2, seed=1)
    )
    # gap: mean f(x + noise) - f(black), near the clean gap for small noise; delta: residual
    np.testing.assert_allclose(check.gap + check.delta, maps.reshape(2, -1).sum(axis=1), rtol=1e-4)
    np.testing.assert_allclose(check.gap, _logit_gap(model, x, targets), rtol=0.5)
    assert np.isfinite(check.error).all()


def test_methods_without_completeness_store_nulls(model, small_set):
    clean, labels, _ = small_set
    for name in ("saliency", "input_x_gradient", "gradient_shap", "gradcam", "occlusion"):
        assert not has_completeness(name, fast_params(name)), name
        maps, check = compute_maps_and_completeness(
            model, clean[:2], np.zeros(2, int), name, fast_params(name), 2, seed=0
        )
        assert check is None and maps.shape == (2, 28, 28)
    table = attribute_clean_and_perturbed(
        model, clean[:2], labels[:2], {}, "input_x_gradient", {}, KEYS
    )
    for column in COMPLETENESS_COLUMNS:
        assert table.schema.field(column).type == pa.float32()
        assert table.column(column).null_count == 2
        assert np.isnan(table.column(column).to_pandas()).all()


def test_completeness_error_is_nan_where_the_output_does_not_change(model):
    """A black image is its own baseline: f(x) - f(black) = 0, no relative error."""
    black = np.zeros((2, 28, 28), np.uint8)
    params = method_params("integrated_gradients", {"n_steps": 4})
    _, check = compute_maps_and_completeness(
        model, black, np.array([0, 1]), "integrated_gradients", params, 2
    )
    np.testing.assert_allclose(check.gap, [0.0, 0.0], atol=1e-6)  # batch of 2 vs 1 image
    np.testing.assert_allclose(check.delta, [0.0, 0.0], atol=1e-7)
    assert np.isnan(check.error).all()


def test_not_converged_integrated_gradients_is_logged(
    model, images, predicted, caplog, monkeypatch
):
    args = (model, images[:4], predicted[:4], {}, "integrated_gradients")
    with caplog.at_level("WARNING", logger="saliency_robustness.attribution"):
        attribute_clean_and_perturbed(*args, method_params(args[-1], {"n_steps": 64}), KEYS)
        assert "completeness error" not in caplog.text  # converged: 0.07 % on this model
        # this small model's path integral is smooth: 1 step gives about 10 %
        monkeypatch.setattr(attribution, "COMPLETENESS_WARNING", 0.01)
        attribute_clean_and_perturbed(*args, method_params(args[-1], {"n_steps": 1}), KEYS)
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


# --- DeepLift and guided backpropagation on ResNets ---------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # captum's notices on the direct call
def test_deeplift_needs_the_unshared_copy_and_sums_to_the_logit_difference(
    model, images, predicted
):
    """torchvision's ResNets call one in-place ReLU twice per block, which captum's DeepLift
    rejects; on ``unshared_copy`` the attributions sum to logit(x) - logit(black)."""
    x, targets = images[:2], predicted[:2]
    inputs = images_to_tensor(x)
    baselines = torch.full_like(inputs, BLACK)
    with pytest.raises(RuntimeError, match="used more than once"):
        DeepLift(model).attribute(inputs, baselines, target=torch.as_tensor(targets))
    maps = compute_maps(model, x, targets, "deeplift", method_params("deeplift", None), 2)
    rows = np.arange(len(x))
    with torch.no_grad():
        expected = (model(inputs) - model(baselines)).numpy()[rows, targets]
    assert np.all(np.abs(expected) > 1e-3), expected
    np.testing.assert_allclose(maps.reshape(2, -1).sum(axis=1), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("size", [28, 72])  # CIFAR stem; ImageNet stem with its max-pool
def test_unshared_copy_computes_the_same_outputs_and_leaves_the_model_alone(size):
    torch.manual_seed(0)
    net = build_model("resnet18", 1, 2, size).eval()
    x = torch.rand(2, 1, size, size) * 2 - 1
    before = [type(m).__name__ for m in net.modules()]
    copy = unshared_copy(net, x)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), net(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(copy(x), net(x), rtol=1e-5, atol=1e-6)  # counters restart
    assert [type(m).__name__ for m in net.modules()] == before
    relus = [m for m in copy.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    calls = {}
    hooks = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(m, calls.get(m, 0) + 1))
             for m in relus]  # fmt: skip
    with torch.no_grad():
        copy(x)
    for hook in hooks:
        hook.remove()
    assert set(calls.values()) == {1}  # every ReLU module is used once per forward pass


# --- controls -----------------------------------------------------------------------------------


def test_sobel_control_is_skimage_sobel_of_the_image(model, clean_test_images):
    images = clean_test_images[:5]
    maps = compute_maps(model, images, np.zeros(5, int), "sobel", {}, batch_size=2)
    expected = np.stack([sobel(image) for image in images]).astype(np.float32)
    np.testing.assert_array_equal(maps, expected)


def test_random_control_is_seeded_and_unrelated_between_clean_and_perturbed(model, images):
    targets = np.zeros(len(images), int)
    maps = compute_maps(model, images, targets, "random", {}, batch_size=3, seed=1)
    assert ((maps >= 0) & (maps < 1)).all()
    again = compute_maps(model, images, targets, "random", {}, batch_size=8, seed=1)
    np.testing.assert_array_equal(maps, again)
    darker = compute_maps(model, images // 2, targets, "random", {}, batch_size=8, seed=1)
    for a, b in zip(maps, darker, strict=True):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.2


# --- seeds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_methods_are_fixed_by_the_seed(model, images, predicted, name):
    x, targets = images[:2], predicted[:2]
    params = fast_params(name)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    first = compute_maps(model, x, targets, name, params, batch_size=2, seed=5)
    # The global generators are neither reseeded nor advanced by an explicit seed.
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)
    torch.rand(10), np.random.rand(10)  # noqa: B018 - moving the global state changes nothing
    np.testing.assert_array_equal(
        compute_maps(model, x, targets, name, params, batch_size=1, seed=5), first
    )
    assert not np.array_equal(
        compute_maps(model, x, targets, name, params, batch_size=2, seed=6), first
    )
    torch.manual_seed(5)  # without a seed: fixed by torch.manual_seed, as in the workflow
    unseeded = compute_maps(model, x, targets, name, params, batch_size=2)
    torch.manual_seed(5)
    np.testing.assert_array_equal(
        compute_maps(model, x, targets, name, params, batch_size=2), unseeded
    )


def test_same_configuration_gives_the_same_table_for_a_stochastic_method(model, small_set):
    clean, labels, perturbed = small_set
    args = (model, clean[:2], labels[:2], {"contrast": ([3], perturbed["contrast"][1][:, :2])},
            "smoothgrad", fast_params("smoothgrad"), KEYS)  # fmt: skip
    first = attribute_clean_and_perturbed(*args, batch_size=2, seed=7)
    assert first.equals(attribute_clean_and_perturbed(*args, batch_size=2, seed=7))
    maps = maps_from_table(first.to_pandas())
    # Maps do not depend on the batch size (probabilities may, in the last bits).
    other_batch = attribute_clean_and_perturbed(*args, batch_size=1, seed=7)
    np.testing.assert_array_equal(maps_from_table(other_batch.to_pandas()), maps)


# --- superpixels and targets ------------------------------------------------------------------


def test_slic_gives_enough_superpixels_on_real_28px_images(clean_test_images):
    defaults = METHODS["lime"].defaults
    assert METHODS["kernel_shap"].defaults["n_segments"] == defaults["n_segments"]
    masks = superpixels(
        images_to_tensor(clean_test_images), defaults["n_segments"], defaults["compactness"]
    ).numpy()
    assert masks.shape == (len(clean_test_images), 1, 28, 28)
    counts = np.array([len(np.unique(mask)) for mask in masks])
    assert counts.min() >= 20, np.sort(counts)[:10]
    for mask, count in zip(masks, counts, strict=True):  # ids 0..count-1 (start_label=0)
        assert mask.min() == 0 and mask.max() == count - 1


def test_top_k_targets_gives_one_row_per_image_and_target():
    scores = np.array([[0.1, 0.9, 0.5], [0.7, 0.7, 0.2]])
    image_index, targets = top_k_targets(scores, 2)
    assert image_index.tolist() == [0, 0, 1, 1]
    assert targets.tolist() == [1, 2, 0, 1]  # by decreasing score, ties: lower class first
    with pytest.raises(ValueError, match="1 <= k"):
        top_k_targets(scores, 4)
