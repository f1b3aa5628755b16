"""The cpu target's exact fusions: fewer nodes, the same outputs."""

import numpy as np
import onnx
import pytest

from ingot.builder.fuse_cpu import fuse_for_cpu
from ingot.quant import QuantSpec, quantize
from tests.quant.util import llama_feeds, ops, session

ACC0 = {"session.qdq_matmulnbits_accuracy_level": "0"}


@pytest.fixture(scope="module")
def llama(tiny_llama_dir) -> onnx.ModelProto:
    from ingot.builder.export import export_onnx
    from ingot.builder.graph import cleanup
    from ingot.builder.sources import load_source

    return cleanup(export_onnx(load_source(str(tiny_llama_dir))))


def _fused(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return fuse_for_cpu(copy)


def _outputs(model: onnx.ModelProto, feeds, config=None) -> list[np.ndarray]:
    s = session(model, config)
    return [s.run(["logits"], f)[0] for f in feeds]


def test_rms_norms_become_one_node_each_with_the_same_logits(llama):
    fused, counts = _fused(llama)
    assert counts == {"rms_norm": 5, "int4_unpad": 0}  # two per layer (2 layers) and the final norm
    assert len(ops(fused, "SimplifiedLayerNormalization")) == 5
    assert not ops(fused, "ReduceMean") and not ops(fused, "Reciprocal")
    assert len(fused.graph.node) == len(llama.graph.node) - 5 * 6
    feeds = llama_feeds(2, 2, 7, seed=0)
    for got, ref in zip(_outputs(fused, feeds), _outputs(llama, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_int4_pads_are_dropped_and_still_fuse_into_matmulnbits(llama, tmp_path):
    qmodel, report = quantize(llama, QuantSpec(scheme="int4"))  # hidden 64 at block 128: padded
    assert report.padded
    fused, counts = _fused(qmodel)
    assert counts["int4_unpad"] == len(ops(qmodel, "Pad")) > 0 and not ops(fused, "Pad")
    unread = {t.name for t in fused.graph.initializer} - {i for n in fused.graph.node for i in n.input}
    assert not unread, "orphaned pads initializers are removed"
    for dq in ops(fused, "DequantizeLinear"):
        q = next(t for t in fused.graph.initializer if t.name == dq.input[0])
        assert q.dims[0] in (64, 128)  # K itself, no zero rows
    path = tmp_path / "opt.onnx"
    session(fused, report.session_config, optimized=str(path))
    assert len([n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"]) == len(report.quantized)
    feeds = llama_feeds(2, 2, 7, seed=1)
    for got, ref in zip(_outputs(fused, feeds, ACC0), _outputs(qmodel, feeds, ACC0)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_a_graph_without_the_patterns_is_left_alone(tiny_bert_dir):
    from ingot.builder.export import export_onnx
    from ingot.builder.graph import cleanup
    from ingot.builder.sources import load_source

    model = cleanup(export_onnx(load_source(str(tiny_bert_dir))))
    fused, counts = _fused(model)
    assert counts == {"rms_norm": 0, "int4_unpad": 0}
    assert fused.graph == model.graph
