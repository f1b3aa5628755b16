import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ingot.quant import QuantError, QuantSpec, quantize
from ingot.quant.int4 import quantize_int4
from ingot.quant.primitives import int4_round_trip
from tests.quant.util import initializer, make_model, mlp, ops, rel_rms, run, session

LINEAR = 7 * 2 + 1  # q, k, v, o, gate, up, down per layer (2 layers) + lm_head


def _weight_matmuls(model):
    inits = {t.name for t in model.graph.initializer}
    return [n for n in ops(model, "MatMul") if n.input[1] in inits]


@pytest.mark.parametrize("bs", [32, 64])
def test_every_linear_layer_but_lm_head_gets_a_block_dq(tiny_llama_onnx, bs):
    assert len(_weight_matmuls(tiny_llama_onnx)) == LINEAR
    qmodel, report = quantize(tiny_llama_onnx, QuantSpec(scheme="int4", block_size=bs))
    onnx.checker.check_model(qmodel, full_check=True)
    dqs = ops(qmodel, "DequantizeLinear")
    assert len(dqs) == LINEAR - 1 == len(report.quantized)
    assert [s.name for s in report.skipped] == ["lm_head/MatMul"]
    inits = {t.name: t for t in qmodel.graph.initializer}
    produced = {n.output[0]: n for n in qmodel.graph.node}
    for dq in dqs:
        assert len(dq.input) == 2, "no zero point: symmetric"
        attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
        assert attrs == {"axis": 0, "block_size": bs}
        q, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert q.data_type == TensorProto.INT4 and scale.data_type == TensorProto.FLOAT
        assert list(scale.dims) == [q.dims[0] // bs, q.dims[1]]
    # every layer MatMul reads a DQ, except lm_head, which keeps its float weight (stored fp16)
    for node in ops(qmodel, "MatMul"):
        if node.name == "lm_head/MatMul":
            cast = produced[node.input[1]]
            assert cast.op_type == "Cast" and inits[cast.input[0]].data_type == TensorProto.FLOAT16
        elif "proj" in node.name:
            assert produced[node.input[1]].op_type == "DequantizeLinear"
        else:  # attention scores and P @ V: untouched
            assert node.input[1] not in inits and produced[node.input[1]].op_type != "DequantizeLinear"
    assert not any(t.data_type == TensorProto.FLOAT and len(t.dims) == 2 and t.dims[0] >= 64 and "proj" in t.name for t in qmodel.graph.initializer)
    assert report.weight_bytes_after < report.weight_bytes_before / 5
    assert report.session_config == {"session.qdq_matmulnbits_accuracy_level": "4"}


@pytest.mark.parametrize("bs", [32, 64])
def test_logits_stay_close_to_fp32(tiny_llama_onnx, test_feeds, bs):
    ref = run(tiny_llama_onnx, test_feeds)
    qmodel, report = quantize(tiny_llama_onnx, QuantSpec(scheme="int4", block_size=bs))
    for config in ({}, report.session_config, {"session.qdq_matmulnbits_accuracy_level": "0"}):
        err = rel_rms(run(qmodel, test_feeds, config), ref)
        assert 1e-4 < err < 0.15, (config, err)  # changed (it is quantized), but not broken


def test_block_128_pads_what_does_not_fit(tiny_llama_onnx, test_feeds):
    """Hidden 64 at block 128: K is zero-padded to 128, with one Pad per activation tensor."""
    qmodel, report = quantize(tiny_llama_onnx, QuantSpec(scheme="int4"))
    onnx.checker.check_model(qmodel, full_check=True)
    assert len(report.quantized) == LINEAR - 1 and report.warnings == []
    assert len(report.padded) == LINEAR - 3  # all but the two down_proj (K=128)
    assert len(ops(qmodel, "Pad")) == 6  # per layer: q/k/v, o, gate/up share three inputs
    assert len(ops(qmodel, "DequantizeLinear")) == LINEAR - 1
    ref = run(tiny_llama_onnx, test_feeds)
    out = run(qmodel, test_feeds, {"session.qdq_matmulnbits_accuracy_level": "0"})
    assert out[0].shape == (3, 20, 320) and rel_rms(out, ref) < 0.15


@pytest.mark.parametrize("level", [0, 4])
def test_ort_fuses_into_matmulnbits(tiny_llama_onnx, tmp_path, level):
    qmodel, report = quantize(tiny_llama_onnx, QuantSpec(scheme="int4", block_size=32, accuracy_level=level))
    path = tmp_path / "opt.onnx"
    session(qmodel, report.session_config, optimized=str(path))
    optimized = onnx.load(str(path))
    nbits = [n for n in optimized.graph.node if n.op_type == "MatMulNBits" and n.domain == "com.microsoft"]
    assert len(nbits) == LINEAR - 1
    assert not ops(optimized, "DequantizeLinear")
    for node in nbits:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (4, 32, level)


def test_numerics_match_numpy():
    model = mlp(k=128, n=64)
    qmodel, _ = quantize_int4(model, QuantSpec(scheme="int4", block_size=32))
    x = np.random.default_rng(5).standard_normal((7, 128)).astype(np.float32)
    w1, w2 = initializer(model, "w1"), initializer(model, "w2")
    expected = np.maximum(x @ int4_round_trip(w1, 32), 0) @ int4_round_trip(w2, 32)
    for level in ("none", "all"):
        config = {"session.qdq_matmulnbits_accuracy_level": "0"}
        got = run(qmodel, [{"x": x}], config, level)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_padded_layers_still_fuse_into_matmulnbits(tiny_llama_onnx, tmp_path):
    """Hidden 64 at block 128: every layer is padded, and ORT still fuses each into MatMulNBits.
    (ORT does not fuse a DQ + MatMul whose output feeds a Relu, padded or not; Llama has none.)"""
    qmodel, report = quantize(tiny_llama_onnx, QuantSpec(scheme="int4"))
    path = tmp_path / "opt.onnx"
    session(qmodel, report.session_config, optimized=str(path))
    nbits = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == LINEAR - 1


def test_a_weight_that_does_not_fit_is_padded_exactly():
    model = mlp(k=96, n=64)  # fc1: K=96 (padded to 128), fc2: K=128
    qmodel, report = quantize(model, QuantSpec(scheme="int4", block_size=64))
    assert report.quantized == ["fc1/MatMul", "fc2/MatMul"] and report.padded == ["fc1/MatMul"]
    x = np.random.default_rng(5).standard_normal((7, 96)).astype(np.float32)
    w1, w2 = initializer(model, "w1"), initializer(model, "w2")
    expected = np.maximum(x @ int4_round_trip(w1, 64), 0) @ int4_round_trip(w2, 64)
    got = run(qmodel, [{"x": x}], {"session.qdq_matmulnbits_accuracy_level": "0"})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    with pytest.raises(QuantError, match="no MatMul with a constant weight to quantize"):
        quantize(model, QuantSpec(scheme="int4", block_size=64, exclude=["fc*"]))


def test_a_shared_weight_is_quantized_once():
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="a/MatMul"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="b/MatMul")]
    model = make_model(nodes, {"x": ["m", 64]}, {"y": ["m", 64]}, {"w": w})
    qmodel, report = quantize(model, QuantSpec(scheme="int4", block_size=32))
    dq = ops(qmodel, "DequantizeLinear")
    assert len(dq) == 1 and report.quantized == ["a/MatMul", "b/MatMul"]
    assert [n.input[1] for n in ops(qmodel, "MatMul")] == [dq[0].output[0]] * 2
    assert {t.name for t in qmodel.graph.initializer} == {"w_int4", "w_scale"}
    assert report.weight_bytes_before == w.nbytes


def test_exclude_patterns_match_node_names(tiny_llama_onnx):
    _, report = quantize(tiny_llama_onnx, QuantSpec(scheme="int4", block_size=32, exclude=["*.mlp.*"]))
    assert len(report.quantized) == 8 and all(".self_attn." in n for n in report.quantized)
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["model.layers.1.mlp.up_proj/MatMul"] == "excluded by '*.mlp.*'"
    assert reasons["lm_head/MatMul"] == "excluded by 'lm_head*'"


def test_the_input_model_is_not_modified(tiny_llama_onnx):
    before = tiny_llama_onnx.SerializeToString()
    quantize(tiny_llama_onnx, QuantSpec(scheme="int4", block_size=32))
    assert tiny_llama_onnx.SerializeToString() == before


def test_an_old_opset_is_upgraded():
    model = mlp()
    model.opset_import[0].version = 17
    model.ir_version = 8
    qmodel, _ = quantize(model, QuantSpec(scheme="int4", block_size=64))
    assert qmodel.opset_import[0].version == 21 and qmodel.ir_version >= 10
    onnx.checker.check_model(qmodel, full_check=True)
    x = np.ones((2, 128), np.float32)
    assert run(qmodel, [{"x": x}])[0].shape == (2, 64)


def test_an_opset_that_cannot_be_upgraded_is_a_quant_error(monkeypatch):
    from onnx import version_converter

    def fail(model, version):
        raise RuntimeError("no adapter for Foo")

    monkeypatch.setattr(version_converter, "convert_version", fail)
    model = mlp()
    model.opset_import[0].version = 17
    with pytest.raises(QuantError, match="opset 17, quantization needs 21 and the upgrade failed"):
        quantize(model, QuantSpec(scheme="int4", block_size=64))


def test_float16_weights_keep_float16_scales():
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc/MatMul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["m", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["m", 32])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    qmodel, _ = quantize(model, QuantSpec(scheme="int4", block_size=32))
    assert initializer(qmodel, "w_scale").dtype == np.float16
    assert initializer(qmodel, "w_int4").dtype == ml_dtypes.int4
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float16)
    got = run(qmodel, [{"x": x}], level="none")[0]
    expected = x.astype(np.float32) @ int4_round_trip(w, 32)
    np.testing.assert_allclose(got.astype(np.float32), expected, atol=0.05 * np.abs(expected).max())


def _tied_head(vocab: int = 96, hidden: int = 64) -> onnx.ModelProto:
    """ids → Gather(E) → fc/MatMul → lm_head/MatMul(·, Transpose(E)): a tied LM head."""
    rng = np.random.default_rng(3)
    weights = {"E": rng.standard_normal((vocab, hidden)).astype(np.float32),
               "w": rng.standard_normal((hidden, hidden)).astype(np.float32)}
    nodes = [helper.make_node("Gather", ["E", "ids"], ["x"], name="embed/Gather"),
             helper.make_node("MatMul", ["x", "w"], ["h"], name="fc/MatMul"),
             helper.make_node("Transpose", ["E"], ["Et"], name="lm_head/Transpose", perm=[1, 0]),
             helper.make_node("MatMul", ["h", "Et"], ["logits"], name="lm_head/MatMul")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["m"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["m", vocab])],
        [onnx.numpy_helper.from_array(w, n) for n, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_a_tied_lm_head_is_quantized_only_when_asked_with_its_own_block_size():
    model = _tied_head()
    _, report = quantize(model, QuantSpec(scheme="int4", block_size=64))
    assert report.quantized == ["fc/MatMul"]  # the head reads Transpose(E): left alone by default

    qmodel, report = quantize(model, QuantSpec(scheme="int4", block_size=64, quantize_lm_head=True))
    assert report.quantized == ["fc/MatMul", "lm_head/MatMul"]
    blocks = {n.name: helper.get_attribute_value(n.attribute[1]) for n in ops(qmodel, "DequantizeLinear")}
    assert sorted(blocks.values()) == [32, 64]  # the head at lm_head_block_size, capped by block_size
    assert not ops(qmodel, "Transpose") and ops(qmodel, "Gather")[0].input[0] == "E"  # embedding stays float
    assert ops(qmodel, "Cast")[0].output[0] == "E" and report.half_weights == ["E"]  # stored fp16
    ids = np.arange(0, 96, 3, dtype=np.int64)
    E, w = initializer(model, "E"), initializer(model, "w")
    expected = (E.astype(np.float16).astype(np.float32)[ids] @ int4_round_trip(w, 64)) @ int4_round_trip(np.ascontiguousarray(E.T), 32)
    got = session(qmodel, {"session.qdq_matmulnbits_accuracy_level": "0"}).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_a_bad_lm_head_block_size_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        QuantSpec(scheme="int4", lm_head_block_size=48)


def test_rtn_keeps_the_kv_projections_out_of_int4_when_asked(tiny_llama_onnx, test_feeds):
    """int4-awq's rule-based recipe needs no calibration, so RTN takes it too when asked (the
    build does for causal LMs): k/v projections float (kv_float), or INT8 weight-only with
    recipe_precision int8; listed with the reason. Off by default for RTN."""
    assert QuantSpec(scheme="int4").float_patterns == {} and QuantSpec(scheme="int4-awq").float_patterns
    _, report = quantize(tiny_llama_onnx, QuantSpec(scheme="int4", block_size=32, kv_float=True))
    kv = {f"model.layers.{i}.self_attn.{p}_proj/MatMul" for i in (0, 1) for p in "kv"}
    reasons = {s.name: s.reason for s in report.skipped}
    assert set(reasons) == kv | {"lm_head/MatMul"} and len(report.quantized) == LINEAR - 5
    assert all(reasons[name].startswith("attention key/value projection: int4 keeps it out of INT4") for name in kv)
    qmodel, report = quantize(tiny_llama_onnx, QuantSpec(scheme="int4", block_size=32, kv_float=True, recipe_precision="int8"))
    assert {k.name for k in report.int8} == kv and [s.name for s in report.skipped] == ["lm_head/MatMul"]
    assert rel_rms(run(qmodel, test_feeds), run(tiny_llama_onnx, test_feeds)) < 0.15
