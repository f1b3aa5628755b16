import numpy as np
import pytest

from ingot.quant import QuantError, QuantSpec, quantize
from ingot.quant.calibrate import calibrate
from ingot.quant.fp8 import _quantize_fp8, fp8_activations, fp8_layers, quantize_fp8
from ingot.quant.sensitivity import keep_sensitive, layer_drift


def test_keep_sensitive_takes_the_largest_drifts_with_reasons():
    skipped = keep_sensitive({"a": 0.01, "b": 0.3, "c": 0.2, "d": 0.0}, 2)
    assert [s.name for s in skipped] == ["b", "c"]
    assert all(s.warn and s.reason.startswith("sensitive:") for s in skipped)
    assert "0.3" in skipped[0].reason and "rank 1 of 4" in skipped[0].reason


def test_fp8_keeps_the_most_sensitive_layers_in_float(tiny_llama_onnx, calib_feeds):
    spec = QuantSpec(scheme="fp8", keep_sensitive=3)
    qmodel, report = quantize(tiny_llama_onnx, spec, calib_feeds)
    sensitive = [s.name for s in report.skipped if s.reason.startswith("sensitive:")]
    assert len(sensitive) == 3 and len(report.quantized) == 14 - 3
    assert not set(sensitive) & set(report.quantized)
    assert any(f"{name} stays in float: sensitive" in w for w in report.warnings for name in sensitive)
    # they are the three whose lone quantization moves the logits most
    stats = calibrate(tiny_llama_onnx, calib_feeds, fp8_activations(tiny_llama_onnx, spec))
    layers, skipped = fp8_layers(tiny_llama_onnx, spec)
    drift = layer_drift(tiny_llama_onnx, layers, lambda layer: _quantize_fp8(tiny_llama_onnx, spec, stats, [layer], skipped), calib_feeds)
    assert len(drift) == 14 and all(d > 0 for d in drift.values())
    assert set(sensitive) == set(sorted(drift, key=drift.get)[-3:])
    # the layers left out are float in the graph: their weights are not FP8
    inputs = {n.name: list(n.input) for n in qmodel.graph.node}
    assert all(not inputs[name][1].endswith("_dq") for name in sensitive)


def test_keep_sensitive_off_by_default_and_needs_feeds(tiny_llama_onnx, calib_feeds):
    _, report = quantize(tiny_llama_onnx, QuantSpec(scheme="fp8"), calib_feeds)
    assert len(report.quantized) == 14 and not any(s.reason.startswith("sensitive") for s in report.skipped)
    spec = QuantSpec(scheme="fp8", keep_sensitive=1)
    stats = calibrate(tiny_llama_onnx, calib_feeds, fp8_activations(tiny_llama_onnx, spec))
    with pytest.raises(QuantError, match="keep_sensitive needs the calibration feeds"):
        quantize_fp8(tiny_llama_onnx, spec, stats)
    assert np.isfinite(stats[next(iter(stats))].absmax)


@pytest.mark.parametrize("scheme", ["int4", "int4-awq"])
def test_int4_keeps_the_layers_most_sensitive_to_rounding_in_float(tiny_llama_onnx, calib_feeds, scheme):
    from ingot.quant.int4 import int4_layers, quantize_int4

    spec = QuantSpec(scheme=scheme, block_size=16, keep_sensitive=2, kv_float=False, massive_ratio=None)
    qmodel, report = quantize(tiny_llama_onnx, spec, calib_feeds)
    sensitive = [s.name for s in report.skipped if s.reason.startswith("sensitive:")]
    layers, _ = int4_layers(tiny_llama_onnx, spec)
    assert len(sensitive) == 2 and len(report.quantized) == len(layers) - 2 and not set(sensitive) & set(report.quantized)
    assert report.exclude == spec.effective_exclude and report.calib_samples == len(calib_feeds)
    # they are the two whose lone round-to-nearest quantization moves the logits most
    names = [layer.name for layer in layers]
    alone = QuantSpec(scheme="int4", block_size=16)
    drift = layer_drift(tiny_llama_onnx, layers, lambda layer: quantize_int4(tiny_llama_onnx, alone.model_copy(
        update={"exclude": [n for n in names if n != layer.name]})), calib_feeds)
    assert set(sensitive) == set(sorted(drift, key=drift.get)[-2:])
    inputs = {n.name: list(n.input) for n in qmodel.graph.node}
    assert all(not inputs[name][1].endswith("_dq") for name in sensitive)  # float weights


def test_int4_keep_sensitive_needs_calibration(tiny_llama_onnx):
    with pytest.raises(QuantError, match="needs calibration data"):
        quantize(tiny_llama_onnx, QuantSpec(scheme="int4", keep_sensitive=1), None)
