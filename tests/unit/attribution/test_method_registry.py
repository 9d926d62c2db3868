"""The saliency-method registry: light to import, every entry's implementation and channel
reduction, and the checks of configured parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from saliency_robustness.attribution.registry import (
    METHODS,
    ChannelReduction,
    channel_reduction,
    is_signed,
    method_params,
)

NAMES = sorted(METHODS)
CAM_LAYER = "layer4"
SRC = Path(__file__).resolve().parents[3] / "src"
# What the Snakemake process and the table jobs must not import through the registry.
HEAVY = (
    "torch", "torchvision", "captum", "pytorch_grad_cam", "shap", "imgaug", "torchio",
    "pandas", "pyarrow",
)  # fmt: skip


def test_the_registry_imports_no_deep_learning_stack():
    """In a fresh interpreter: importing the registry and reading every entry (its
    reduction, sign and parameters) loads none of the heavy packages."""
    code = (
        "import json, sys\n"
        "from saliency_robustness.attribution import registry\n"
        "for name in registry.METHODS:\n"
        "    registry.method_params(name, None)\n"
        "    registry.channel_reduction(name), registry.is_signed(name)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("name", NAMES)
def test_every_implementation_resolves_to_the_named_callable(name):
    module, function = METHODS[name].compute.split(":")
    implementation = METHODS[name].implementation()
    assert callable(implementation)
    assert implementation.__module__ == f"saliency_robustness.attribution.{module}"
    assert implementation.__name__ == function


def test_every_method_registers_a_channel_reduction():
    for name, method in METHODS.items():
        assert isinstance(method.channel_reduction, ChannelReduction), name
        assert method.library in {"captum", "pytorch-grad-cam", "shap", "control"}, name
    assert {str(r) for r in ChannelReduction} == {"abs_sum", "sum", "mean", "none"}


def test_channel_reductions_of_the_special_cases():
    """What each kind of method's maps are made of (config/README.md "Saliency methods")."""
    expected = {
        ChannelReduction.ABS_SUM: ["saliency", "guided_backprop", "guided_gradcam"],
        ChannelReduction.SUM: [
            "input_x_gradient", "integrated_gradients", "gradient_shap", "deeplift",
            "shap_partition", "shap_gradient", "sobel",
        ],
        ChannelReduction.MEAN: ["occlusion", "lime", "kernel_shap"],
        ChannelReduction.NONE: [
            "shap_kernel", "random", "gradcam", "gradcam_plus_plus", "hirescam", "xgradcam",
            "layercam", "eigencam", "eigengradcam", "scorecam", "ablationcam",
        ],
    }  # fmt: skip
    assert sorted(sum(expected.values(), [])) == sorted(set(NAMES) - {"smoothgrad"})
    for reduction, names in expected.items():
        for name in names:
            assert channel_reduction(name, method_params(name, None)) == reduction, name
    # smoothgrad reduces NoiseTunnel's mean attribution as its base does
    assert channel_reduction("smoothgrad") == ChannelReduction.ABS_SUM
    for base in ("saliency", "input_x_gradient", "integrated_gradients"):
        params = method_params("smoothgrad", {"base": base})
        assert channel_reduction("smoothgrad", params) == channel_reduction(base), base


def test_reductions_apply_to_arrays_of_either_library():
    attributions = np.array([[[[1.0]], [[-2.0]], [[4.0]]]])  # (1, 3, 1, 1)
    assert ChannelReduction.ABS_SUM.apply(attributions).tolist() == [[[7.0]]]
    assert ChannelReduction.SUM.apply(attributions).tolist() == [[[3.0]]]
    assert ChannelReduction.MEAN.apply(attributions).tolist() == [[[1.0]]]
    maps = attributions[:, 0]
    assert ChannelReduction.NONE.apply(maps) is maps
    tensor = torch.as_tensor(attributions)
    for reduction in (ChannelReduction.ABS_SUM, ChannelReduction.SUM, ChannelReduction.MEAN):
        reduced = reduction.apply(tensor)
        assert isinstance(reduced, torch.Tensor) and reduced.dtype == torch.float64
        assert reduced.tolist() == reduction.apply(attributions).tolist()


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
