import numpy as np
import onnx
import pytest
from onnx import helper

from ingot.quant import QuantError, QuantSpec, quantize
from ingot.quant.awq import _chunks, awq_scale, search, unit_rows
from ingot.quant.calibrate import calibrate
from ingot.quant.int4 import awq_activations, quantize_int4
from ingot.quant.primitives import int4_dequantize, int4_quantize, int4_round_trip
from tests.quant.util import initializer, make_model, ops, rel_rms, run

BS = 32


@pytest.fixture(scope="module")
def awq_run(outlier_llama_onnx, calib_feeds):
    """The default AWQ (with GPTQ rounding), every layer INT4 (no float recipe)."""
    spec = QuantSpec(scheme="int4-awq", block_size=BS, kv_float=False, massive_ratio=None)
    qmodel, report = quantize(outlier_llama_onnx, spec, calib_feeds)
    stats = calibrate(outlier_llama_onnx, calib_feeds, awq_activations(outlier_llama_onnx, spec))
    return qmodel, report, stats


@pytest.fixture(scope="module")
def plain_awq_run(outlier_llama_onnx, calib_feeds):
    """AWQ as in the paper (s = mean|X|^alpha) with round-to-nearest rather than GPTQ: the
    weights are exactly Q(W * s). Every layer INT4 (no float recipe)."""
    spec = QuantSpec(scheme="int4-awq", block_size=BS, gptq=False, kv_float=False, massive_ratio=None)
    qmodel, report = quantize(outlier_llama_onnx, spec, calib_feeds)
    stats = calibrate(outlier_llama_onnx, calib_feeds, awq_activations(outlier_llama_onnx, spec))
    return qmodel, report, stats


def test_awq_scale_is_centred_in_log_space():
    m = np.array([0.1, 1.0, 10.0, 4.0], np.float32)
    np.testing.assert_array_equal(awq_scale(m, 0.0), np.ones(4, np.float32))
    s = awq_scale(m, 0.5)
    assert np.sqrt(s.max() * s.min()) == pytest.approx(1.0)
    assert np.all(np.diff(s[[0, 1, 3, 2]]) > 0)  # larger mean |x|, larger s
    assert np.all(np.isfinite(awq_scale(np.array([0.0, 1.0], np.float32), 1.0)))  # a dead channel


def test_search_finds_a_scale_for_outlier_channels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 128)).astype(np.float32)
    x[:, [3, 70]] *= 30  # salient input channels
    w = rng.standard_normal((128, 64)).astype(np.float32)
    result = search(x, np.abs(x).mean(axis=0), [w], BS, [0.0, 0.25, 0.5, 0.75, 1.0])
    rtn = float(np.sum((x @ int4_round_trip(w, BS) - x @ w) ** 2))
    assert result.error_rtn == pytest.approx(rtn, rel=1e-5)
    assert result.alpha > 0 and result.error < 0.8 * rtn


def test_search_never_loses_to_rtn():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 64)).astype(np.float32)
    w = rng.standard_normal((64, 16)).astype(np.float32)
    result = search(x, np.abs(x).mean(axis=0), [w], BS, [1.0])  # 0 is always tried as well
    assert result.error <= result.error_rtn
    if result.alpha == 0.0:
        np.testing.assert_array_equal(result.scale, 1.0)


def test_awq_is_never_worse_than_rtn_per_group(awq_run):
    _, report, stats = awq_run
    assert len(report.awq) == 8  # per layer: qkv, o, gate/up, down
    for choice in report.awq:
        assert choice.error_awq <= choice.error_rtn, choice
    assert sum(c.error_awq for c in report.awq) < 0.9 * sum(c.error_rtn for c in report.awq)


def test_reported_rtn_errors_are_real(awq_run, outlier_llama_onnx):
    """Recompute each group's RTN error on the calibration rows from the float weights
    (but gate/up's: down_proj's 1/s is folded into up_proj's columns first, see scaling.py)."""
    _, report, stats = awq_run
    layers = {n.name: n for n in outlier_llama_onnx.graph.node}
    for choice in (c for c in report.awq if not any("up_proj" in name for name in c.layers)):
        x = unit_rows(stats[choice.activation].rows)  # as the search weighs them
        err = 0.0
        for name in choice.layers:
            w = initializer(outlier_llama_onnx, layers[name].input[1])
            err += float(np.sum((x @ int4_round_trip(w, BS) - x @ w) ** 2))
        assert choice.error_rtn == pytest.approx(err, rel=1e-4)


def test_the_norm_gamma_absorbs_the_scale(plain_awq_run, outlier_llama_onnx):
    """q/k/v and gate/up read `Mul(normed, gamma)`: 1/s is folded into gamma, and the INT4
    weights are Q(W * s) for s = mean|X|^alpha; down_proj's 1/s goes into up_proj's columns;
    o_proj gets an explicit Mul."""
    qmodel, report, stats = plain_awq_run
    by_first = {c.layers[0].split("/")[0].rsplit(".", 1)[1]: c for c in report.awq[:4]}
    assert set(by_first) == {"q_proj", "o_proj", "gate_proj", "down_proj"}
    for c in report.awq:
        proj = c.layers[0].split("/")[0].rsplit(".", 1)[1]
        if proj in ("q_proj", "gate_proj"):
            assert c.alpha > 0 and c.scaling == "folded", c
            assert len(c.layers) == (3 if proj == "q_proj" else 2)
        elif proj == "down_proj":
            assert c.scaling == ("folded" if c.alpha > 0 else "none"), c
        else:
            assert c.scaling == ("explicit" if c.alpha > 0 else "none"), c
    float_nodes = {n.name: n for n in outlier_llama_onnx.graph.node}
    q_nodes = {n.name: n for n in qmodel.graph.node}
    produced = {n.output[0]: n for n in qmodel.graph.node}
    for c in (c for c in report.awq if c.scaling == "folded" and "down_proj" not in c.layers[0]):
        s = awq_scale(stats[c.activation].channel_mean_abs, c.alpha)
        norm = produced[c.activation]  # the same RMSNorm Mul, now with the folded gamma
        old = next(i for i in float_nodes[norm.name].input if i.endswith("norm.weight"))
        new = next(i for i in norm.input if i == f"{old}_awq")
        np.testing.assert_allclose(initializer(qmodel, new), initializer(outlier_llama_onnx, old) / s, rtol=1e-6)
        for name in (n for n in c.layers if "up_proj" not in n):  # up_proj's columns: below
            w = initializer(outlier_llama_onnx, float_nodes[name].input[1])
            dq = produced[q_nodes[name].input[1]]
            q, scale = int4_quantize((w * s[:, None]).astype(np.float32), BS)
            np.testing.assert_array_equal(initializer(qmodel, dq.input[0]).astype(np.int8), q.astype(np.int8))
            np.testing.assert_array_equal(initializer(qmodel, dq.input[1]), scale)
    for gate_up, down in ((c, report.awq[i + 1]) for i, c in enumerate(report.awq) if "gate_proj" in c.layers[0]):
        s_gu = awq_scale(stats[gate_up.activation].channel_mean_abs, gate_up.alpha)
        s_down = awq_scale(stats[down.activation].channel_mean_abs, down.alpha)  # ones at alpha 0
        up = next(n for n in gate_up.layers if "up_proj" in n)
        w = initializer(outlier_llama_onnx, float_nodes[up].input[1])
        dq = produced[q_nodes[up].input[1]]
        got = int4_dequantize(initializer(qmodel, dq.input[0]), initializer(qmodel, dq.input[1]), BS)
        want = int4_round_trip((w / s_down[None, :]) * s_gu[:, None], BS)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    explicit = [c for c in report.awq if c.scaling == "explicit"]
    muls = [n for n in ops(qmodel, "Mul") if n.name.endswith("/awq_Mul")]
    assert explicit and len(muls) == len(explicit)
    assert {m.input[0] for m in muls} == {c.activation for c in explicit}


@pytest.mark.parametrize("bs", [32, 64])
def test_awq_beats_rtn_end_to_end(outlier_llama_onnx, calib_feeds, test_feeds, bs):
    ref = run(outlier_llama_onnx, test_feeds)
    errors = {}
    for scheme in ("int4", "int4-awq"):
        qmodel, report = quantize(outlier_llama_onnx, QuantSpec(scheme=scheme, block_size=bs), calib_feeds)
        errors[scheme] = rel_rms(run(qmodel, test_feeds, report.session_config), ref)
    print(f"outlier tiny-llama, block {bs}, held-out logits rel. RMS error: {errors}")
    assert errors["int4-awq"] < 0.95 * errors["int4"]  # measured 0.315 vs 0.362 (bs 32), 0.315 vs 0.441 (bs 64)


def test_awq_on_random_weights_is_no_worse_on_calibration_rows(tiny_llama_onnx, calib_feeds, test_feeds):
    qmodel, report = quantize(tiny_llama_onnx, QuantSpec(scheme="int4-awq", block_size=BS), calib_feeds)
    assert all(c.error_awq <= c.error_rtn for c in report.awq)
    assert report.calib_samples == len(calib_feeds)
    ref = run(tiny_llama_onnx, test_feeds)
    rtn, _ = quantize(tiny_llama_onnx, QuantSpec(scheme="int4", block_size=BS))
    print(f"random tiny-llama, block {BS}: rel. RMS error RTN {rel_rms(run(rtn, test_feeds), ref):.4f}, "
          f"AWQ {rel_rms(run(qmodel, test_feeds), ref):.4f}")


def _branchy(extra_reader: str | None):
    """x → h = x * c → fc/MatMul(h, w); optionally h also feeds an Add (then no folding) or a
    float layer kv/MatMul(h, v) (folded: v's rows take s)."""
    rng = np.random.default_rng(0)
    c = np.ones(64, np.float32)
    c[[5, 9]] = 40.0
    weights = {"c": c, "w": rng.standard_normal((64, 32)).astype(np.float32)}
    nodes = [helper.make_node("Mul", ["x", "c"], ["h"], name="norm/Mul"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="fc/MatMul")]
    outputs = {"y": ["m", 32]}
    if extra_reader == "add":
        nodes.append(helper.make_node("Add", ["h", "h"], ["z"], name="res/Add"))
        outputs["z"] = ["m", 64]
    if extra_reader == "matmul":
        weights["v"] = rng.standard_normal((64, 16)).astype(np.float32)
        nodes.append(helper.make_node("MatMul", ["h", "v"], ["z"], name="kv/MatMul"))
        outputs["z"] = ["m", 16]
    return make_model(nodes, {"x": ["m", 64]}, outputs, weights)


@pytest.mark.parametrize("extra_reader,scaling", [(None, "folded"), ("add", "explicit"), ("matmul", "folded")])
def test_folding_needs_every_other_reader_to_be_a_float_layer(extra_reader, scaling):
    model = _branchy(extra_reader)
    x = np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32)
    spec = QuantSpec(scheme="int4-awq", block_size=BS, exclude=["kv/*"], float_weights="fp32", massive_ratio=None)
    qmodel, report = quantize(model, spec, [{"x": x}])
    assert report.awq[0].scaling == scaling and report.awq[0].alpha > 0
    if extra_reader == "add":  # the other reader still sees the unscaled h
        assert initializer(qmodel, "c").tolist() == initializer(model, "c").tolist()
    if extra_reader == "matmul":  # it sees h / s, and its weight's rows took s
        assert {t.name for t in qmodel.graph.initializer} >= {"c_awq", "v"}  # c became c / s
        assert not np.allclose(initializer(qmodel, "v"), initializer(model, "v"))
    if extra_reader:
        np.testing.assert_allclose(_out(qmodel, x, "z"), _out(model, x, "z"), rtol=1e-4, atol=1e-4)


def test_int4_awq_keeps_the_kv_projections_float_beside_a_folded_q(outlier_llama_onnx, calib_feeds, test_feeds):
    """The default recipe: k/v projections float (kv_float), q_proj alone in its group with
    1/s still folded into the norm gamma, and s folded into the float k/v weights' rows."""
    spec = QuantSpec(scheme="int4-awq", block_size=BS, gptq=False, massive_ratio=None, float_weights="fp32")
    qmodel, report = quantize(outlier_llama_onnx, spec, calib_feeds)
    kv = [s.name for s in report.skipped if "key/value" in s.reason]
    assert len(kv) == 4 and all(("k_proj" in n) != ("v_proj" in n) for n in kv)
    assert not any("k_proj" in n or "v_proj" in n for n in report.quantized) and len(report.quantized) == 2 * 5
    stats = calibrate(outlier_llama_onnx, calib_feeds, awq_activations(outlier_llama_onnx, spec))
    nodes, q_nodes = {n.name: n for n in outlier_llama_onnx.graph.node}, {n.name: n for n in qmodel.graph.node}
    for c in (c for c in report.awq if "q_proj" in c.layers[0]):
        assert len(c.layers) == 1 and c.alpha > 0 and c.scaling == "folded", c
        s = awq_scale(stats[c.activation].channel_mean_abs, c.alpha)
        for name in (c.layers[0].replace("q_proj", p) for p in ("k_proj", "v_proj")):
            w = initializer(outlier_llama_onnx, nodes[name].input[1])
            np.testing.assert_allclose(initializer(qmodel, q_nodes[name].input[1]), w * s[:, None], rtol=1e-6)
    every, _ = quantize(outlier_llama_onnx, spec.model_copy(update={"kv_float": False}), calib_feeds)
    ref = run(outlier_llama_onnx, test_feeds)
    assert rel_rms(run(qmodel, test_feeds), ref) < rel_rms(run(every, test_feeds), ref)


def _out(model, x, name):
    from tests.quant.util import session

    return session(model).run([name], {"x": x})[0]


def test_int4_awq_needs_stats():
    with pytest.raises(QuantError, match="--quant int4-awq needs calibration data"):
        quantize_int4(_branchy(False), QuantSpec(scheme="int4-awq", block_size=BS))
    with pytest.raises(QuantError, match="--quant int4-awq needs calibration data: pass --calib FILE"):
        quantize(_branchy(False), QuantSpec(scheme="int4-awq", block_size=BS), None)


def test_graph_stays_valid(awq_run):
    qmodel, _, _ = awq_run
    onnx.checker.check_model(qmodel, full_check=True)


def test_unit_rows_weigh_tokens_equally():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [3000.0, 0.0]], np.float32)
    np.testing.assert_allclose(unit_rows(x), [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]])


def test_search_picks_the_least_output_error_of_all_candidates():
    """Every candidate alpha recomputed one by one: the search's batched errors give the same minimum."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((96, 48)) * rng.uniform(0.05, 4.0, 48)).astype(np.float32)
    weights = [rng.standard_normal((48, 16)).astype(np.float32), rng.standard_normal((48, 8)).astype(np.float32)]
    mean_abs, alphas = np.abs(x).mean(axis=0), [0.0, 0.25, 0.5, 0.75, 1.0]
    result = search(x, mean_abs, weights, 16, alphas)

    def err(s):
        return sum(float(np.sum((x @ w - (x / s) @ int4_round_trip(w * s[:, None], 16)) ** 2)) for w in weights)

    errors = [err(awq_scale(mean_abs, a)) for a in alphas]
    assert result.error == pytest.approx(min(errors), rel=1e-4)
    assert result.error_rtn == pytest.approx(errors[0], rel=1e-4) and result.error < result.error_rtn
    assert result.error == pytest.approx(err(result.scale), rel=1e-4)


def test_chunks_bound_the_batched_arrays():
    assert _chunks(list(range(7)), per_scale=100, budget=350) == [[0, 1, 2], [3, 4, 5], [6]]
    assert _chunks([1, 2], per_scale=1000, budget=10) == [[1], [2]]  # at least one per run


def test_recipe_layers_as_int8_weight_only_fuse_into_8_bit_matmulnbits(outlier_llama_onnx, calib_feeds, test_feeds, tmp_path):
    """recipe_precision int8: the k/v projections get int8 weights with one scale per output
    channel (DequantizeLinear axis 1), exactly round(W s / scale) of their AWQ-scaled weight;
    ONNX Runtime runs them as 8-bit MatMulNBits; the logits stay near the float-recipe plan's."""
    spec = QuantSpec(scheme="int4-awq", block_size=BS, gptq=False, massive_ratio=None, float_weights="fp32")
    as_float, _ = quantize(outlier_llama_onnx, spec, calib_feeds)
    qmodel, report = quantize(outlier_llama_onnx, spec.model_copy(update={"recipe_precision": "int8"}), calib_feeds)
    onnx.checker.check_model(qmodel, full_check=True)
    assert len(report.int8) == 4 and all("key/value" in k.reason for k in report.int8)
    assert [s.name for s in report.skipped] == ["lm_head/MatMul"]
    assert not {k.name for k in report.int8} & set(report.quantized)
    nodes, f_nodes = {n.name: n for n in qmodel.graph.node}, {n.name: n for n in as_float.graph.node}
    produced = {n.output[0]: n for n in qmodel.graph.node}
    for k in report.int8:
        dq = produced[nodes[k.name].input[1]]
        assert dq.op_type == "DequantizeLinear" and [(a.name, a.i) for a in dq.attribute] == [("axis", 1)]
        q, scale = initializer(qmodel, dq.input[0]), initializer(qmodel, dq.input[1])
        w = initializer(as_float, f_nodes[k.name].input[1])  # the float recipe's weight: AWQ-scaled rows
        assert q.dtype == np.int8 and scale.shape == (w.shape[1],)
        np.testing.assert_allclose(q * scale, w, atol=0.51 * scale.max())
    path = tmp_path / "opt.onnx"
    from tests.quant.util import session

    session(qmodel, report.session_config, optimized=str(path))
    bits = sorted(a.i for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits")
    assert bits.count(8) == 4 and bits.count(4) == len(report.quantized)
    ref = run(as_float, test_feeds, {"session.qdq_matmulnbits_accuracy_level": "0"})
    assert rel_rms(run(qmodel, test_feeds, {"session.qdq_matmulnbits_accuracy_level": "0"}), ref) < 0.05
