import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ingot.quant import QuantError, QuantSpec, quantize
from ingot.quant.calibrate import calibrate
from ingot.quant.fp8 import quantize_fp8
from ingot.quant.primitives import fp8_activation_scale, fp8_dequantize, fp8_quantize_channels, fp8_quantize_tensor
from tests.quant.util import initializer, make_model, mlp, ops, rel_rms, run

CPU_CONFIG = {"session.disable_quant_qdq": "1", "optimization.disable_specified_optimizers": "ReluQuantRewrite;ClipQuantRewrite"}


@pytest.fixture(scope="module")
def fp8_llama(tiny_llama_onnx, calib_feeds):
    return quantize(tiny_llama_onnx, QuantSpec(scheme="fp8"), calib_feeds)


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_qdq_only_around_layers_with_constant_weights(fp8_llama, tiny_llama_onnx):
    qmodel, report = fp8_llama
    onnx.checker.check_model(qmodel, full_check=True)
    # per decoder layer: one shared activation Q/DQ for q/k/v, one for o, one for gate/up, one for down
    assert len(ops(qmodel, "QuantizeLinear")) == 8
    assert len(ops(qmodel, "DequantizeLinear")) == 8 + 14  # activations + weights
    assert len(report.quantized) == 14 and [s.name for s in report.skipped] == ["lm_head/MatMul"]
    consumers: dict[str, list] = {}
    for n in qmodel.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    produced = {o: n for n in qmodel.graph.node for o in n.output}
    for q in ops(qmodel, "QuantizeLinear"):
        assert [c.op_type for c in consumers[q.output[0]]] == ["DequantizeLinear"]
        source = produced.get(q.input[0])
        assert source is None or source.op_type not in ("Softmax", "Gather", "Where", "Cast"), source
    for dq in ops(qmodel, "DequantizeLinear"):
        assert {c.op_type for c in consumers[dq.output[0]]} == {"MatMul"}
    for mm in ops(qmodel, "MatMul"):
        if mm.name == "lm_head/MatMul":
            assert produced[mm.input[0]].op_type == "Mul"  # the final norm, not a DQ
        elif "proj" in mm.name:
            assert [produced[i].op_type for i in mm.input] == ["DequantizeLinear", "DequantizeLinear"]
        else:  # attention scores, P @ V: as exported
            original = next(n for n in tiny_llama_onnx.graph.node if n.name == mm.name)
            assert list(mm.input) == list(original.input)


def test_fp8_types_and_scales(fp8_llama, tiny_llama_onnx):
    qmodel, report = fp8_llama
    inits = {t.name: t for t in qmodel.graph.initializer}
    for q in ops(qmodel, "QuantizeLinear"):
        scale, zero = inits[q.input[1]], inits[q.input[2]]
        assert list(scale.dims) == [] and list(zero.dims) == []
        assert zero.data_type == TensorProto.FLOAT8E4M3FN and initializer(qmodel, zero.name).astype(np.float32) == 0
    weight_dqs = [dq for dq in ops(qmodel, "DequantizeLinear") if dq.input[0] in inits]
    assert len(weight_dqs) == 14
    for dq in weight_dqs:
        w, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert w.data_type == TensorProto.FLOAT8E4M3FN and _attrs(dq) == {"axis": 1}
        assert list(scale.dims) == [w.dims[1]]
    # the per-tensor activation scales are the calibrated max / 448
    assert len(report.activation_amax) == 8
    produced = {n.output[0]: n for n in qmodel.graph.node}
    for q in ops(qmodel, "QuantizeLinear"):
        x = q.input[0] if q.input[0] in report.activation_amax else produced[q.input[0]].input[0]  # X or Mul(X, 1/s)
        expected = fp8_activation_scale(report.activation_amax[x])
        assert float(initializer(qmodel, q.input[1])) == pytest.approx(expected, rel=1e-6)
    assert report.session_config == CPU_CONFIG


def test_outputs_close_to_fp32_with_and_without_the_cpu_config(fp8_llama, tiny_llama_onnx, test_feeds):
    qmodel, report = fp8_llama
    ref = run(tiny_llama_onnx, test_feeds)
    plain = run(qmodel, test_feeds)
    folded = run(qmodel, test_feeds, report.session_config)
    assert 1e-3 < rel_rms(plain, ref) < 0.08  # measured 0.040
    assert rel_rms(folded, plain) < 1e-5  # folding the weight DQ at load changes nothing


def test_percentile_calibration_clips_below_the_max(tiny_llama_onnx, calib_feeds):
    _, by_max = quantize(tiny_llama_onnx, QuantSpec(scheme="fp8"), calib_feeds)
    _, by_pct = quantize(tiny_llama_onnx, QuantSpec(scheme="fp8", calib_method="percentile", percentile=99.9), calib_feeds)
    for name, amax in by_pct.activation_amax.items():
        assert 0 < amax <= by_max.activation_amax[name]
    assert any(amax < 0.9 * by_max.activation_amax[n] for n, amax in by_pct.activation_amax.items())


def test_numerics_match_numpy():
    model = mlp(k=64, n=32)
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((16, 64)).astype(np.float32)} for _ in range(2)]
    qmodel, report = quantize(model, QuantSpec(scheme="fp8"), feeds)
    x = feeds[0]["x"]
    w1, w2 = initializer(model, "w1"), initializer(model, "w2")

    def qdq(t, amax):
        s = fp8_activation_scale(amax)
        return fp8_dequantize(fp8_quantize_tensor(t, s), s)

    def wdq(w):
        return fp8_dequantize(*fp8_quantize_channels(w, 1), axis=1)

    h = np.maximum(qdq(x, report.activation_amax["x"]) @ wdq(w1), 0)
    expected = qdq(h, report.activation_amax["r"]) @ wdq(w2)
    atol = 1e-4 * np.abs(expected).max()
    np.testing.assert_allclose(run(qmodel, [{"x": x}], level="none")[0], expected, rtol=1e-4, atol=atol)
    for config in (report.session_config, {"optimization.disable_specified_optimizers": "ReluQuantRewrite"}):
        np.testing.assert_allclose(run(qmodel, [{"x": x}], config)[0], expected, rtol=1e-4, atol=atol)


def test_ort_drops_a_relu_before_an_fp8_quantize_without_the_cpu_config():
    """Why the report recommends disabling ReluQuantRewrite. If this fails, ORT fixed its
    Relu → QuantizeLinear(FP8) fusion and that config entry can go."""
    model = mlp(k=64, n=32)
    feeds = [{"x": np.random.default_rng(3).standard_normal((16, 64)).astype(np.float32)}]
    qmodel, report = quantize(model, QuantSpec(scheme="fp8"), feeds)
    exact = run(qmodel, feeds, level="none")
    assert rel_rms(run(qmodel, feeds, report.session_config), exact) < 1e-5
    assert rel_rms(run(qmodel, feeds), exact) > 0.3


def _conv_model():
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "b": rng.standard_normal(8).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["c"], name="conv/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="act/Relu")]
    return make_model(nodes, {"image": ["n", 3, 16, 16]}, {"y": ["n", 8, 16, 16]}, weights)


def test_conv_gets_per_output_channel_weight_dq_on_axis_0():
    model = _conv_model()
    rng = np.random.default_rng(1)
    feeds = [{"image": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)} for _ in range(3)]
    qmodel, report = quantize(model, QuantSpec(scheme="fp8"), feeds)
    onnx.checker.check_model(qmodel, full_check=True)
    assert report.quantized == ["conv/Conv"]
    weight_dq = next(dq for dq in ops(qmodel, "DequantizeLinear") if dq.input[0] == "w_fp8")
    assert _attrs(weight_dq) == {"axis": 0} and initializer(qmodel, weight_dq.input[1]).shape == (8,)
    assert initializer(qmodel, "w_fp8").dtype == ml_dtypes.float8_e4m3fn
    assert ops(qmodel, "QuantizeLinear")[0].input[0] == "image"  # a graph input is quantized too
    assert initializer(qmodel, "b").dtype == np.float32  # the bias stays float
    ref = run(model, feeds)
    for config in ({}, CPU_CONFIG):
        assert rel_rms(run(qmodel, feeds, config), ref) < 0.05


@pytest.mark.parametrize("trans_b,axis", [(0, 1), (1, 0)])
def test_gemm_weight_axis_follows_trans_b(trans_b, axis):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 32) if trans_b else (32, 16)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc/Gemm", transB=trans_b)]
    model = make_model(nodes, {"x": ["m", 32]}, {"y": ["m", 16]}, {"w": w, "c": np.zeros(16, np.float32)})
    feeds = [{"x": rng.standard_normal((4, 32)).astype(np.float32)}]
    qmodel, _ = quantize(model, QuantSpec(scheme="fp8"), feeds)
    dq = next(dq for dq in ops(qmodel, "DequantizeLinear") if dq.input[0] == "w_fp8")
    assert _attrs(dq) == {"axis": axis} and initializer(qmodel, dq.input[1]).shape == (16,)
    assert rel_rms(run(qmodel, feeds), run(model, feeds)) < 0.05


def test_a_tensor_without_a_finite_range_is_skipped():
    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((8, 4)).astype(np.float32), "w2": rng.standard_normal((8, 4)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y"], name="a/MatMul"),
             helper.make_node("MatMul", ["m", "w2"], ["z"], name="b/MatMul")]
    model = make_model(nodes, {"x": ["n", 8], "m": ["n", 8]}, {"y": ["n", 4], "z": ["n", 4]}, weights)
    feeds = [{"x": np.ones((2, 8), np.float32), "m": np.full((2, 8), -np.inf, np.float32)}]
    qmodel, report = quantize(model, QuantSpec(scheme="fp8"), feeds)
    assert report.quantized == ["a/MatMul"]
    assert report.skipped[0].name == "b/MatMul" and "no finite range" in report.skipped[0].reason
    assert "w2" in {t.name for t in qmodel.graph.initializer}


def test_fp8_needs_stats_for_every_activation():
    model = mlp()
    stats = calibrate(model, [{"x": np.ones((2, 128), np.float32)}], ["x", "r"])
    qmodel, _ = quantize_fp8(model, QuantSpec(scheme="fp8"), stats)
    assert len(ops(qmodel, "QuantizeLinear")) == 2
    with pytest.raises(QuantError, match="--quant fp8: the model has no MatMul, Gemm or Conv"):
        quantize_fp8(model, QuantSpec(scheme="fp8", exclude=["fc*"]), stats)


def test_relu6_clip_before_fp8_quantize_runs_on_ort_cpu():
    """Conv → Clip(0, 6) → Conv (EfficientNet's ReLU6): ORT's ClipQuantRewrite fails session
    creation on an FP8 zero point unless the CPU session config disables it."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from ingot.quant import QuantSpec, quantize

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r"], name="act/Clip"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2/Conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", 1, ["n", 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    feeds = [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    qmodel, report = quantize(model, QuantSpec(scheme="fp8"), feeds)
    so = ort.SessionOptions()
    for k, v in report.session_config.items():
        so.add_session_config_entry(k, v)
    sess = ort.InferenceSession(qmodel.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    out = sess.run(None, feeds[0])[0]
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()
