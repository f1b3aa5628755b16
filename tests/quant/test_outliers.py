import numpy as np
import pytest

from ingot.quant import QuantSpec, quantize
from ingot.quant.calibrate import TensorStats
from ingot.quant.layers import Layer
from ingot.quant.outliers import keep_massive, peak_ratio
from tests.quant.util import mlp, ops


def _stats(absmax: float, channel_mean_abs: list[float]) -> TensorStats:
    mean = np.asarray(channel_mean_abs, np.float32)
    return TensorStats(absmax, np.empty(0, np.float32), mean, mean, np.empty((0, mean.size), np.float32), 10)


def _layer(name: str, x: str) -> Layer:
    return Layer(0, name, "MatMul", x, f"{name}.w", (4, 4), 1)


def test_peak_ratio_is_max_over_the_median_channel_mean():
    assert peak_ratio(_stats(50.0, [0.1, 0.5, 2.0])) == pytest.approx(100.0)
    assert peak_ratio(_stats(1.0, [0.0, 0.0, 3.0])) == float("inf")
    assert peak_ratio(_stats(0.0, [0.0, 0.0, 0.0])) == 0.0


def test_keep_massive_splits_by_the_ratio():
    stats = {"a": _stats(30.0, [1.0, 1.0]), "b": _stats(3000.0, [1.0, 2.0]), "c": _stats(float("inf"), [1.0, 1.0])}
    layers = [_layer("qa", "a"), _layer("qb", "b"), _layer("qc", "c")]
    kept, skipped = keep_massive(layers, stats, 1000.0)
    assert [layer.name for layer in kept] == ["qa", "qc"]  # no finite range: left to the pass
    assert [s.name for s in skipped] == ["qb"] and skipped[0].warn
    assert "2000x" in skipped[0].reason and "limit 1000x" in skipped[0].reason
    assert keep_massive(layers, stats, None) == (layers, [])
    assert len(keep_massive(layers, stats, 20.0)[1]) == 2


def _massive_feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """x [16, 64] ~ 0.1 with one attention-sink-like row: channel 3 = 5000 in row 0."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        x = (0.1 * rng.standard_normal((16, 64))).astype(np.float32)
        x[0, 3] = 5000.0
        feeds.append({"x": x})
    return feeds


def test_fp8_keeps_a_layer_with_massive_inputs_in_float():
    """fc1 reads x (massive: ~60000x its typical |x|) and stays float; fc2 is quantized (w1's
    row 3 is tiny, as a sink channel's weights are, so fc2's input is ordinary)."""
    model = _sink_mlp()
    spec = QuantSpec(scheme="fp8")
    qmodel, report = quantize(model, spec, _massive_feeds(4, 0))
    assert report.quantized == ["fc2/MatMul"]
    assert [s.name for s in report.skipped] == ["fc1/MatMul"] and "massive activations" in report.skipped[0].reason
    assert report.warnings == [f"fc1/MatMul stays in float: {report.skipped[0].reason}"]
    fc1 = next(n for n in ops(qmodel, "MatMul") if n.name == "fc1/MatMul")
    assert fc1.input == ["x", "w1"]  # untouched: float X, float W
    qmodel, report = quantize(model, spec.model_copy(update={"massive_ratio": None}), _massive_feeds(4, 0))
    assert report.quantized == ["fc1/MatMul", "fc2/MatMul"] and report.skipped == []


def test_int4_awq_keeps_layers_with_massive_inputs_float_and_rtn_does_not():
    """int4-awq applies the rule on its calibration statistics; int4 (round to nearest, no
    calibration) quantizes every layer."""
    spec = QuantSpec(scheme="int4-awq", block_size=32)
    _, report = quantize(_sink_mlp(), spec, _massive_feeds(4, 0))
    assert report.quantized == ["fc2/MatMul"] and [s.name for s in report.skipped] == ["fc1/MatMul"]
    assert "massive activations" in report.skipped[0].reason
    _, report = quantize(_sink_mlp(), spec.model_copy(update={"massive_ratio": None}), _massive_feeds(4, 0))
    assert report.quantized == ["fc1/MatMul", "fc2/MatMul"]
    _, report = quantize(_sink_mlp(), QuantSpec(scheme="int4", block_size=32))
    assert report.quantized == ["fc1/MatMul", "fc2/MatMul"] and report.skipped == []


def _sink_mlp():
    w1 = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    w1[3] *= 1e-4
    return mlp(k=64, n=32, w1=w1)
