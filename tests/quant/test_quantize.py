"""`quantize()`: dispatch, calibration, and the one-line errors users see."""

import numpy as np
import pytest
from onnx import helper
from pydantic import ValidationError

from ingot.quant import QuantError, QuantSpec, quantize
from tests.quant.util import make_model, mlp, ops


def _no_matmul():
    return make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": ["m", 8]}, {"y": ["m", 8]}, {})


def _attention_only():
    """Q @ K^T: a MatMul of two activations, which is not a layer."""
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"], name="attn/MatMul"), helper.make_node("Softmax", ["s"], ["p"])]
    return make_model(nodes, {"q": ["m", 64], "k": [64, "n"]}, {"p": ["m", "n"]}, {})


@pytest.mark.parametrize("model", [_no_matmul, _attention_only])
def test_nothing_to_quantize(model):
    with pytest.raises(QuantError, match=r"^--quant int4: the model has no MatMul with a constant weight to quantize$"):
        quantize(model(), QuantSpec(scheme="int4", block_size=16))
    feeds = [{i.name: np.ones([d.dim_value or 2 for d in i.type.tensor_type.shape.dim], np.float32) for i in model().graph.input}]
    with pytest.raises(QuantError, match="^--quant fp8: the model has no MatMul, Gemm or Conv with a constant weight"):
        quantize(model(), QuantSpec(scheme="fp8"), feeds)


def test_only_excluded_layers_is_nothing_to_quantize():
    with pytest.raises(QuantError, match="no MatMul with a constant weight.*excluded by 'fc\\*'"):
        quantize(mlp(), QuantSpec(scheme="int4", exclude=["fc*"]))


@pytest.mark.parametrize("scheme", ["fp8", "int4-awq"])
@pytest.mark.parametrize("feeds", [None, []])
def test_calibrated_schemes_need_feeds(scheme, feeds):
    with pytest.raises(QuantError, match=f"^--quant {scheme} needs calibration data: pass --calib FILE$"):
        quantize(mlp(), QuantSpec(scheme=scheme), feeds)


def test_bad_block_size_is_a_validation_error():
    with pytest.raises(ValidationError, match="block size must be a power of two >= 16"):
        QuantSpec(scheme="int4", block_size=100)


def test_none_returns_the_model_unchanged():
    model = mlp()
    out, report = quantize(model, QuantSpec(scheme="none"))
    assert out is model and report.scheme == "none" and report.quantized == []


def test_int4_ignores_calibration_feeds():
    model = mlp()
    a, ra = quantize(model, QuantSpec(scheme="int4"))
    b, rb = quantize(model, QuantSpec(scheme="int4"), [{"x": np.ones((2, 128), np.float32)}])
    assert a.SerializeToString() == b.SerializeToString()
    assert ra.calib_samples == rb.calib_samples == 0


def test_calibration_errors_are_quant_errors():
    with pytest.raises(QuantError, match="calibration sample 0 failed to run"):
        quantize(mlp(), QuantSpec(scheme="fp8"), [{"wrong": np.ones((2, 128), np.float32)}])


def test_fp8_report_counts_the_calibration(tiny_llama_onnx, calib_feeds):
    _, report = quantize(tiny_llama_onnx, QuantSpec(scheme="fp8"), calib_feeds[:2])
    assert report.calib_samples == 2 and report.layers_quantized == 14 and report.layers_skipped == 1
    assert report.weight_bytes_after < report.weight_bytes_before / 3


def test_quantized_models_are_deterministic(tiny_llama_onnx, calib_feeds):
    for spec in (QuantSpec(scheme="int4-awq", block_size=32), QuantSpec(scheme="fp8", calib_method="percentile")):
        a, ra = quantize(tiny_llama_onnx, spec, calib_feeds[:3])
        b, rb = quantize(tiny_llama_onnx, spec, calib_feeds[:3])
        assert a.SerializeToString() == b.SerializeToString() and ra == rb
        assert len(ops(a, "DequantizeLinear")) > 0
