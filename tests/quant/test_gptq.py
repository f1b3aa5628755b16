import ml_dtypes
import numpy as np
import pytest
from onnx import helper

from ingot.quant import QuantSpec, quantize
from ingot.quant.awq import awq_scale, unit_rows
from ingot.quant.calibrate import calibrate
from ingot.quant.gptq import act_order, gptq_quantize, inverse_cholesky
from ingot.quant.int4 import awq_activations
from ingot.quant.primitives import int4_dequantize, int4_quantize
from tests.quant.util import initializer, make_model, ops, rel_rms, run

BS = 32


def _problem(k=96, n=24, rows=400, seed=0):
    """W [K, N] and activations X (R, K) with correlated channels of unequal size, as LLMs have."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k)) * (rng.random(k) ** 3)[:, None] + np.eye(k)
    x = (rng.standard_normal((rows, k)) @ mix * np.exp(rng.standard_normal(k))).astype(np.float32)
    return rng.standard_normal((k, n)).astype(np.float32), x


def _gptq(w, h, order=False, damp=0.01):
    perm = act_order(h, BS) if order else None
    return gptq_quantize(w, inverse_cholesky(h, BS, damp, perm), BS, perm)


def _error(x, w, q, scale):
    d = x.astype(np.float64) @ (w - int4_dequantize(q, scale, BS)[: w.shape[0]])
    return float(np.sum(d * d))


def test_inverse_cholesky_factors_the_damped_inverse():
    _, x = _problem()
    h = x.T.astype(np.float64) @ x
    u = inverse_cholesky(h, BS, 0.01).astype(np.float64)
    assert np.allclose(u, np.triu(u))
    want = np.linalg.inv(h + 0.01 * np.mean(np.diag(h)) * np.eye(len(h)))
    np.testing.assert_allclose(u.T @ u, want, rtol=1e-3, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("k", [96, 80])  # 80: padded to 96
@pytest.mark.parametrize("order", [False, True])
def test_identity_hessian_is_round_to_nearest(k, order):
    w, _ = _problem(k=k)
    q, scale = _gptq(w, np.eye(k), order)
    want_q, want_scale = int4_quantize(w, BS)
    assert q.dtype == ml_dtypes.int4 and q.shape == want_q.shape and scale.dtype == np.float32
    np.testing.assert_array_equal(q.astype(np.int8), want_q.astype(np.int8))
    np.testing.assert_array_equal(scale, want_scale)


@pytest.mark.parametrize("order", [False, True])
@pytest.mark.parametrize("k", [96, 80])
def test_output_error_is_well_below_rtn(k, order):
    w, x = _problem(k=k)
    rtn = _error(x, w, *int4_quantize(w, BS))
    gptq = _error(x, w, *_gptq(w, x.T.astype(np.float64) @ x, order))
    print(f"K={k} act-order={order}: ||X(W - Q)||^2 RTN {rtn:.4g}, GPTQ {gptq:.4g}")
    assert gptq < 0.7 * rtn


def test_held_out_rows_gain_too():
    w, x = _problem(rows=800)
    fit, held = x[:400], x[400:]
    q = _gptq(w, fit.T.astype(np.float64) @ fit, order=True)
    assert _error(held, w, *q) < 0.8 * _error(held, w, *int4_quantize(w, BS))


def test_dead_channels_round_to_nearest_and_move_nothing():
    """Channels X never uses: H_kk = 0. Their rows are RTN under the block's scale, and the
    result elsewhere does not depend on their weights (nothing flows out of them)."""
    w, x = _problem(k=80)
    dead = [3, 40, 41, 79]
    x[:, dead] = 0
    h = x.T.astype(np.float64) @ x
    for order in (False, True):
        q, scale = _gptq(w, h, order)
        qi = q.astype(np.int8)
        assert not qi[80:].any()  # the padding rows
        block_scale = np.repeat(scale, BS, axis=0)[dead]
        np.testing.assert_array_equal(qi[dead], np.clip(np.round(w[dead] / block_scale), -8, 7))
        w2 = w.copy()
        w2[dead] *= -1  # the same |w|: the block scales stay
        q2, scale2 = _gptq(w2, h, order)
        live = np.setdiff1d(np.arange(80), dead)
        np.testing.assert_array_equal(q2.astype(np.int8)[live], qi[live])
        np.testing.assert_array_equal(scale2, scale)


def test_damping_pulls_towards_rtn():
    w, x = _problem()
    h = x.T.astype(np.float64) @ x
    rtn = int4_quantize(w, BS)[0].astype(np.int8)
    changed = [np.mean(_gptq(w, h, damp=d)[0].astype(np.int8) != rtn) for d in (0.01, 1.0, 1000.0)]
    assert changed[0] > changed[1] > changed[2]


def _tied(seed=0):
    """Two activations read one weight (tied), and one of them also a second weight."""
    rng = np.random.default_rng(seed)
    weights = {"w": rng.standard_normal((64, 16)).astype(np.float32), "v": rng.standard_normal((64, 8)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["a", "w"], ["ya"], name="fa/MatMul"),
             helper.make_node("MatMul", ["b", "w"], ["yb"], name="fb/MatMul"),
             helper.make_node("MatMul", ["b", "v"], ["yv"], name="fv/MatMul")]
    model = make_model(nodes, {"a": ["m", 64], "b": ["m", 64]}, {"ya": ["m", 16], "yb": ["m", 16], "yv": ["m", 8]}, weights)
    feeds = [{"a": _problem(k=64, seed=1 + i)[1][:100], "b": _problem(k=64, seed=9 + i)[1][:100]} for i in range(3)]
    return model, weights, feeds


def _dequantized(qmodel, weight):
    dq = next(n for n in ops(qmodel, "DequantizeLinear") if n.output[0] == f"{weight}_dq")
    return int4_dequantize(initializer(qmodel, dq.input[0]).astype(np.int8), initializer(qmodel, dq.input[1]), BS)


def test_a_tied_weight_minimizes_both_outputs_errors():
    model, weights, feeds = _tied()
    spec = QuantSpec(scheme="int4-awq", block_size=BS, massive_ratio=None)
    qmodel, report = quantize(model, spec, feeds)
    assert report.rounding == "gptq" and report.gptq_damp == 0.01 and report.gptq_act_order
    assert [c.scaling for c in report.awq] == ["none", "none"]  # a shared weight: no AWQ scale
    stats = calibrate(model, feeds, awq_activations(model, spec))
    rows = {x: unit_rows(stats[x].rows) for x in ("a", "b")}  # every row fits the sample here
    for weight, xs in (("w", "ab"), ("v", "b")):
        w = weights[weight]
        q = _dequantized(qmodel, weight)
        rtn = int4_dequantize(*int4_quantize(w, BS), BS)
        err = {name: sum(float(np.sum((rows[x] @ (w - y)) ** 2)) for x in xs) for name, y in (("gptq", q), ("rtn", rtn))}
        assert err["gptq"] < 0.8 * err["rtn"], (weight, err)


def _normed(seed=0):
    """x → h = x * c (c: a norm gamma with outlier channels) → fc/MatMul(h, w)."""
    rng = np.random.default_rng(seed)
    c = np.exp(rng.standard_normal(64)).astype(np.float32)
    c[[5, 9, 30]] = 30.0
    weights = {"c": c, "w": rng.standard_normal((64, 32)).astype(np.float32)}
    nodes = [helper.make_node("Mul", ["x", "c"], ["h"], name="norm/Mul"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="fc/MatMul")]
    feeds = [{"x": _problem(k=64, seed=20 + i)[1][:200]} for i in range(2)]
    return make_model(nodes, {"x": ["m", 64]}, {"y": ["m", 32]}, weights), weights, feeds


def test_the_hessian_follows_the_awq_scale():
    """AWQ folds 1/s into the gamma: the layer reads h / s with weight W * s. GPTQ rounds W * s
    under diag(1/s) H diag(1/s), H the Gram matrix of h, so its error there is below nearest
    rounding's."""
    model, weights, feeds = _normed()
    spec = QuantSpec(scheme="int4-awq", block_size=BS, massive_ratio=None)
    qmodel, report = quantize(model, spec, feeds)
    plain, plain_report = quantize(model, spec.model_copy(update={"gptq": False}), feeds)
    assert report.awq[0].scaling == "folded" and report.awq[0].alpha > 0 and plain_report.rounding == "nearest"
    st = calibrate(model, feeds, ["h"], grams=["h"])["h"]
    s = awq_scale(st.channel_mean_abs, report.awq[0].alpha)
    scaled = (weights["w"] * s[:, None]).astype(np.float32)
    want_q, want_scale = _gptq(scaled, st.gram / np.outer(s, s).astype(np.float64), order=True)
    dq = next(n for n in ops(qmodel, "DequantizeLinear") if n.output[0] == "w_dq")
    np.testing.assert_array_equal(initializer(qmodel, dq.input[0]).astype(np.int8), want_q.astype(np.int8))
    np.testing.assert_array_equal(initializer(qmodel, dq.input[1]), want_scale)
    rows = unit_rows(np.concatenate([f["x"] for f in feeds]) * weights["c"]) / s  # h / s, as the Gram matrix weighs it
    err = {label: float(np.sum((rows @ (scaled - _dequantized(m, "w"))) ** 2)) for label, m in (("gptq", qmodel), ("nearest", plain))}
    print(f"output error on the calibration rows: {err}")
    assert err["gptq"] < 0.8 * err["nearest"]


def test_gram_matrices_of_unit_rows():
    model, weights, feeds = _normed()
    stats = calibrate(model, feeds, ["h", "x"], grams=["h"])
    h = unit_rows(np.concatenate([f["x"] for f in feeds]) * weights["c"]).astype(np.float64)
    np.testing.assert_allclose(stats["h"].gram, h.T @ h, rtol=1e-5, atol=1e-6)
    assert stats["h"].gram.dtype == np.float64 and stats["x"].gram is None


def test_int4_and_no_gptq_need_no_gram(monkeypatch):
    """RTN needs no calibration; int4-awq with gptq=False asks calibrate() for no Gram matrix."""
    import ingot.quant.calibrate as cal

    model, _, feeds = _normed()
    asked = []
    real = cal.calibrate
    monkeypatch.setattr(cal, "calibrate", lambda *a, **k: asked.append(k.get("grams")) or real(*a, **k))
    _, report = quantize(model, QuantSpec(scheme="int4", block_size=BS), feeds)
    assert report.rounding == "nearest" and report.gptq_damp is None and asked == []
    quantize(model, QuantSpec(scheme="int4-awq", block_size=BS, gptq=False), feeds)
    assert asked == [[]]


def test_gptq_beats_nearest_end_to_end(outlier_llama_onnx, calib_feeds, test_feeds):
    ref = run(outlier_llama_onnx, test_feeds)
    errors = {}
    for label, gptq in (("nearest", False), ("gptq", True)):
        spec = QuantSpec(scheme="int4-awq", block_size=BS, gptq=gptq, accuracy_level=0)
        qmodel, _ = quantize(outlier_llama_onnx, spec, calib_feeds)
        errors[label] = rel_rms(run(qmodel, test_feeds, {"session.qdq_matmulnbits_accuracy_level": "0"}), ref)
    print(f"outlier tiny-llama, block {BS}, held-out logits rel. RMS error: {errors}")
    assert errors["gptq"] < 0.95 * errors["nearest"]
