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


@pytest.fixture(scope="module")
def hf(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype="float32").eval()


@pytest.fixture(scope="module")
def paged(hf) -> onnx.ModelProto:
    """The paged plan as `ingot build` compiles it for cpu: contract, lowered, cleaned."""
    from ingot.builder.graph import cleanup
    from ingot.builder.lower_cpu import lower_paged_attention
    from ingot.builder.paged import export_paged

    return cleanup(lower_paged_attention(export_paged(hf, opset=21, block_size=4)))


def _fused(model: onnx.ModelProto, max_positions: int | None = None) -> tuple[onnx.ModelProto, dict[str, int]]:
    before = model.SerializeToString()
    fused, counts = fuse_for_cpu(model, max_positions)
    assert model.SerializeToString() == before, "the input model is left as it was"
    return fused, counts


NONE = {"rms_norm": 0, "int4_unpad": 0, "rotary": 0, "skip_norm": 0, "output_identity": 0, "int4_siblings": 0}
LIMITS = dict(max_model_len=64, max_num_tokens=64, max_num_seqs=4, kv_block_size=4)


def _outputs(model: onnx.ModelProto, feeds, config=None) -> list[np.ndarray]:
    s = session(model, config)
    return [s.run(["logits"], f)[0] for f in feeds]


def test_rms_norms_become_one_node_each_with_the_same_logits(llama):
    fused, counts = _fused(llama)
    # two norms per layer (2 layers) and the final one; all but the first follow a residual Add
    assert counts == NONE | {"rms_norm": 5, "skip_norm": 4}
    assert len(ops(fused, "SimplifiedLayerNormalization")) == 1 and len(ops(fused, "SkipSimplifiedLayerNormalization")) == 4
    assert not ops(fused, "ReduceMean") and not ops(fused, "Reciprocal")
    assert len(fused.graph.node) == len(llama.graph.node) - 5 * 6 - 4
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
    kernels = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"]
    assert counts["int4_siblings"] == 4 and len(kernels) == len(report.quantized) - 3 * 2  # q/k/v, gate/up merged
    feeds = llama_feeds(2, 2, 7, seed=1)
    for got, ref in zip(_outputs(fused, feeds, ACC0), _outputs(qmodel, feeds, ACC0)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_a_graph_without_the_patterns_is_left_alone(tiny_bert_dir):
    from ingot.builder.export import export_onnx
    from ingot.builder.graph import cleanup
    from ingot.builder.sources import load_source

    model = cleanup(export_onnx(load_source(str(tiny_bert_dir))))
    fused, counts = _fused(model)
    assert counts == NONE
    assert fused.graph == model.graph


def test_paged_plan_rotary_skip_norm_and_outputs_fuse_and_still_match_torch(paged, hf):
    from ingot.builder.causal_lm import check_paged
    from ingot.builder.cpu import ort_runner
    from ingot.builder.paged import llm_info

    fused, counts = _fused(paged, max_positions=64)
    layers = hf.config.num_hidden_layers
    # skip norms: every norm after a residual Add (not layer 0's first; the final one reads the logits rows)
    assert counts == NONE | {"rms_norm": 2 * layers + 1, "rotary": 2 * layers, "skip_norm": 2 * layers - 1,
                             "output_identity": 2 * layers}
    assert len(ops(fused, "RotaryEmbedding")) == 2 * layers and not ops(fused, "Neg") and not ops(fused, "Identity")
    assert not ops(fused, "Cos") and not ops(fused, "Sin"), "the graph's own cos/sin subgraph is gone (now tables)"
    assert len(fused.graph.node) < len(paged.graph.node) * 0.75
    err = check_paged(ort_runner(fused.SerializeToString(), {}), hf, llm_info(hf, LIMITS, None), 1e-5, 1e-4)
    assert err < 1e-5  # GQA, past over two blocks, a prefill beside a decode: as torch reading the cache


def test_rotary_needs_the_positions_bound(paged):
    _, counts = _fused(paged)
    assert counts["rotary"] == 0 and counts["skip_norm"] > 0


def test_sibling_int4_projections_merge_into_one_matmulnbits(paged, hf, tmp_path):
    qmodel, report = quantize(paged, QuantSpec(scheme="int4", block_size=32))
    fused, counts = _fused(qmodel, max_positions=64)
    layers = hf.config.num_hidden_layers
    assert counts["int4_siblings"] == 2 * layers  # q/k/v and gate/up in each layer
    path = tmp_path / "opt.onnx"
    session(fused, report.session_config, optimized=str(path))
    kernels = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"]
    assert len(kernels) == len(report.quantized) - 3 * layers  # 7 projections per layer became 4
    ref = _paged_logits(qmodel, hf)
    np.testing.assert_allclose(_paged_logits(fused, hf), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def _paged_logits(model: onnx.ModelProto, hf) -> np.ndarray:
    """Logits of a paged plan on check_paged's step (past K/V in a random pool), accuracy level 0."""
    from ingot.builder.paged import PagedCausalLM, example_inputs, llm_info
    from ingot.plans import llm as names
    from ingot.runtime.llm.batch import PackedBatch
    from ingot.runtime.llm.cpu_lowering import plan_feeds, run_calls, window_feeds

    ex = example_inputs(PagedCausalLM(hf).eval(), LIMITS["kv_block_size"])
    batch = PackedBatch(**{k: ex[k].numpy() for k in ("input_ids", "positions", "slot_mapping", "logits_indices",
                                                      "query_start_loc", "context_lens", "block_tables")})
    caches = {}
    for layer, (k, v) in enumerate(zip(ex["key_caches"], ex["value_caches"])):
        caches[names.key_cache(layer)], caches[names.value_cache(layer)] = k.numpy(), v.numpy()
    s, info = session(model, ACC0), llm_info(hf, LIMITS, None)
    return run_calls(batch, lambda sub: s.run([names.LOGITS], plan_feeds(sub) | window_feeds(sub, info, caches))[0])


def test_a_pad_read_through_one_shared_int4_weight_is_dropped_once():
    """Two MatMuls read the padded X through one DequantizeLinear (a weight quantized once for
    both): its zero rows are sliced once and both MatMuls read X."""
    import ml_dtypes
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    q = np.zeros((64, 16), np.int8)
    q[:40] = rng.integers(-8, 8, (40, 16))  # K 40 padded to 64
    inits = [numpy_helper.from_array(q.astype(ml_dtypes.int4), "w_int4"),
             numpy_helper.from_array(rng.random((2, 16)).astype(np.float32) / 8, "w_scale"),
             numpy_helper.from_array(np.array([0, 24], np.int64), "pads"), numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    nodes = [helper.make_node("Pad", ["x", "pads", "", "axes"], ["x_padded"], mode="constant"),
             helper.make_node("DequantizeLinear", ["w_int4", "w_scale"], ["w"], axis=0, block_size=32),
             helper.make_node("MatMul", ["x_padded", "w"], ["y1"]), helper.make_node("MatMul", ["x_padded", "w"], ["y2"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "T", k]) for n, k in (("x", 40), ("y1", 16), ("y2", 16))]
    model = helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:], inits), opset_imports=[helper.make_opsetid("", 21)])
    fused, counts = _fused(model)
    assert counts == NONE | {"int4_unpad": 1} and not ops(fused, "Pad") and len(ops(fused, "DequantizeLinear")) == 1
    assert [list(t.dims) for t in fused.graph.initializer if t.name == "w_int4"] == [[40, 16]]
    feeds = {"x": rng.standard_normal((1, 5, 40)).astype(np.float32)}
    for got, ref in zip(session(fused).run(None, feeds), session(model).run(None, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_two_outputs_named_from_one_tensor_keep_both_names():
    """Only the first Identity is dropped (its input takes the output's name); the second stays,
    where onnx_ir's IdentityEliminationPass would leave one tensor under one of the two names."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["a"]),
             helper.make_node("Identity", ["r"], ["b"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("x", "a", "b")]
    model = helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:]), opset_imports=[helper.make_opsetid("", 21)])
    fused, counts = _fused(model)
    assert counts == NONE | {"output_identity": 1} and len(ops(fused, "Identity")) == 1
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    for got in session(fused).run(["a", "b"], {"x": x}):
        np.testing.assert_array_equal(got, np.maximum(x, 0))
