import numpy as np
import onnx
from onnx import TensorProto

from ingot.quant import QuantSpec, quantize
from ingot.quant.half import halve_float_weights
from tests.quant.util import initializer, mlp, ops, rel_rms, run, session


def _float_tables(model):
    return {t.name: t.data_type for t in model.graph.initializer if len(t.dims) == 2 and np.prod(t.dims) >= 4096}


def test_float_layers_and_tables_are_stored_fp16_and_folded_back_at_load(tiny_llama_onnx, test_feeds, tmp_path):
    spec = QuantSpec(scheme="int4", block_size=32, exclude=["*down_proj*"])
    q16, r16 = quantize(tiny_llama_onnx, spec)
    q32, r32 = quantize(tiny_llama_onnx, spec.model_copy(update={"float_weights": "fp32"}))
    onnx.checker.check_model(q16, full_check=True)
    assert r32.half_weights == [] and r32.float_weights == "fp32"
    # the embedding, the two float down_proj and the head's table: fp16 behind one Cast each
    assert r16.float_weights == "fp16" and len(r16.half_weights) == len(set(r16.half_weights)) >= 4
    casts = {n.output[0]: n for n in ops(q16, "Cast")}
    assert len(casts) - len(ops(q32, "Cast")) == len(r16.half_weights)
    for name in r16.half_weights:
        assert initializer(q16, casts[name].input[0]).dtype == np.float16
    assert not any(t == TensorProto.FLOAT for t in _float_tables(q16).values()), _float_tables(q16)
    assert TensorProto.FLOAT in _float_tables(q32).values()
    saved = sum(initializer(q32, n).nbytes for n in r16.half_weights) // 2
    assert r16.half_bytes_saved == saved and q32.ByteSize() - q16.ByteSize() >= 0.99 * saved
    # the same plan but for fp16 rounding of the float weights; ORT folds the Casts at load
    fp32_acts = {"session.qdq_matmulnbits_accuracy_level": "0"}  # int8 activations would blur the comparison
    assert 0 < rel_rms(run(q16, test_feeds, fp32_acts), run(q32, test_feeds, fp32_acts)) < 2e-3
    path = tmp_path / "opt.onnx"
    session(q16, r16.session_config, optimized=str(path))
    folded = ops(onnx.load(str(path)), "Cast")
    assert not any(n.input[0].endswith("_fp16") for n in folded) and len(folded) <= len(ops(q32, "Cast"))


def test_out_of_range_and_small_weights_stay_fp32():
    big = np.zeros((64, 128), np.float32)
    big[3, 5] = 1e5  # beyond fp16's 65504
    model = mlp(k=64, n=64)
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "w1"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(big, "w1"))
    small = mlp(k=16, n=16)  # 16 x 32 weights: under MIN_ELEMENTS
    assert halve_float_weights(model)[0] == ["w2"]
    assert initializer(model, "w1").dtype == np.float32 and initializer(model, "w2_fp16").dtype == np.float16
    assert halve_float_weights(small) == ([], 0) and not ops(small, "Cast")
    x = np.ones((2, 64), np.float32)
    assert np.isfinite(session(model).run(None, {"x": x})[0]).all()
